//! A streaming request that waits for an on-demand load or wake (SPEC §9) gets its SSE
//! keepalive comments while it waits, for both wires, from here:
//!
//! - [`TurnWait`]: [`policy::wait_turn`] with a keepalive tick every
//!   `MODELMUX_SSE_KEEPALIVE` when the request asks for a stream. Until the first tick
//!   nothing is sent, so a quick load keeps the engine's own status and headers.
//! - At the first tick the wire sends the early head ([`write_head`], [`response_head`]:
//!   200, `text/event-stream`) and hands the wait to [`spawn`], whose task goes on waiting
//!   (its place in the model's queue kept), sends the request once the model is ready, and
//!   yields the stream's bytes: keepalive comments, then the engine's events. The wire
//!   writes them to its client (as chunks, or as frames).
//! - The engine's status can no longer be sent: a refusal (no load in time, a failed load)
//!   or an engine error becomes one `data: {"error": {...}}` event (what vLLM itself sends
//!   when a stream fails) and `data: [DONE]`, and the body ends cleanly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep, sleep};

use super::App;
use super::access::Inflight;
use super::errors::{error_body, kind_of};
use super::policy::{self, Turn};
use super::refusal::{Refusal, clip};
use super::sse::{EventBoundary, KEEPALIVE};

/// Most of an engine's error body read to put in the error event.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Only `"stream"` is read; anything but `true` (or a body that is not an object) is no
/// stream.
#[derive(serde::Deserialize)]
struct StreamField {
    #[serde(default)]
    stream: Option<bool>,
}

/// True when the JSON body asks for a stream (`"stream": true`). Read only on the waiting
/// path: a ready model's requests never pay for it.
pub fn asks_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<StreamField>(body).is_ok_and(|f| f.stream == Some(true))
}

type TurnFuture = Pin<Box<dyn Future<Output = Result<Turn, Refusal>> + Send>>;

/// A request's wait for its turn, with keepalive ticks when it asks for a stream.
pub struct TurnWait {
    turn: TurnFuture,
    keepalive: Option<(Duration, Pin<Box<Sleep>>)>,
}

/// What happened next while waiting.
pub enum Waited {
    /// The wait is over.
    Done(Result<Turn, Refusal>),
    /// A keepalive comment is due.
    KeepAlive,
}

impl TurnWait {
    /// Starts waiting for model `model`'s turn; `body` is the client's JSON body.
    pub fn new(app: &Arc<App>, model: usize, body: &[u8]) -> Self {
        let owned = app.clone();
        let turn = Box::pin(async move { policy::wait_turn(&owned, model).await });
        let keepalive = app
            .limits
            .sse_keepalive
            .filter(|_| asks_stream(body))
            .map(|every| (every, Box::pin(sleep(every))));
        TurnWait { turn, keepalive }
    }

    /// The end of the wait, or the next keepalive tick (the wait goes on).
    pub async fn next(&mut self) -> Waited {
        let TurnWait { turn, keepalive } = self;
        let tick = async {
            match keepalive.as_mut() {
                Some((every, timer)) => {
                    timer.as_mut().await;
                    let next = Instant::now() + *every;
                    timer.as_mut().reset(next);
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = turn.as_mut() => Waited::Done(r),
            () = tick => Waited::KeepAlive,
        }
    }
}

/// The early head (raw HTTP/1.1): a chunked event stream, sent before the engine answers.
pub fn write_head(out: &mut Vec<u8>, request_id: &[u8], close: bool) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
          cache-control: no-cache\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\
          x-request-id: ",
    );
    out.extend_from_slice(request_id);
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// The early head's headers (hyper's wire frames the body itself).
pub fn response_head(request_id: &http::HeaderValue) -> http::response::Builder {
    http::Response::builder()
        .status(200)
        .header(
            http::header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8",
        )
        .header(http::header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .header("x-request-id", request_id.clone())
}

/// One error event in OpenAI's error shape, then `data: [DONE]`.
fn error_event(error: &str) -> Bytes {
    Bytes::from(format!("data: {error}\n\ndata: [DONE]\n\n"))
}

/// A refusal as the stream's last event.
pub fn refusal_event(r: &Refusal) -> Bytes {
    error_event(&error_body(r.status(), r.kind(), &r.message()))
}

/// An engine's non-200 answer as the stream's last event: its own `{"error": ...}` object
/// as it is, an object with a `message` (vLLM's older error shape) under `"error"`, any
/// other body as the message of one.
pub fn engine_error_event(status: u16, body: &[u8], model: &str) -> Bytes {
    let error = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) if o.contains_key("error") => Value::Object(o),
        Ok(Value::Object(o)) if o.contains_key("message") => json!({ "error": o }),
        _ => json!({"error": {
            "message": format!(
                "engine of model {model} answered {status}: {}",
                clip(String::from_utf8_lossy(body).trim())
            ),
            "type": kind_of(status),
            "code": status,
        }}),
    };
    error_event(&error.to_string())
}

