//! The hot path: read the body, find the model, forward the original bytes to its engine
//! and stream the answer back frame by frame.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use http_body_util::Full;
use tokio::time::Instant;

use super::body::{Exchange, Inflight, Metered, ReadError, read_limited};
use super::errors::{error, unavailable};
use super::{App, auth, route};
use crate::state::Lookup;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// vLLM's control paths: never passed to an engine (only modelmux calls them, on loopback).
pub fn is_engine_control(path: &str) -> bool {
    matches!(
        path,
        "/sleep"
            | "/wake_up"
            | "/is_sleeping"
            | "/collective_rpc"
            | "/reset_prefix_cache"
            | "/v1/load_lora_adapter"
            | "/v1/unload_lora_adapter"
            | "/start_profile"
            | "/stop_profile"
    )
}

/// The answer to a request that was not admitted.
fn refusal(model: &str, refused: crate::demand::Refused) -> Response {
    use crate::demand::Refused;
    match refused {
        Refused::ShuttingDown => unavailable("modelmux is shutting down", 5),
        Refused::Removed => error(
            StatusCode::NOT_FOUND,
            &format!("model {model} was removed by a reload"),
        ),
        Refused::Failed(why) => unavailable(
            &format!("model {model} failed and is not served ({why})"),
            60,
        ),
        Refused::Stopped => unavailable(
            &format!(
                "model {model} is stopped by an operator; POST /admin/models/{model}/start starts it"
            ),
            30,
        ),
        Refused::NotReady(phase) => unavailable(
            &format!("model {model} is {}; retry shortly", phase.as_str()),
            5,
        ),
        Refused::TimedOut(phase) => unavailable(
            &format!(
                "model {model} is loading on demand ({}) and was not ready within {:.0} s; retry shortly",
                phase.as_str(),
                crate::front::ON_DEMAND_WAIT.as_secs_f64()
            ),
            5,
        ),
    }
}

/// Only `"model"` is read from the body; serde skips the rest without building a tree.
#[derive(serde::Deserialize)]
pub(crate) struct ModelField<'a> {
    #[serde(borrow, default)]
    pub(crate) model: Option<Cow<'a, str>>,
}

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1), plus those the proxy
/// sets itself; lower case.
pub(crate) const HOP_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

