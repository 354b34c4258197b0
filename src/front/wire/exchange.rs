//! One request passed to an engine and its response passed back byte for byte: one write
//! to the engine, and for each read from the engine one write to the client, with nothing
//! held back. The client connection is watched meanwhile, so that a client that goes away
//! closes the engine connection (vLLM then aborts the generation). During long silences
//! in an event stream, a keepalive comment goes out between two events.
//!
//! A request is sent at most once: it is sent again, on a fresh connection, only when the
//! pooled connection refused the very first byte of it.

use std::pin::Pin;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::Front;
use super::buffers::{READ_SIZE, Scratch};
use super::engines::connect;
use super::reads;
use super::request::Forward;
use super::response::{self, Head};
use super::writes;
use crate::front::App;
use crate::front::access::{Inflight, Record};
use crate::front::policy::Turn;
use crate::front::refusal::Refusal;
use crate::front::sse::KEEPALIVE;

/// Client bytes read ahead (pipelined requests) while a response is under way, at most.
const MAX_EARLY: usize = 64 * 1024;

/// What the connection does after an exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the client connection.
    Close,
}

/// Why an engine gave no usable response head.
enum Failure {
    ClientGone,
    Engine {
        why: String,
        /// False only when the engine refused the first byte: it never saw the request.
        delivered: bool,
    },
}