/// How a late stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The status the request would have had (the engine's, or the refusal's); 0 when
    /// the client went away first.
    pub status: u16,
    /// The body ended cleanly (false: the engine's stream was cut, or the client left).
    pub complete: bool,
    /// The request reached the engine.
    pub proxied: bool,
}

/// A stream whose head went out early: its bytes as they come, and how it ended (once
/// `bytes` is closed).
pub struct Late {
    /// Keepalive comments, then the engine's events or an error event.
    pub bytes: mpsc::Receiver<Bytes>,
    /// The task's outcome.
    pub outcome: JoinHandle<Outcome>,
}

/// Goes on with `wait` (its first keepalive just ticked) and, once the turn comes, sends
/// `request` to model `model`'s engine, in a task of its own; dropping [`Late::bytes`]
/// ends it (leaving the queue, or closing the engine connection so that the engine
/// cancels the request).
pub fn spawn(
    app: Arc<App>,
    model: usize,
    wait: TurnWait,
    request: hyper::Request<Full<Bytes>>,
) -> Late {
    let (tx, bytes) = mpsc::channel(8);
    let outcome = tokio::spawn(late(app, model, wait, request, tx));
    Late { bytes, outcome }
}

const GONE: Outcome = Outcome {
    status: 0,
    complete: false,
    proxied: false,
};

async fn late(
    app: Arc<App>,
    model: usize,
    mut wait: TurnWait,
    request: hyper::Request<Full<Bytes>>,
    tx: mpsc::Sender<Bytes>,
) -> Outcome {
    let keepalive = || Bytes::from_static(KEEPALIVE);
    if tx.send(keepalive()).await.is_err() {
        return GONE;
    }
    let turn = loop {
        tokio::select! {
            w = wait.next() => match w {
                Waited::Done(r) => break r,
                Waited::KeepAlive => {
                    if tx.send(keepalive()).await.is_err() {
                        return GONE;
                    }
                }
            },
            () = tx.closed() => return GONE,
        }
    };
    let ended = |status, proxied| Outcome {
        status,
        complete: true,
        proxied,
    };
    let turn = match turn {
        Ok(turn) => turn,
        Err(r) => {
            let _ = tx.send(refusal_event(&r)).await;
            return ended(r.status(), false);
        }
    };
    let _slot = turn.slot;
    let _inflight = Inflight::new(app.clone(), model, turn.lease);
    let name = app.model_name(model);
    let answer = tokio::select! {
        r = app.engines.request(request) => r,
        () = tx.closed() => return GONE,
    };
    let resp = match answer {
        Ok(resp) => resp,
        Err(e) => {
            let why =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            let r = Refusal::BadGateway { model: name, why };
            let _ = tx.send(refusal_event(&r)).await;
            return ended(502, false);
        }
    };
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if status != 200 {
        let mut text = BytesMut::new();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = tx.closed() => return GONE,
            };
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        let room = MAX_ERROR_BODY.saturating_sub(text.len());
                        text.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        let _ = tx.send(engine_error_event(status, &text, &name)).await;
        return ended(status, true);
    }
    // The engine's events, with keepalives between them during its silences.
    let every = app.limits.sse_keepalive;
    let mut boundary = EventBoundary::default();
    let mut last_sent = Instant::now();
    let mut timer = Box::pin(sleep(every.unwrap_or(Duration::from_secs(3600))));
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                None => return ended(200, true),
                // The engine died mid-stream: the client sees a cut body.
                Some(Err(_)) => return Outcome { status, complete: false, proxied: true },
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        boundary.feed(&data);
                        last_sent = Instant::now();
                        if tx.send(data).await.is_err() {
                            return GONE;
                        }
                    }
                }
            },
            () = tx.closed() => return GONE,
            () = timer.as_mut(), if every.is_some() => {
                let every = every.unwrap_or_default();
                let due = last_sent + every;
                let now = Instant::now();
                if now < due {
                    timer.as_mut().reset(due);
                    continue;
                }
                timer.as_mut().reset(now + every);
                if boundary.at_boundary() {
                    last_sent = now;
                    if tx.send(keepalive()).await.is_err() {
                        return GONE;
                    }
                }
            }
        }
    }
}

