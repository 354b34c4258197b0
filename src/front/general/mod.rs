//! The general wire: hyper serves the connections the pass-through wire hands over (and
//! the health listener), asks [`crate::front::policy`] like the other wire does, and sends
//! admitted requests with hyper-util's pooled client.
//!
//! - [`conn`]: one hyper connection with the header and idle timeouts.
//! - [`io`]: the client connection under hyper, and the clock of its time limits.
//! - [`late`]: a streaming request answered early while its on-demand model loads.
//! - [`relay`]: the engine's response body passed on, with SSE keepalives and the access
//!   record.

pub mod conn;
pub mod io;
pub mod late;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::App;
use super::access::{Inflight, Record, Wire};
use super::early::{self, TurnWait, Waited};
use super::headers::{self, ConnectionTokens, Direction};
use super::local::{self, Local};
use super::page;
use super::policy::{self, Decision, Head, Seen};
use super::refusal::{DISCARD_LIMIT, Refusal};
use crate::observability::metrics::ClientLimit;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Pooled engine connections stay idle for less than uvicorn's 5 s keep-alive, so that a
/// connection the engine is about to close is rarely picked.
pub const ENGINE_IDLE: Duration = Duration::from_secs(4);

/// hyper-util's pooled HTTP/1.1 client to the engines. It never goes through an HTTP
/// proxy, and only retries a request that was never written to a connection.
pub type EngineClient = Client<HttpConnector, Full<Bytes>>;

/// The engine client: keep-alive, Nagle off, idle connections dropped after
/// [`ENGINE_IDLE`].
pub fn engine_client() -> EngineClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(ENGINE_IDLE)
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// The facts [`policy`] needs, from hyper's parsed head.
fn head_of<'a>(method: &'a Method, uri: &'a http::Uri, headers: &'a HeaderMap) -> Head<'a> {
    let mut head = Head {
        method: method.as_str(),
        path: uri.path(),
        ..Head::default()
    };
    for v in headers.get_all(header::AUTHORIZATION) {
        head.authorization.add(v.as_bytes());
    }
    for v in headers.get_all("route") {
        head.route.add(v.as_bytes());
    }
    for v in headers.get_all(&X_REQUEST_ID) {
        head.request_id.add(v.as_bytes());
    }
    head.browser = page::accepts_html(headers);
    head.content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    head
}

/// The client's request id if it gave one usable id, else a made-up one.
fn request_id(app: &App, given: &Seen<&[u8]>) -> HeaderValue {
    given
        .once()
        .filter(|id| headers::usable_request_id(id))
        .and_then(|id| HeaderValue::from_bytes(id).ok())
        .unwrap_or_else(|| HeaderValue::from_bytes(&app.ids.make()).expect("ascii id"))
}

/// Serves one request that reached hyper; `health_only` for the health listener, which
/// serves health, liveness and metrics and nothing else.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, health_only: bool) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let head = head_of(&parts.method, &parts.uri, &parts.headers);
    let id = request_id(&app, &head.request_id);
    let decision = if health_only {
        policy::no_duplicates(&head).and_then(|()| health_only_path(&app, &head))
    } else {
        policy::on_head(&app, &head)
    };
    let mut record = Record::new(Wire::General, started);
    let mut unanswered = Unanswered {
        app: &app,
        started,
        parts: &parts,
        id: &id,
        armed: true,
    };
    let result = match decision {
        Ok(Decision::Local(local)) => {
            unanswered.armed = false;
            return serve_local(local, &app, &parts.headers, id.clone()).await;
        }
        Ok(Decision::Admin) => admin(&app, &head, &parts, body, &id, &mut record).await,
        Err(refusal) => Err((refusal, false)),
        Ok(Decision::Proxy) => proxy(&app, &head, &parts, body, &id, &mut record).await,
    };
    unanswered.armed = false;
    match result {
        Ok(resp) => resp,
        Err((refusal, close)) => {
            record.status = refusal.status();
            record.complete = true;
            let path = parts.uri.path();
            record.finish(
                &app,
                parts.method.as_str(),
                path,
                id.to_str().unwrap_or("-"),
            );
            let mut resp = refusal.to_response(&id);
            if close {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

/// The health listener serves health, liveness and metrics, for `GET` and `HEAD` only.
fn health_only_path(app: &App, head: &Head) -> Result<Decision, Refusal> {
    match local::classify(head.path, &app.health_endpoint, head.browser) {
        Some(l) if l.is_health() && matches!(head.method, "GET" | "HEAD") => Ok(Decision::Local(l)),
        _ => Err(Refusal::HealthListenerOnly {
            method: head.method.to_string(),
            path: head.path.to_string(),
        }),
    }
}

/// Writes the access-log line of a request whose handler hyper dropped before it answered:
/// the client went away while the request waited (a model's queue, a load) or while the
/// engine worked on it. The wire's own reads see that; here the drop is the only sign.
struct Unanswered<'a> {
    app: &'a App,
    started: Instant,
    parts: &'a http::request::Parts,
    id: &'a HeaderValue,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            let id = self.id.to_str().unwrap_or("-");
            Record::new(Wire::General, self.started).finish(
                self.app,
                self.parts.method.as_str(),
                self.parts.uri.path(),
                id,
            );
        }
    }
}

