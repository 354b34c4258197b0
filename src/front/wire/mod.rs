//! The pass-through wire: hand-written HTTP/1.1 for the request that matters, in the
//! manner of nginx. It reads a request with one read, asks
//! [`crate::front::policy`] (refusals are written here, as bytes), writes the engine's
//! request in one write, and passes the engine's bytes back as they come, chunked streams
//! included. It hands a connection to hyper ([`crate::front::general`]) for wire reasons
//! only: HTTP/1.0, `Transfer-Encoding` or `Expect` on the request, `HEAD`, an unusual
//! request target, a head it cannot parse, and the paths the front serves itself.
//!
//! - [`request`]: a request's head and body into policy facts and the engine's request.
//! - [`exchange`]: one request through to an engine and back.
//! - [`late`]: a streaming request answered early while its on-demand model loads.
//! - [`response`], [`framing`]: the engine's head rewritten, the end of its body found.
//! - [`balance`]: new connections go to the front thread with the fewest.
//! - [`engines`]: idle engine connections, per front thread.
//! - [`buffers`]: buffers lent to connections while they work, per front thread.
//! - [`reads`]: socket reads that spare the `EAGAIN` system call.
//! - [`writes`]: writes to a client, cut off after `MODELMUX_SEND_TIMEOUT` without progress.

pub mod balance;
pub mod buffers;
pub mod engines;
pub mod exchange;
pub mod framing;
pub mod late;
pub mod reads;
pub mod request;
pub mod response;
pub mod writes;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

use super::App;
use super::access::{Record, Wire};
use super::early::{TurnWait, Waited};
use super::general;
use super::policy;
use super::refusal::{DISCARD_LIMIT, Refusal};
use crate::observability::metrics::ClientLimit;
use buffers::Buffers;
use exchange::Next;
use request::Step;

/// How long a refused client is read from (and its bytes thrown away) before its
/// connection is closed, so that it reads the answer rather than a reset.
const LINGER: Duration = Duration::from_secs(2);

/// What one front thread's connections share.
pub struct Front {
    /// Routing table, state, metrics, settings.
    pub app: Arc<App>,
    engines: engines::Engines,
}

impl Front {
    /// A front thread's share: the application and an empty engine pool.
    pub fn new(app: Arc<App>) -> Self {
        Front {
            engines: engines::Engines::new(crate::state::MAX_MODELS),
            app,
        }
    }
}

/// Serves the front on `listener` until `shutdown` resolves, then waits for the requests
/// under way (the caller bounds how long). `seat` is this thread's place among the front
/// threads.
pub async fn serve(
    listener: TcpListener,
    mut seat: balance::Seat,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let front = Arc::new(Front::new(app));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection holds a sender; `recv` returns `None` once all of them are gone.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    let max = front.app.limits.max_connections;
    loop {
        let placed = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if seat.open_total() >= max {
                        tokio::spawn(turn_away(stream, front.app.clone()));
                        continue;
                    }
                    seat.place(stream)
                }
                Err(e) => {
                    // Out of file descriptors or similar: wait rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            handed = seat.handed() => handed,
        };
        let Some((stream, open)) = placed else {
            continue;
        };
        let (front, stop, done) = (front.clone(), stop_rx.clone(), done_tx.clone());
        tokio::spawn(async move {
            connection(stream, &front, stop).await;
            drop((open, done));
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

/// Answers a connection over `MODELMUX_MAX_CONNECTIONS` with a 503 and closes it.
pub(crate) async fn turn_away(stream: TcpStream, app: Arc<App>) {
    let mut out = Vec::with_capacity(256);
    let id = app.ids.make();
    Refusal::TooManyConnections.write(&mut out, &id, true);
    if writes::send(&stream, &out, &app, &id).await {
        linger(stream).await;
    }
}

/// Closes a connection whose client may still be sending: the write side first, then
/// what arrives is read and thrown away for a moment, so that the client reads the answer
/// instead of a reset. Nothing read is kept.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER;
    // On the heap: an array here would make every connection's future that much larger.
    let mut sink = vec![0u8; 8192];
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, stream.readable()).await {
        match stream.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// One timer per connection for all its limits. It is only reset when a limit comes
/// sooner than the one armed; when it fires early it is re-armed, so a keep-alive request
/// after request does not touch the timer wheel.
struct Deadline<'a> {
    sleep: Pin<&'a mut Sleep>,
}

impl Deadline<'_> {
    /// Resolves once `at` has passed.
    async fn until(&mut self, at: Instant) {
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= at {
                return;
            }
            self.sleep.as_mut().reset(at);
        }
    }
}

/// Why waiting for bytes ended without any.
enum Wait {
    Closed,
    TimedOut,
}

