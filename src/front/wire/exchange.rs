//! One request passed to an engine and its response passed back byte for byte: one write
//! to the engine, and for each read from the engine one write to the client, with nothing
//! held back. The client connection is watched meanwhile, so that a client that goes away
//! closes the engine connection (vLLM then aborts the generation).

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Front;
use super::engines::connect;
use super::request::{Forward, push_decimal};
use super::response::{self, Head};
use crate::front::App;
use crate::front::body::{Inflight, Outcome, record};
use crate::front::errors::error_body;

/// Client bytes read ahead (pipelined requests) while a response is under way, at most.
const MAX_EARLY: usize = 64 * 1024;
/// Room made in a buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// A buffer that grew past this for one large request or response is let go afterwards,
/// so that idle keep-alive connections do not each hold the largest body they ever saw.
pub const KEEP_CAPACITY: usize = 64 * 1024;

/// What the connection does after an exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the client connection.
    Close,
}

/// Buffers a client connection reuses from request to request.
#[derive(Default)]
pub struct Scratch {
    /// The engine's request, as built by [`super::request::parse`].
    pub out: Vec<u8>,
    /// Bytes read from the engine.
    engine: BytesMut,
    /// The client's response head (and the first body bytes).
    head: Vec<u8>,
    /// Bytes the client sent while its response was under way.
    pub early: BytesMut,
}

impl Scratch {
    /// Lets go of buffers that grew past [`KEEP_CAPACITY`].
    pub fn shrink(&mut self) {
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        if self.head.capacity() > KEEP_CAPACITY {
            self.head = Vec::new();
        }
        if self.engine.capacity() > KEEP_CAPACITY {
            self.engine = BytesMut::new();
        }
    }
}

/// Why an engine gave no usable response head.
enum Failure {
    ClientGone,
    Engine { why: String, answered: bool },
}

