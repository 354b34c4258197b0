//! `/health` (and its OCI alias), `/livez`, `/metrics` and `/v1/models`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::errors::{error, json as json_response};
use super::{App, auth};
use crate::observability::scrape;
use crate::state::rfc3339;

/// 200 when every model is ready, else 503; the body lists each model's state, `since`
/// (RFC 3339) and, while it starts, its engine's `last_log`.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.state.borrow().clone();
    let now = std::time::SystemTime::now();
    let models: Vec<Value> = snapshot
        .live()
        .map(|(_, m)| {
            json!({
                "name": m.name, "state": m.state, "gpus": m.gpus, "port": m.port, "pid": m.pid,
                "restarts": m.restarts, "last_exit": m.last_exit,
                "since": rfc3339(m.since), "last_log": m.last_log,
                "seconds_in_state": (now.duration_since(m.since).unwrap_or_default().as_secs_f64()
                    * 10.0).round() / 10.0,
                "gpu_share": m.gpu_share, "start_after": m.start_after,
                "load": m.load, "unload": m.unload, "takes_turns": m.takes_turns,
            })
        })
        .collect();
    let ok = snapshot.all_ready();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ready" } else if snapshot.stopping { "stopping" } else { "not ready" },
        "models": models,
    });
    json_response(status, &body)
}

/// 200 while modelmux runs.
pub async fn livez() -> Response {
    json_response(StatusCode::OK, &json!({"status": "alive"}))
}

/// Prometheus text: modelmux's own metrics, then each ready engine's (see
/// [`crate::observability::scrape`]).
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let (mut text, engines) = {
        let snapshot = app.state.borrow();
        (
            app.metrics.render(&snapshot),
            scrape::targets(&snapshot.table, &snapshot),
        )
    };
    scrape::append_engines(&mut text, engines, &app.metrics.engine_scrape_errors).await;
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )
        .body(Body::from(text))
        .expect("valid response")
}

/// One entry per served name and adapter: the engine's own entry for it (vLLM's `root`,
/// `parent`, `max_model_len`, `owned_by`, `permission`) once the engine was ready, else one
/// made here; both with modelmux's `state` added.
fn model_objects(app: &App) -> Vec<Value> {
    let snapshot = app.state.borrow();
    let table = snapshot.table.clone();
    table
        .names
        .iter()
        .map(|n| {
            let status = &snapshot.models[n.model];
            let own = status
                .engine_models
                .as_ref()
                .and_then(|list| list.iter().find(|e| e["id"] == n.name.as_str()));
            let mut entry = match own {
                Some(e) if e.is_object() => e.clone(),
                _ => {
                    let base: &str = &snapshot.models[n.model].name;
                    json!({
                        "id": n.name,
                        "object": "model",
                        "created": app.created,
                        "owned_by": "modelmux",
                        "root": if n.adapter { n.name.as_str() } else { base },
                        "parent": if n.adapter { Some(base) } else { None },
                    })
                }
            };
            entry["state"] = json!(status.state);
            entry
        })
        .collect()
}

/// Every configured model and adapter, in OpenAI's list shape.
pub async fn list_models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !auth::authorized(app.api_key.as_deref(), &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong API key");
    }
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": model_objects(&app)}),
    )
}

/// One model or adapter by id.
pub async fn get_model(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !auth::authorized(app.api_key.as_deref(), &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong API key");
    }
    match model_objects(&app)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
    {
        Some(m) => json_response(StatusCode::OK, &m),
        None => error(
            StatusCode::NOT_FOUND,
            &format!(
                "model {:?} is not served here; available: {}",
                super::refusal::clip(&id),
                app.table().available()
            ),
        ),
    }
}