/// One client connection, request after request, until it closes, is handed over, times
/// out, or the front stops (between requests).
async fn connection(mut client: TcpStream, front: &Front, mut stop: watch::Receiver<bool>) {
    let app = &*front.app;
    let limits = &app.limits;
    let sleep = tokio::time::sleep(limits.header_timeout);
    let mut deadline = Deadline {
        sleep: std::pin::pin!(sleep),
    };
    // A new connection must send its first head within the header timeout; later, the
    // idle timeout runs from the end of each response.
    let mut idle_until = Instant::now() + limits.header_timeout;
    let mut fresh = true;
    // Lent while the connection works on a request; an idle connection holds none.
    let mut lent: Option<Buffers> = None;
    loop {
        let b = match lent.take() {
            Some(b) if !b.read.is_empty() => lent.insert(b),
            spare => {
                if let Some(b) = spare {
                    buffers::give_back(b);
                }
                tokio::select! {
                    r = client.readable() => if r.is_err() { return },
                    () = deadline.until(idle_until) => {
                        if fresh {
                            app.metrics.client_timed_out(ClientLimit::Header);
                        }
                        return;
                    }
                    () = crate::front::stopped(&mut stop) => return,
                }
                let b = lent.insert(buffers::lend());
                match reads::try_read(&client, &mut b.read) {
                    Ok(0) => return,
                    Ok(_) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                }
            }
        };
        let started = Instant::now();
        let mut record = Record::new(Wire::Pass, started);
        let mut progress = started;
        // Read until the policy has what it needs.
        let step = loop {
            match request::step(&b.read, app, &mut b.scratch.out, &mut record) {
                Step::Incomplete { head_done } => {
                    let at = if head_done {
                        progress + limits.body_timeout
                    } else {
                        started + limits.header_timeout
                    };
                    match read_more(&mut client, b, &mut deadline, at).await {
                        Ok(()) => progress = Instant::now(),
                        Err(Wait::TimedOut) if head_done => {
                            return body_timed_out(client, app, &mut record, &b.read).await;
                        }
                        // A head that never completes is dropped without an answer.
                        Err(Wait::TimedOut) => {
                            app.metrics.client_timed_out(ClientLimit::Header);
                            return;
                        }
                        Err(Wait::Closed) => return,
                    }
                }
                other => break other,
            }
        };
        let keep_alive = match step {
            Step::Incomplete { .. } => unreachable!("read above"),
            Step::HandOver => {
                let read = lent.take().map(Buffers::into_read).unwrap_or_default();
                // Boxed: hyper's connection is large, and only handed-over connections need it.
                return Box::pin(hand_over(client, read, front, started, stop)).await;
            }
            Step::Refuse(r) => {
                let keep = !r.refusal.closes() && !r.close;
                let written = {
                    let request = &b.read;
                    let id = r.id.bytes(request);
                    let ok = write_refusal(&client, &r.refusal, id, !keep, app).await;
                    record.status = r.refusal.status();
                    record.complete = ok;
                    log(
                        &record,
                        app,
                        &request[r.method.clone()],
                        &request[r.path.clone()],
                        id,
                    );
                    ok
                };
                if !written {
                    return;
                }
                if !keep {
                    return linger(client).await;
                }
                // Skip the request's body so that the next request can be read.
                let in_buf = (b.read.len() - r.head_len) as u64;
                if r.body_len <= in_buf {
                    b.read.advance(r.head_len + r.body_len as usize);
                } else if r.body_len > DISCARD_LIMIT {
                    return linger(client).await;
                } else {
                    b.read.clear();
                    let rest = r.body_len - in_buf;
                    if !discard(&mut client, rest, limits.body_timeout, &mut deadline).await {
                        return;
                    }
                }
                true
            }
            Step::Forward(fwd) => {
                let turn = match policy::ready_turn(app, fwd.model) {
                    Some(turn) => Ok(turn),
                    None => {
                        let body = &b.read[fwd.body.clone()];
                        let mut wait = TurnWait::new(&front.app, fwd.model, body);
                        tokio::select! {
                            waited = wait.next() => match waited {
                                Waited::Done(turn) => turn.map_err(Err),
                                // A stream waits long: its head goes out now.
                                Waited::KeepAlive => Err(Ok(wait)),
                            },
                            () = exchange::client_gone(&client, &mut b.scratch.early) => {
                                // Gone while it waited its turn: its line says so.
                                let request = &b.read[..fwd.len];
                                let id = fwd.id.bytes(request);
                                log(&record, app, b"POST", &request[fwd.path.clone()], id);
                                return;
                            }
                        }
                    }
                };
                let next = match turn {
                    Err(Ok(wait)) => {
                        let request = &b.read[..fwd.len];
                        let (scratch, rec) = (&mut b.scratch, &mut record);
                        Box::pin(late::late(
                            &mut client,
                            front,
                            request,
                            &fwd,
                            scratch,
                            rec,
                            wait,
                        ))
                        .await
                    }
                    Ok(turn) => {
                        let (request, timer) = (&b.read[..fwd.len], deadline.sleep.as_mut());
                        exchange::exchange(
                            &mut client,
                            front,
                            request,
                            &fwd,
                            &mut b.scratch,
                            &mut record,
                            turn,
                            timer,
                        )
                        .await
                    }
                    Err(Err(refusal)) => {
                        let id = fwd.id.bytes(&b.read);
                        let ok = write_refusal(&client, &refusal, id, fwd.close, app).await;
                        record.status = refusal.status();
                        record.complete = ok;
                        if ok { Next::KeepAlive } else { Next::Close }
                    }
                };
                let request = &b.read[..fwd.len];
                let id = fwd.id.bytes(request);
                log(&record, app, b"POST", &request[fwd.path.clone()], id);
                b.read.advance(fwd.len);
                b.take_early();
                next == Next::KeepAlive && !fwd.close
            }
        };
        if !keep_alive || (b.read.is_empty() && *stop.borrow()) {
            return;
        }
        idle_until = Instant::now() + limits.idle_timeout;
        fresh = false;
    }
}