/// The engine request for the hyper client, from the raw one the pass-through wire wrote
/// (its own bytes: head and body). `None` if it does not parse (it always does).
pub fn request_from_raw(raw: &[u8], authority: &str) -> Option<hyper::Request<Full<Bytes>>> {
    let mut headers = [httparse::EMPTY_HEADER; 72];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = req.parse(raw).ok()? else {
        return None;
    };
    let uri: http::Uri = format!("http://{authority}{}", req.path?).parse().ok()?;
    let mut builder = hyper::Request::builder()
        .method(http::Method::POST)
        .uri(uri);
    for h in req.headers.iter() {
        // hyper frames the body from its length itself.
        if !h.name.eq_ignore_ascii_case("content-length") {
            builder = builder.header(h.name, h.value);
        }
    }
    let body = Bytes::copy_from_slice(&raw[head_len..]);
    builder.body(Full::new(body)).ok()
}

/// True for the keepalive comment (which does not count as the stream's first byte).
pub fn is_keepalive(data: &[u8]) -> bool {
    data == KEEPALIVE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stream_true_asks_for_a_stream() {
        assert!(asks_stream(br#"{"model": "m", "stream": true, "n": [1]}"#));
        for body in [
            &br#"{"model": "m"}"#[..],
            br#"{"stream": false}"#,
            br#"{"stream": "true"}"#,
            br#"["stream", true]"#,
            b"not json",
        ] {
            assert!(!asks_stream(body), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn errors_become_one_event_in_openai_shape_then_done() {
        let event = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
        let r = Refusal::LoadTimeout {
            model: "m".into(),
            state: "loading",
        };
        let text = event(refusal_event(&r));
        let (data, done) = text.split_once("\n\n").unwrap();
        assert_eq!(done, "data: [DONE]\n\n");
        let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["error"]["code"], 503);
        assert_eq!(v["error"]["type"], "service_unavailable");
        // An engine's own error object passes as it is; other bodies are wrapped.
        let own = br#"{"error": {"message": "too long", "type": "BadRequestError", "code": 400}}"#;
        let text = event(engine_error_event(400, own, "m"));
        assert!(text.starts_with(&format!(
            "data: {}",
            serde_json::from_slice::<Value>(own).unwrap()
        )));
        let old = br#"{"object": "error", "message": "too long", "code": 400}"#;
        let v: Value = serde_json::from_str(
            event(engine_error_event(400, old, "m"))
                .lines()
                .next()
                .unwrap()[6..]
                .trim(),
        )
        .unwrap();
        assert_eq!(v["error"]["message"], "too long");
        let v: Value = serde_json::from_str(
            event(engine_error_event(500, b"oops", "m"))
                .lines()
                .next()
                .unwrap()[6..]
                .trim(),
        )
        .unwrap();
        assert_eq!(v["error"]["code"], 500);
        assert!(v["error"]["message"].as_str().unwrap().contains("oops"));
    }
}