fn is_hop_header(name: &HeaderName) -> bool {
    HOP_HEADERS.contains(&name.as_str())
}

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let listed: Vec<&str> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for (name, value) in from {
        if !is_hop_header(name) && !listed.iter().any(|l| name.as_str().eq_ignore_ascii_case(l)) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Any request that is not a health, metrics or models route.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let request_id = match parts.headers.get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => app.new_request_id(),
    };
    // Uri clones share their bytes: no copy of the path per request.
    let uri = parts.uri.clone();
    let mut resp = match forward(
        &app,
        parts.method,
        parts.uri,
        parts.headers,
        body,
        &request_id,
        started,
    )
    .await
    {
        Ok(resp) => resp,
        Err((model, resp)) => {
            let status = resp.status().as_u16();
            app.metrics.model(model).count(status);
            tracing::info!(target: "access", path = %uri.path(), status, request_id = ?request_id, "refused: {}", resp.status());
            resp
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    resp
}

type Refusal = (Option<usize>, Response);

async fn forward(
    app: &Arc<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    request_id: &HeaderValue,
    started: Instant,
) -> Result<Response, Refusal> {
    if is_engine_control(uri.path()) {
        let msg = format!(
            "{} is an engine control path; modelmux does not pass it on (see the admin API)",
            uri.path()
        );
        return Err((None, error(StatusCode::NOT_FOUND, &msg)));
    }
    if method != Method::POST {
        let status = if method == Method::GET {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::METHOD_NOT_ALLOWED
        };
        return Err((
            None,
            error(
                status,
                &format!(
                    "{method} {} is not served; inference routes take POST",
                    uri.path()
                ),
            ),
        ));
    }
    if !auth::authorized(app.api_key.as_deref(), &headers) {
        return Err((
            None,
            error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send Authorization: Bearer <MODELMUX_API_KEY>",
            ),
        ));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = match read_limited(body, length, app.max_body).await {
        Ok(b) => b,
        Err(ReadError::TooLarge { drained }) => {
            let mut resp = error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body is larger than MODELMUX_MAX_BODY_BYTES ({} bytes)",
                    app.max_body
                ),
            );
            if !drained {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Err((None, resp));
        }
        Err(ReadError::Broken(e)) => {
            return Err((
                None,
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                ),
            ));
        }
    };
    let model = match serde_json::from_slice::<ModelField>(&bytes) {
        Ok(f) => f.model,
        Err(e) => {
            return Err((
                None,
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("malformed JSON body: {e}"),
                ),
            ));
        }
    };
    let table = app.table();
    let target = match table.lookup(model.as_deref()) {
        Lookup::Found(r) => r,
        Lookup::Unknown => {
            let msg = format!(
                "model {:?} is not served here; available: {}",
                model.as_deref().unwrap_or_default(),
                table.available()
            );
            return Err((None, error(StatusCode::NOT_FOUND, &msg)));
        }
        Lookup::Missing => {
            let msg = format!(
                "the body has no \"model\"; available: {}",
                table.available()
            );
            return Err((None, error(StatusCode::BAD_REQUEST, &msg)));
        }
    };
    let index = target.index;

    // Origin form (`/path?query`): the engine sees the same request line as a direct call.
    let upstream_uri = match uri.path() {
        "/predict" | "/predictWithResponseStream" => {
            let path = match headers.get("route") {
                Some(value) => match value.to_str().ok().and_then(route::route_path) {
                    Some(p) => p,
                    None => {
                        let msg =
                            "the route header must be a plain path such as /v1/chat/completions";
                        return Err((Some(index), error(StatusCode::BAD_REQUEST, msg)));
                    }
                },
                None => target.predict_route.to_string(),
            };
            Uri::try_from(path).map_err(|e| {
                let msg = format!("bad path: {e}");
                (Some(index), error(StatusCode::BAD_REQUEST, &msg))
            })?
        }
        _ => {
            let mut origin = http::uri::Parts::default();
            origin.path_and_query = uri.path_and_query().cloned();
            Uri::from_parts(origin).map_err(|e| {
                let msg = format!("bad path: {e}");
                (Some(index), error(StatusCode::BAD_REQUEST, &msg))
            })?
        }
    };

    // Ready: at once; an on-demand model is loaded first, the request waiting its turn.
    let deadline = tokio::time::Instant::now() + crate::front::ON_DEMAND_WAIT;
    let lease = match crate::demand::admit(&app.state, &app.control, index, deadline).await {
        Ok(lease) => lease,
        Err(refused) => return Err((Some(index), refusal(&target.model, refused))),
    };

    let build_headers = || {
        let mut h = HeaderMap::with_capacity(headers.len() + 2);
        copy_end_to_end(&headers, &mut h);
        h.insert(
            header::HOST,
            HeaderValue::from_str(&target.authority).expect("authority is a valid header"),
        );
        h.insert(X_REQUEST_ID.clone(), request_id.clone());
        h
    };
    // Built once and moved into the request; rebuilt only for the rare retry.
    let mut prepared = Some(build_headers());
    let make = || {
        let mut req = hyper::Request::new(Full::new(bytes.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = upstream_uri.clone();
        *req.headers_mut() = prepared.take().unwrap_or_else(build_headers);
        req
    };

    let inflight = Inflight::new(app.clone(), index, Some(lease));
    let resp = match app.upstream.send(index, &target.authority, make).await {
        Ok(r) => r,
        Err(e) => {
            drop(inflight);
            let msg = format!("engine of model {} did not answer: {e}", target.model);
            return Err((Some(index), error(StatusCode::BAD_GATEWAY, &msg)));
        }
    };
    let (mut parts, incoming) = resp.into_parts();
    let hops: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|n| is_hop_header(n) && *n != header::CONTENT_LENGTH)
        .cloned()
        .collect();
    for name in hops {
        parts.headers.remove(&name);
    }
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streamed {
        parts
            .headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    let exchange = Exchange {
        app: app.clone(),
        model: index,
        status: parts.status.as_u16(),
        uri,
        request_id: request_id.clone(),
        started,
        streamed,
        inflight,
    };
    Ok(Response::from_parts(
        parts,
        Body::new(Metered::new(incoming, exchange)),
    ))
}