/// Writes one access-log line and the metrics of a request.
fn log(record: &Record, app: &App, method: &[u8], path: &[u8], id: &[u8]) {
    let text = |b| std::str::from_utf8(b).unwrap_or("-");
    record.finish(app, text(method), text(path), text(id));
}

/// Reads more of a request into `b.read`, up to `at`.
async fn read_more(
    client: &mut TcpStream,
    b: &mut Buffers,
    deadline: &mut Deadline<'_>,
    at: Instant,
) -> Result<(), Wait> {
    loop {
        tokio::select! {
            r = client.readable() => if r.is_err() { return Err(Wait::Closed) },
            () = deadline.until(at) => return Err(Wait::TimedOut),
        }
        b.read.reserve(buffers::READ_SIZE);
        match reads::try_read(client, &mut b.read) {
            Ok(0) => return Err(Wait::Closed),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Wait::Closed),
        }
    }
}

/// Reads and throws away `n` bytes of a body the front refused; false when the client
/// stalled or went away.
async fn discard(
    client: &mut TcpStream,
    mut n: u64,
    pause: Duration,
    deadline: &mut Deadline<'_>,
) -> bool {
    let mut sink = vec![0u8; 8192];
    while n > 0 {
        let at = Instant::now() + pause;
        tokio::select! {
            r = client.readable() => if r.is_err() { return false },
            () = deadline.until(at) => return false,
        }
        let want = sink.len().min(n as usize);
        match client.try_read(&mut sink[..want]) {
            Ok(0) => return false,
            Ok(k) => n -= k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    true
}

/// Writes a refusal; false when the client is gone.
async fn write_refusal(client: &TcpStream, r: &Refusal, id: &[u8], close: bool, app: &App) -> bool {
    let mut out = Vec::with_capacity(512);
    r.write(&mut out, id, close);
    writes::send(client, &out, app, id).await
}

/// Answers 408 to a client that stopped sending its body, and closes.
async fn body_timed_out(client: TcpStream, app: &App, record: &mut Record, read: &[u8]) {
    let made = app.ids.make();
    let (method, path, id) = match request::meta(read) {
        Some(m) => (
            &read[m.method],
            &read[m.path],
            m.id.map_or(&made[..], |r| &read[r]),
        ),
        None => (&b"-"[..], &b"-"[..], &made[..]),
    };
    let r = Refusal::BodyTimeout;
    app.metrics.client_timed_out(ClientLimit::Body);
    record.status = r.status();
    record.complete = write_refusal(&client, &r, id, true, app).await;
    log(record, app, method, path, id);
    linger(client).await;
}

/// Lets hyper serve the rest of the connection, starting with the bytes already read.
async fn hand_over(
    client: TcpStream,
    read: bytes::BytesMut,
    front: &Front,
    started: Instant,
    stop: watch::Receiver<bool>,
) {
    let clock = general::io::Clock::new(Some(started));
    let io = general::io::Rewind::new(read.freeze(), client, clock.clone());
    general::conn::serve(io, clock, front.app.clone(), false, stop).await;
}

pub use crate::observability::lines::push_decimal;

#[cfg(test)]
mod tests {
    use super::*;

    /// 10,000 idle keep-alive connections must fit in little memory: each one's task is
    /// its future, so that future must stay small (buffers are lent, not owned).
    #[tokio::test]
    async fn an_idle_connection_costs_little() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (_stop, rx) = watch::channel(false);
        let front = Front::new(crate::front::tests::app(1));
        let size = std::mem::size_of_val(&connection(s, &front, rx));
        assert!(size <= 3 * 1024, "a connection's future takes {size} bytes");
    }
}
