//! A client connection as hyper sees it: bytes the pass-through wire already read are put
//! back in front, and every read is noted on the connection's [`Clock`], which tells the
//! header and idle timeouts apart; a write that finds the socket full is noted too, for
//! the send timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// Where a hyper connection is between requests, and since when.
#[derive(Debug)]
pub struct Clock {
    base: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
    /// Since when (ms after `base`, plus one) the client has taken none of the bytes
    /// waiting for it; 0 while writes go through.
    blocked_ms: AtomicU64,
    /// The client's address, looked up the first time a write blocks (for the warning).
    peer: OnceLock<Option<SocketAddr>>,
    /// Set when the connection is cut for the send timeout: it is reset when dropped.
    cut: AtomicBool,
    /// Woken when writes start to block, so that the connection's loop sets its timer
    /// for the send timeout.
    pub blocked: Notify,
}

/// A connection's time limits (SPEC §2).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `MODELMUX_HEADER_TIMEOUT`.
    pub header: Duration,
    /// `MODELMUX_IDLE_TIMEOUT`.
    pub idle: Duration,
    /// `MODELMUX_SEND_TIMEOUT`.
    pub send: Duration,
}

impl Limits {
    /// How often a connection looks at its clock at least: a head may start at any moment
    /// without waking its loop (a write that blocks wakes it: [`Clock::blocked`]).
    pub fn check_every(&self) -> Duration {
        self.header.min(self.idle)
    }
}

/// What a connection's time limit says now.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing before this instant.
    At(Instant),
    /// Idle past `MODELMUX_IDLE_TIMEOUT`: close it gracefully.
    Idle,
    /// A head took longer than `MODELMUX_HEADER_TIMEOUT`: drop it.
    Head,
    /// The client took no bytes for `MODELMUX_SEND_TIMEOUT`: drop it.
    Stalled,
}

impl Clock {
    /// A clock for a connection whose current request began at `started` (`None`: idle).
    pub fn new(started: Option<Instant>) -> Arc<Self> {
        let base = started.unwrap_or_else(Instant::now);
        Arc::new(Clock {
            base,
            phase: AtomicU8::new(if started.is_some() { HEAD } else { IDLE }),
            since_ms: AtomicU64::new(0),
            blocked_ms: AtomicU64::new(0),
            peer: OnceLock::new(),
            cut: AtomicBool::new(false),
            blocked: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn set(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Relaxed);
        self.phase.store(phase, Relaxed);
    }

    /// Bytes arrived: an idle connection is now reading a head.
    pub fn read(&self) {
        if self.phase.load(Relaxed) == IDLE {
            self.set(HEAD);
        }
    }

    /// hyper has a whole head and runs the request.
    pub fn busy(&self) {
        self.phase.store(BUSY, Relaxed);
    }

    /// The response was sent: idle from now.
    pub fn idle(&self) {
        self.set(IDLE);
    }

    /// A write found the socket full; true when writes went through until now.
    pub fn write_blocked(&self) -> bool {
        let newly = self.blocked_ms.load(Relaxed) == 0;
        if newly {
            self.blocked_ms.store(self.now_ms() + 1, Relaxed);
            self.blocked.notify_one();
        }
        newly
    }

    /// The connection is cut for the send timeout: its socket is reset when dropped, so
    /// that the kernel does not keep its unsent bytes. Returns the client's address.
    pub fn cut(&self) -> String {
        self.cut.store(true, Relaxed);
        self.peer
            .get()
            .copied()
            .flatten()
            .map_or_else(|| "-".to_string(), |a| a.to_string())
    }

    /// A write went through.
    pub fn wrote(&self) {
        if self.blocked_ms.load(Relaxed) != 0 {
            self.blocked_ms.store(0, Relaxed);
        }
    }

    /// The limit that applies now.
    pub fn due(&self, limits: &Limits) -> Due {
        let now = Instant::now();
        let blocked = match self.blocked_ms.load(Relaxed) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms - 1) + limits.send),
        };
        if blocked.is_some_and(|at| now >= at) {
            return Due::Stalled;
        }
        let since = self.base + Duration::from_millis(self.since_ms.load(Relaxed));
        let (limit, expired) = match self.phase.load(Relaxed) {
            IDLE => (limits.idle, Due::Idle),
            HEAD => (limits.header, Due::Head),
            // A request is under way; its body read has a limit of its own.
            _ => {
                let far = now + limits.header.max(limits.idle);
                return Due::At(blocked.map_or(far, |at| at.min(far)));
            }
        };
        let at = since + limit;
        if now >= at {
            expired
        } else {
            Due::At(blocked.map_or(at, |b| b.min(at)))
        }
    }
}

/// `stream`, read from `prefix` first.
pub struct Rewind {
    prefix: Bytes,
    stream: TcpStream,
    clock: Arc<Clock>,
}

impl Rewind {
    /// Puts `prefix` back in front of `stream`; reads are noted on `clock`.
    pub fn new(prefix: Bytes, stream: TcpStream, clock: Arc<Clock>) -> Self {
        Rewind {
            prefix,
            stream,
            clock,
        }
    }
}

impl Rewind {
    /// Notes on the clock whether a write went through or found the socket full.
    fn note(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => {
                if self.clock.write_blocked() {
                    self.clock.peer.get_or_init(|| self.stream.peer_addr().ok());
                }
            }
            Poll::Ready(_) => self.clock.wrote(),
        }
    }
}

impl Drop for Rewind {
    fn drop(&mut self) {
        if self.clock.cut.load(Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        polled
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_tells_idle_from_a_slow_head() {
        let l = Limits {
            header: Duration::from_secs(3),
            idle: Duration::from_secs(10),
            send: Duration::from_secs(5),
        };
        let c = Clock::new(None);
        assert!(matches!(c.due(&l), Due::At(_)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.due(&l), Due::Idle);
        c.read();
        assert!(matches!(c.due(&l), Due::At(_)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(c.due(&l), Due::Head);
        c.busy();
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(matches!(c.due(&l), Due::At(_)), "no limit while busy");
        c.idle();
        assert!(matches!(c.due(&l), Due::At(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_for_the_send_timeout_is_stalled() {
        let l = Limits {
            header: Duration::from_secs(3),
            idle: Duration::from_secs(10),
            send: Duration::from_secs(5),
        };
        let c = Clock::new(Some(Instant::now()));
        c.busy();
        c.write_blocked();
        tokio::time::advance(Duration::from_secs(4)).await;
        // Still blocked: the first block counts, not the last.
        c.write_blocked();
        match c.due(&l) {
            Due::At(at) => assert!(at <= Instant::now() + Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.due(&l), Due::Stalled);
        // A write that goes through starts the count again, in any phase.
        c.wrote();
        c.idle();
        assert!(matches!(c.due(&l), Due::At(_)));
        assert!(c.write_blocked(), "blocked anew");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.due(&l), Due::Stalled, "a stall wins over the idle limit");
    }
}
