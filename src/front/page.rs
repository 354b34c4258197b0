//! The status page (SPEC §6): `GET /` with `Accept: text/html` answers one self-contained
//! HTML page (inline CSS and script, no outside asset) that polls `GET /status` every two
//! seconds. Other clients, and other methods, get the policy's usual answers at `/`.
//!
//! `/status` is the page's JSON, and a handy one for people: per model, everything the
//! supervisor publishes in its snapshot (name, state, `since`, GPUs, port, pid, restarts,
//! last exit, `last_log`, `gpu_share`, ...), plus the front's view: served names, adapters,
//! `requests_total`, `inflight` and `queue_length` (requests waiting for a slot or for an
//! on-demand load; `null` for an always-loaded model without `max_concurrency`, which
//! never makes a request wait). Requests per second are worked out by the page
//! from `requests_total` over its last ten seconds of polls. Like `/health`, both stay open
//! when `MODELMUX_API_KEY` is set. Both are [`super::local::Local`] paths, so the two wires
//! answer them alike.

use std::sync::atomic::Ordering::Relaxed;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::App;
use super::errors::json as json_response;
use crate::state::now_unix;

/// The page, compiled into the binary.
const PAGE: &str = include_str!("page.html");

/// Nothing but this page's own inline code, and fetches to its own origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `GET /status`: the page's JSON.
pub fn status(app: &App) -> Response {
    json_response(StatusCode::OK, &status_json(app))
}

/// `GET /` for a browser: the page.
pub fn page() -> Response {
    let mut resp = Response::new(Body::from(PAGE));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// True when the client lists `text/html` among what it accepts (and not with `q=0`).
pub fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| accepts_html_value(v.as_bytes()))
}

/// [`accepts_html`] for one `Accept` header's value, as bytes (the pass-through wire's).
pub fn accepts_html_value(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value.split(',').any(|item| {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("text/html")
            && !parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            })
    })
}

/// The document `/status` answers.
pub fn status_json(app: &App) -> Value {
    let snapshot = app.state.borrow().clone();
    let models: Vec<Value> = snapshot
        .live()
        .map(|(i, status)| {
            let mut model = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
            if let Value::Object(fields) = &mut model {
                let names = |adapter: bool| -> Vec<&str> {
                    snapshot
                        .table
                        .names
                        .iter()
                        .filter(|n| n.model == i && n.adapter == adapter)
                        .map(|n| n.name.as_str())
                        .collect()
                };
                fields.insert("served_names".into(), json!(names(false)));
                fields.insert("adapters".into(), json!(names(true)));
                let metrics = app.metrics.model(Some(i));
                fields.insert("requests_total".into(), json!(metrics.answered()));
                fields.insert("inflight".into(), json!(metrics.inflight.load(Relaxed)));
                // Waiting for a slot or for an on-demand load; null for a model that
                // never makes a request wait.
                let waits =
                    app.queue(i).is_some() || status.load == crate::config::LoadMode::OnDemand;
                let queue_length = waits.then(|| metrics.queued_now());
                fields.insert("queue_length".into(), json!(queue_length));
                // Published by other parts as they come; present (null) from the start so
                // that clients can rely on the keys.
                for key in ["gpu_share", "last_log"] {
                    fields.entry(key).or_insert(Value::Null);
                }
            }
            model
        })
        .collect();
    let status = if snapshot.all_ready() {
        "ready"
    } else if snapshot.stopping {
        "stopping"
    } else {
        "not ready"
    };
    json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "now": now_unix(),
        "started": app.created,
        "models": models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        accepts_html(&h)
    }

    #[test]
    fn browsers_get_the_page_and_other_clients_do_not() {
        assert!(accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(accept("TEXT/HTML"));
        assert!(accept("application/json, text/html;q=0.5"));
        assert!(!accept("*/*"));
        assert!(!accept("application/json"));
        assert!(!accept("text/html;q=0"));
        assert!(!accepts_html(&HeaderMap::new()));
    }

    #[test]
    fn the_page_needs_nothing_from_outside_the_binary() {
        for outside in ["http://", "https://", "//cdn", "src=\"/", "@import"] {
            assert!(!PAGE.contains(outside), "page refers to {outside}");
        }
        assert!(PAGE.contains("fetch(\"status\""));
        assert!(PAGE.contains("name=\"viewport\""));
    }
}
