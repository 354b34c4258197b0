//! A client connection as hyper sees it: bytes the pass-through wire already read are put
//! back in front, and every read is noted on the connection's [`Clock`], which tells the
//! header and idle timeouts apart.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
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
}

impl Clock {
    /// A clock for a connection whose current request began at `started` (`None`: idle).
    pub fn new(started: Option<Instant>) -> Arc<Self> {
        let base = started.unwrap_or_else(Instant::now);
        Arc::new(Clock {
            base,
            phase: AtomicU8::new(if started.is_some() { HEAD } else { IDLE }),
            since_ms: AtomicU64::new(0),
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

    /// The limit that applies now.
    pub fn due(&self, header: Duration, idle: Duration, far: Duration) -> Due {
        let since = self.base + Duration::from_millis(self.since_ms.load(Relaxed));
        let (limit, expired) = match self.phase.load(Relaxed) {
            IDLE => (idle, Due::Idle),
            HEAD => (header, Due::Head),
            // A request is under way; its body read has a limit of its own.
            _ => return Due::At(Instant::now() + far),
        };
        let at = since + limit;
        if Instant::now() >= at {
            expired
        } else {
            Due::At(at)
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
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
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
        let (h, i, far) = (
            Duration::from_secs(3),
            Duration::from_secs(10),
            Duration::from_secs(100),
        );
        let c = Clock::new(None);
        assert!(matches!(c.due(h, i, far), Due::At(_)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.due(h, i, far), Due::Idle);
        c.read();
        assert!(matches!(c.due(h, i, far), Due::At(_)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(c.due(h, i, far), Due::Head);
        c.busy();
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(
            matches!(c.due(h, i, far), Due::At(_)),
            "no limit while busy"
        );
        c.idle();
        assert!(matches!(c.due(h, i, far), Due::At(_)));
    }
}