/// Passes the request (`request` holds the client's bytes, `b.out` the engine's) to its
/// engine and the response back to the client. `timer` is the connection's timer, free
/// while the exchange runs (keepalive comments use it). `turn` (slot and lease) is held
/// until the end.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    client: &mut TcpStream,
    front: &Front,
    request: &[u8],
    fwd: &Forward,
    b: &mut Scratch,
    record: &mut Record,
    turn: Turn,
    mut timer: Pin<&mut Sleep>,
) -> Next {
    let _slot = turn.slot;
    let app = &*front.app;
    let route = &fwd.route;
    let id = fwd.id.bytes(request);
    let _inflight = Inflight::new(app, fwd.model, turn.lease);
    record.proxied = true;
    let close = fwd.close || app.state.borrow().stopping;

    let mut pooled = front.engines.checkout(fwd.model);
    let (engine, head) = loop {
        let reused = pooled.is_some();
        let mut engine = match pooled.take() {
            Some(conn) => conn,
            None => match connect(&route.authority).await {
                Ok(conn) => conn,
                Err(e) => {
                    let why = format!("cannot connect: {e}");
                    return bad_gateway(client, record, &route.model, why, id, close, app).await;
                }
            },
        };
        match send(&mut engine, client, b, id, close).await {
            Ok(head) => break (engine, head),
            Err(Failure::ClientGone) => return Next::Close,
            Err(Failure::Engine {
                delivered: false, ..
            }) if reused => {}
            Err(Failure::Engine { why, .. }) => {
                return bad_gateway(client, record, &route.model, why, id, close, app).await;
            }
        }
    };

    record.status = head.status;
    record.streamed = head.streamed;
    let mut framing = head.framing;
    let body = &b.engine[head.len..];
    let Ok((take, mut done)) = framing.feed(body) else {
        let why = "sent a malformed chunked body".to_string();
        return bad_gateway(client, record, &route.model, why, id, close, app).await;
    };
    let mut reusable = head.reusable && take == body.len();
    b.head.extend_from_slice(&body[..take]);
    if !writes::send(client, &b.head, app, id).await {
        return Next::Close;
    }
    record.sent(app, take);
    let keepalive = app.limits.sse_keepalive.filter(|_| head.streamed);
    let mut last_sent = record.started;
    if let Some(every) = keepalive {
        last_sent = Instant::now();
        timer.as_mut().reset(last_sent + every);
    }
    while !done {
        b.engine.clear();
        b.engine.reserve(READ_SIZE);
        let read = tokio::select! {
            r = reads::read(&engine, &mut b.engine) => r,
            () = client_gone(client, &mut b.early) => return Next::Close,
            () = timer.as_mut(), if keepalive.is_some() => {
                let every = keepalive.unwrap_or_default();
                let now = Instant::now();
                let due = last_sent + every;
                if now < due {
                    timer.as_mut().reset(due);
                    continue;
                }
                timer.as_mut().reset(now + every);
                if framing.between_events() {
                    if !writes::send(client, KEEPALIVE_CHUNK, app, id).await {
                        return Next::Close;
                    }
                    last_sent = now;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) if framing.ends_at_close() => break,
            // The engine died mid-body: closing makes the client see a cut response.
            Ok(0) | Err(_) => return Next::Close,
            Ok(n) => n,
        };
        let Ok((take, end)) = framing.feed(&b.engine[..n]) else {
            return Next::Close;
        };
        reusable &= take == n;
        done = end;
        if !writes::send(client, &b.engine[..take], app, id).await {
            return Next::Close;
        }
        if keepalive.is_some() {
            last_sent = Instant::now();
        }
        record.sent(app, take);
    }
    record.complete = true;
    if reusable {
        front.engines.checkin(fwd.model, engine);
    }
    if head.close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// [`KEEPALIVE`] as one chunk of a chunked body.
const KEEPALIVE_CHUNK: &[u8] = b"d\r\n: keepalive\n\n\r\n";
const _: () = assert!(KEEPALIVE.len() == 0xd);

/// Writes the request and reads up to the final response head.
async fn send(
    engine: &mut TcpStream,
    client: &TcpStream,
    b: &mut Scratch,
    id: &[u8],
    close: bool,
) -> Result<Head, Failure> {
    let failed = |what: &str, e: std::io::Error, delivered| Failure::Engine {
        why: format!("{what}: {e}"),
        delivered,
    };
    // The first write tells whether the connection took any of the request at all.
    let first = engine
        .write(&b.out)
        .await
        .map_err(|e| failed("cannot send the request", e, false))?;
    if first == 0 {
        let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
        return Err(failed("cannot send the request", e, false));
    }
    engine
        .write_all(&b.out[first..])
        .await
        .map_err(|e| failed("cannot send the request", e, true))?;
    b.engine.clear();
    loop {
        if !b.engine.is_empty() {
            match response::parse(&b.engine, id, close, &mut b.head) {
                Ok(response::Parsed::Complete(head)) => return Ok(head),
                Ok(response::Parsed::Interim(n)) => {
                    b.engine.advance(n);
                    continue;
                }
                Ok(response::Parsed::Incomplete) => {}
                Err(_) => {
                    return Err(Failure::Engine {
                        why: "sent a malformed response".into(),
                        delivered: true,
                    });
                }
            }
        }
        b.engine.reserve(READ_SIZE);
        let read = tokio::select! {
            r = reads::read(engine, &mut b.engine) => r,
            () = client_gone(client, &mut b.early) => return Err(Failure::ClientGone),
        };
        match read {
            Ok(0) => {
                return Err(Failure::Engine {
                    why: "closed the connection without an answer".into(),
                    delivered: true,
                });
            }
            Ok(_) => {}
            Err(e) => return Err(failed("connection failed", e, true)),
        }
    }
}

/// Resolves when the client closes its connection. Bytes it sends meanwhile (a pipelined
/// request) are kept in `early`, up to a limit.
pub async fn client_gone(client: &TcpStream, early: &mut BytesMut) {
    loop {
        if early.len() >= MAX_EARLY || client.readable().await.is_err() {
            return std::future::pending().await;
        }
        early.reserve(4096);
        match reads::try_read(client, early) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Answers 502 when the engine could not be reached or gave no usable answer.
async fn bad_gateway(
    client: &mut TcpStream,
    record: &mut Record,
    model: &str,
    why: String,
    id: &[u8],
    close: bool,
    app: &App,
) -> Next {
    let refusal = Refusal::BadGateway {
        model: model.to_string(),
        why,
    };
    let mut out = Vec::with_capacity(512);
    refusal.write(&mut out, id, close);
    record.status = 502;
    if !writes::send(client, &out, app, id).await {
        return Next::Close;
    }
    record.complete = true;
    if close { Next::Close } else { Next::KeepAlive }
}