async fn serve_local(
    local: Local,
    app: &Arc<App>,
    headers: &HeaderMap,
    id: HeaderValue,
) -> Response {
    let mut resp = local.serve(app.clone(), headers.clone()).await;
    resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    resp
}

/// A refusal, and whether the connection must close (the body was not read).
type Refused = (Refusal, bool);

async fn proxy(
    app: &Arc<App>,
    head: &Head<'_>,
    parts: &http::request::Parts,
    body: Incoming,
    id: &HeaderValue,
    record: &mut Record,
) -> Result<Response, Refused> {
    let bytes = read_body(body, head.content_length, app).await?;
    let target_text = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut target = policy::on_body(app, head, target_text, &bytes, &mut record.model)
        .map_err(|r| (r, false))?;
    let bytes = target.body.take().map_or(bytes, Bytes::from);
    let model = target.route.index;
    // The common case takes its turn at once; a request that must wait may be a stream
    // that gets its head early (read before the body goes into the engine's request).
    let ready = policy::ready_turn(app, model);
    let wait = ready.is_none().then(|| TurnWait::new(app, model, &bytes));

    let mut connection = ConnectionTokens::default();
    for v in parts.headers.get_all(header::CONNECTION) {
        connection.add(v.as_bytes());
    }
    let mut h = HeaderMap::with_capacity(parts.headers.len() + 2);
    let client_authorization = target.authorization.passes_client_header();
    for (name, value) in &parts.headers {
        if headers::passes(Direction::ToEngine, name.as_str(), &connection)
            && (client_authorization || name != header::AUTHORIZATION)
        {
            h.append(name.clone(), value.clone());
        }
    }
    if let Some(value) = target.authorization.added() {
        let value = HeaderValue::from_str(value).expect("no control characters (checked)");
        h.insert(header::AUTHORIZATION, value);
    }
    let authority = &target.route.authority;
    h.insert(
        header::HOST,
        HeaderValue::from_str(authority).expect("authority is a valid header"),
    );
    let engine_id = if target.route.uuid_request_ids {
        let uuid = headers::engine_request_id(id.as_bytes(), true);
        HeaderValue::from_bytes(&uuid).expect("a UUID is a valid header")
    } else {
        id.clone()
    };
    h.insert(X_REQUEST_ID.clone(), engine_id);
    let uri = format!("http://{authority}{}", target.path);
    let mut req = hyper::Request::new(Full::new(bytes));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri
        .parse()
        .map_err(|e| (Refusal::MalformedBody(format!("bad path: {e}")), false))?;
    *req.headers_mut() = h;

    let turn = match (ready, wait) {
        (Some(turn), _) => turn,
        (None, None) => unreachable!("a wait when not ready"),
        (None, Some(mut wait)) => match wait.next().await {
            Waited::Done(turn) => turn.map_err(|r| (r, false))?,
            Waited::KeepAlive => {
                record.status = 200;
                record.streamed = true;
                let finished =
                    std::mem::replace(record, Record::new(Wire::General, record.started));
                let stream = early::spawn(app.clone(), model, wait, req);
                let body = late::LateBody::new(
                    stream,
                    app.clone(),
                    finished,
                    parts.uri.clone(),
                    id.clone(),
                );
                return Ok(early::response_head(id)
                    .body(Body::new(body))
                    .expect("a valid response"));
            }
        },
    };
    let inflight = Inflight::new(app.clone(), model, turn.lease);
    record.proxied = true;
    let resp = app.engines.request(req).await.map_err(|e| {
        let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        let model = target.route.model.to_string();
        (Refusal::BadGateway { model, why }, false)
    })?;
    let (mut resp_parts, incoming) = resp.into_parts();
    let mut engine_connection = ConnectionTokens::default();
    for v in resp_parts.headers.get_all(header::CONNECTION) {
        engine_connection.add(v.as_bytes());
    }
    let mut out = HeaderMap::with_capacity(resp_parts.headers.len() + 2);
    for (name, value) in &resp_parts.headers {
        let keep = name == header::CONTENT_LENGTH
            || headers::passes(Direction::ToClient, name.as_str(), &engine_connection);
        if keep {
            out.append(name.clone(), value.clone());
        }
    }
    let streamed = out
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streamed {
        out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    out.insert(X_REQUEST_ID.clone(), id.clone());
    resp_parts.headers = out;
    record.status = resp_parts.status.as_u16();
    record.streamed = streamed;
    let keepalive = app
        .limits
        .sse_keepalive
        .filter(|_| streamed && !resp_parts.headers.contains_key(header::CONTENT_LENGTH));
    let finished = std::mem::replace(record, Record::new(Wire::General, record.started));
    let relay = relay::Relay::new(
        incoming,
        relay::Exchange {
            app: app.clone(),
            record: finished,
            path: parts.uri.clone(),
            request_id: id.clone(),
            inflight,
            slot: turn.slot,
        },
        keepalive,
    );
    Ok(Response::from_parts(resp_parts, Body::new(relay)))
}

/// An admin API call the policy let through (the admin key checked): its body read like a
/// proxied request's, answered by [`crate::admin`], logged like any request.
async fn admin(
    app: &Arc<App>,
    head: &Head<'_>,
    parts: &http::request::Parts,
    body: Incoming,
    id: &HeaderValue,
    record: &mut Record,
) -> Result<Response, Refused> {
    let bytes = read_body(body, head.content_length, app).await?;
    let authorization = head.authorization.once().copied();
    let reply = app
        .admin
        .handle(head.method, head.path, authorization, &bytes)
        .await;
    let status = axum::http::StatusCode::from_u16(reply.status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::builder()
        .status(status)
        .header(X_REQUEST_ID.clone(), id.clone());
    if reply.body.is_some() {
        resp = resp.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(allow) = reply.allow {
        resp = resp.header(header::ALLOW, allow);
    }
    record.status = reply.status;
    record.complete = true;
    record.finish(
        app,
        parts.method.as_str(),
        parts.uri.path(),
        id.to_str().unwrap_or("-"),
    );
    Ok(resp
        .body(Body::from(reply.body_bytes()))
        .expect("a valid response"))
}

/// Reads the whole body if it fits in `MODELMUX_MAX_BODY_BYTES`, giving up when the
/// client pauses longer than `MODELMUX_BODY_TIMEOUT`.
async fn read_body(mut body: Incoming, length: Option<u64>, app: &App) -> Result<Bytes, Refused> {
    let limit = app.max_body;
    let pause = app.limits.body_timeout;
    let too_large = |drained: bool| (Refusal::TooLarge { limit }, !drained);
    if length.is_some_and(|n| n > limit as u64) {
        return Err(too_large(drain(body, length, pause).await));
    }
    let mut buf = BytesMut::with_capacity(length.unwrap_or(0) as usize);
    // A body that arrives in one frame (the usual case) is passed on without a copy.
    let mut single: Option<Bytes> = None;
    loop {
        let frame = match tokio::time::timeout(pause, body.frame()).await {
            Err(_) => {
                app.metrics.client_timed_out(ClientLimit::Body);
                return Err((Refusal::BodyTimeout, true));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let why = format!("cannot read the request body: {e}");
                return Err((Refusal::MalformedBody(why), true));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = buf.len() + single.as_ref().map_or(0, Bytes::len) + data.len();
        if total > limit {
            return Err(too_large(drain(body, None, pause).await));
        }
        match single.take() {
            None if buf.is_empty() => single = Some(data),
            Some(first) => {
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(single.unwrap_or_else(|| buf.freeze()))
}

/// Reads and throws away the rest of a body; true when all of it was read.
async fn drain(mut body: Incoming, length: Option<u64>, pause: Duration) -> bool {
    if length.is_some_and(|n| n > DISCARD_LIMIT) {
        return false;
    }
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout(pause, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > DISCARD_LIMIT {
                    return false;
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}