/// Passes the request (`request` holds the client's bytes, `s.out` the engine's) to its
/// engine and the response back to the client.
pub async fn exchange(
    client: &mut TcpStream,
    front: &Front,
    request: &[u8],
    fwd: &Forward,
    s: &mut Scratch,
    started: Instant,
) -> Next {
    let app = &*front.app;
    let route = &app.table.models[fwd.model];
    let id = fwd.id.bytes(request);
    let mut log = Log {
        app,
        outcome: Outcome {
            model: fwd.model,
            status: 0,
            started,
            path: std::str::from_utf8(&request[fwd.path.clone()]).unwrap_or("-"),
            request_id: std::str::from_utf8(id).unwrap_or("-"),
            bytes: 0,
            streamed: false,
            complete: false,
        },
    };
    let _inflight = Inflight::new(front.app.clone(), fwd.model);
    let close = fwd.close || app.state.borrow().stopping;

    let mut pooled = front.engines.checkout(fwd.model);
    let (mut engine, head) = loop {
        let reused = pooled.is_some();
        let mut engine = match pooled.take() {
            Some(conn) => conn,
            None => match connect(&route.authority).await {
                Ok(conn) => conn,
                Err(e) => {
                    let why = format!("cannot connect: {e}");
                    return bad_gateway(client, &mut log, &route.model, why, id, close).await;
                }
            },
        };
        match send(&mut engine, client, s, id, close).await {
            Ok(head) => break (engine, head),
            Err(Failure::ClientGone) => return Next::Close,
            // Closed by the engine while idle: the request never reached it.
            Err(Failure::Engine {
                answered: false, ..
            }) if reused => {}
            Err(Failure::Engine { why, .. }) => {
                return bad_gateway(client, &mut log, &route.model, why, id, close).await;
            }
        }
    };

    log.outcome.status = head.status;
    log.outcome.streamed = head.streamed;
    let mut framing = head.framing;
    let body = &s.engine[head.len..];
    let Ok((take, mut done)) = framing.feed(body) else {
        let why = "sent a malformed chunked body".to_string();
        return bad_gateway(client, &mut log, &route.model, why, id, close).await;
    };
    let mut reusable = head.reusable && take == body.len();
    s.head.extend_from_slice(&body[..take]);
    if client.write_all(&s.head).await.is_err() {
        return Next::Close;
    }
    log.sent(take);
    while !done {
        s.engine.clear();
        s.engine.reserve(READ_SIZE);
        let read = tokio::select! {
            r = engine.read_buf(&mut s.engine) => r,
            () = client_gone(client, &mut s.early) => return Next::Close,
        };
        let n = match read {
            Ok(0) if framing.ends_at_close() => break,
            // The engine died mid-body: closing makes the client see a cut response.
            Ok(0) | Err(_) => return Next::Close,
            Ok(n) => n,
        };
        let Ok((take, end)) = framing.feed(&s.engine[..n]) else {
            return Next::Close;
        };
        reusable &= take == n;
        done = end;
        if client.write_all(&s.engine[..take]).await.is_err() {
            return Next::Close;
        }
        log.sent(take);
    }
    log.outcome.complete = true;
    if reusable {
        front.engines.checkin(fwd.model, engine);
    }
    if head.close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// Writes the request and reads up to the final response head.
async fn send(
    engine: &mut TcpStream,
    client: &TcpStream,
    s: &mut Scratch,
    id: &[u8],
    close: bool,
) -> Result<Head, Failure> {
    let failed = |what: &str, e: std::io::Error, answered| Failure::Engine {
        why: format!("{what}: {e}"),
        answered,
    };
    engine
        .write_all(&s.out)
        .await
        .map_err(|e| failed("cannot send the request", e, false))?;
    s.engine.clear();
    let mut answered = false;
    loop {
        if !s.engine.is_empty() {
            match response::parse(&s.engine, id, close, &mut s.head) {
                Ok(response::Parsed::Complete(head)) => return Ok(head),
                Ok(response::Parsed::Interim(n)) => {
                    s.engine.advance(n);
                    continue;
                }
                Ok(response::Parsed::Incomplete) => {}
                Err(_) => {
                    return Err(Failure::Engine {
                        why: "sent a malformed response".into(),
                        answered: true,
                    });
                }
            }
        }
        s.engine.reserve(READ_SIZE);
        let read = tokio::select! {
            r = engine.read_buf(&mut s.engine) => r,
            () = client_gone(client, &mut s.early) => return Err(Failure::ClientGone),
        };
        match read {
            Ok(0) => {
                return Err(Failure::Engine {
                    why: "closed the connection without an answer".into(),
                    answered,
                });
            }
            Ok(_) => answered = true,
            Err(e) => return Err(failed("connection failed", e, answered)),
        }
    }
}

/// Resolves when the client closes its connection. Bytes it sends meanwhile (a pipelined
/// request) are kept in `early`, up to a limit.
async fn client_gone(client: &TcpStream, early: &mut BytesMut) {
    loop {
        if early.len() >= MAX_EARLY || client.readable().await.is_err() {
            return std::future::pending().await;
        }
        early.reserve(4096);
        match client.try_read_buf(early) {
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
    log: &mut Log<'_>,
    model: &str,
    why: String,
    id: &[u8],
    close: bool,
) -> Next {
    let body = error_body(
        http::StatusCode::BAD_GATEWAY,
        &format!("engine of model {model} did not answer: {why}"),
    );
    let mut out = Vec::with_capacity(body.len() + 200);
    out.extend_from_slice(
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: ",
    );
    push_decimal(&mut out, body.len());
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(id);
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    log.outcome.status = 502;
    if client.write_all(&out).await.is_err() {
        return Next::Close;
    }
    log.sent(body.len());
    log.outcome.complete = true;
    if close { Next::Close } else { Next::KeepAlive }
}

/// Metrics and the access log line of one exchange, written when it ends however it ends.
struct Log<'a> {
    app: &'a App,
    outcome: Outcome<'a>,
}

impl Log<'_> {
    /// Counts body bytes sent; the first ones of a stream give its time to first byte.
    fn sent(&mut self, n: usize) {
        let o = &mut self.outcome;
        if o.bytes == 0 && n > 0 && o.streamed {
            let m = self.app.metrics.model(Some(o.model));
            m.ttfb.observe(o.started.elapsed());
        }
        o.bytes += n as u64;
    }
}

impl Drop for Log<'_> {
    fn drop(&mut self) {
        if self.outcome.status == 0 {
            tracing::info!(
                target: "access",
                path = self.outcome.path,
                request_id = self.outcome.request_id,
                "the client went away before the engine answered"
            );
        } else {
            record(self.app, &self.outcome);
        }
    }
}
