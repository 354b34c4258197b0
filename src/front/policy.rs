//! Every rule about a request, in one place, for both wires: the wires turn bytes into
//! [`Head`] facts and a body, ask here, and either pass the request on or render the
//! [`Refusal`] they get back.
//!
//! 1. [`on_head`], as soon as the head is in: duplicate headers, the front's own paths,
//!    the API key (checked before a byte of the body is read), engine control paths, the
//!    method, the declared body size.
//! 2. [`on_body`], once the body is in: its `"model"`, `/predict`'s `route`, readiness.
//! 3. [`wait_turn`]: the model's concurrency slot, waiting in its queue if it has one.

use std::borrow::Cow;

use tokio::time::Instant;

use super::local::{self, Local};
use super::queue::{QueueRefusal, Slot};
use super::refusal::{Refusal, clip};
use super::{App, auth};
use crate::config::route_path;
use crate::state::{Lookup, Phase, Route};

/// How many times a header appeared: more than once is ambiguous for the headers that
/// decide where a request goes or who sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Seen<T> {
    /// Not at all.
    #[default]
    Absent,
    /// Once, with this value.
    Once(T),
    /// Twice or more.
    Twice,
}

impl<T> Seen<T> {
    /// Counts one more occurrence.
    pub fn add(&mut self, value: T) {
        *self = match self {
            Seen::Absent => Seen::Once(value),
            _ => Seen::Twice,
        };
    }

    /// The value when the header appeared exactly once.
    pub fn once(&self) -> Option<&T> {
        match self {
            Seen::Once(v) => Some(v),
            _ => None,
        }
    }
}

/// What the rules need to know about a request's head.
#[derive(Debug, Default)]
pub struct Head<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// `Authorization`.
    pub authorization: Seen<&'a [u8]>,
    /// OCI's `route`.
    pub route: Seen<&'a [u8]>,
    /// `X-Request-Id`.
    pub request_id: Seen<&'a [u8]>,
    /// `Content-Length`, when given.
    pub content_length: Option<u64>,
    /// An `Accept` header lists `text/html` (a browser: `/` is the status page).
    pub browser: bool,
}

/// What to do once the head is in.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The front answers it itself.
    Local(Local),
    /// Read the body, then ask [`on_body`].
    Proxy,
}

/// Paths where the engine path comes from the `route` header (OCI, SageMaker).
fn is_predict(path: &str) -> bool {
    matches!(
        path,
        "/predict" | "/predictWithResponseStream" | "/invocations"
    )
}

/// The rules that need only the head.
pub fn on_head(app: &App, head: &Head) -> Result<Decision, Refusal> {
    for (name, seen) in [
        ("Authorization", &head.authorization),
        ("route", &head.route),
        ("X-Request-Id", &head.request_id),
    ] {
        if *seen == Seen::Twice {
            return Err(Refusal::DuplicateHeader(name));
        }
    }
    let key = app.api_key.as_deref();
    let authorized = || auth::authorized_value(key, head.authorization.once().copied());
    let read = matches!(head.method, "GET" | "HEAD");
    if let Some(local) = local::classify(head.path, &app.health_endpoint, head.browser)
        && (read || !local.read_only())
    {
        return match head.method {
            "GET" | "HEAD" if local.needs_key() && !authorized() => Err(Refusal::Unauthorized),
            "GET" | "HEAD" => Ok(Decision::Local(local)),
            method => Err(Refusal::MethodNotAllowed {
                method: method.to_string(),
                path: head.path.to_string(),
                allow: "GET, HEAD",
            }),
        };
    }
    if !authorized() {
        return Err(Refusal::Unauthorized);
    }
    if local::is_engine_control(head.path) {
        return Err(Refusal::ControlPath(head.path.to_string()));
    }
    match head.method {
        "POST" => {}
        "GET" | "HEAD" => {
            return Err(Refusal::NotServed {
                method: head.method.to_string(),
                path: head.path.to_string(),
            });
        }
        method => {
            return Err(Refusal::MethodNotAllowed {
                method: method.to_string(),
                path: head.path.to_string(),
                allow: "POST",
            });
        }
    }
    if head.content_length.is_some_and(|n| n > app.max_body as u64) {
        return Err(Refusal::TooLarge {
            limit: app.max_body,
        });
    }
    Ok(Decision::Proxy)
}

/// Only `"model"` is read from the body; serde skips the rest without building a tree.
#[derive(serde::Deserialize)]
struct ModelField<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// Where an admitted request goes.
#[derive(Debug)]
pub struct Target<'a> {
    /// The model's engine.
    pub route: &'a Route,
    /// The engine path, with the query (origin form).
    pub path: Cow<'a, str>,
    /// The body to send instead of the client's, when the engine wants another `"model"`
    /// for its base model ([`Route::request_model`]); the wires frame its length.
    pub body: Option<Vec<u8>>,
}

/// `"model"`'s value as it is written in the body, to replace it in place.
#[derive(serde::Deserialize)]
struct ModelSpan<'a> {
    #[serde(borrow)]
    model: &'a serde_json::value::RawValue,
}

/// `body` with its top-level `"model"` value replaced by `model` (every other byte kept), or
/// `None` when it has no such value.
pub fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    // serde would take a struct from an array too: only an object has a "model" key.
    if body.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let span = serde_json::from_slice::<ModelSpan>(body).ok()?;
    let raw = span.model.get().as_bytes();
    // The raw value borrows from `body`: its place there is a pointer difference.
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + raw.len();
    let value = serde_json::to_string(model).ok()?;
    let mut out = Vec::with_capacity(body.len() - raw.len() + value.len());
    out.extend_from_slice(body.get(..start)?);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(body.get(end..)?);
    Some(out)
}

/// The body the engine gets: the client's, unless the engine wants another `"model"` for
/// its base model (TGI: `"tgi"`; any other name is an adapter id there). Adapter names and
/// a body without `"model"` go as they are.
fn engine_body(app: &App, route: &Route, asked: Option<&str>, body: &[u8]) -> Option<Vec<u8>> {
    let wanted = route.request_model.as_deref()?;
    let asked = asked?;
    if asked == wanted || app.table.is_adapter(asked) {
        return None;
    }
    with_model(body, wanted)
}

/// The rules that need the body. `target` is the request target as received (path and
/// query); `model` is set as soon as the model is known, for metrics.
pub fn on_body<'a>(
    app: &'a App,
    head: &Head,
    target: &'a str,
    body: &[u8],
    model: &mut Option<usize>,
) -> Result<Target<'a>, Refusal> {
    let field = serde_json::from_slice::<ModelField>(body)
        .map_err(|e| Refusal::MalformedBody(e.to_string()))?;
    let route = match app.table.lookup(field.model.as_deref()) {
        Lookup::Found(r) => r,
        Lookup::Unknown => {
            return Err(Refusal::UnknownModel {
                name: clip(field.model.as_deref().unwrap_or_default()),
                available: app.table.available(),
            });
        }
        Lookup::Missing => {
            return Err(Refusal::MissingModel {
                available: app.table.available(),
            });
        }
    };
    *model = Some(route.index);
    let path: Cow<str> = if is_predict(head.path) {
        match head.route.once() {
            Some(value) => std::str::from_utf8(value)
                .ok()
                .and_then(route_path)
                .ok_or(Refusal::BadRoute)?
                .into(),
            None => (*route.predict_route).into(),
        }
    } else {
        target.into()
    };
    let snapshot = app.state.borrow();
    if snapshot.stopping {
        return Err(Refusal::ShuttingDown);
    }
    let status = &snapshot.models[route.index];
    match status.state {
        Phase::Ready => Ok(Target {
            route,
            path,
            body: engine_body(app, route, field.model.as_deref(), body),
        }),
        Phase::Failed => Err(Refusal::Failed {
            model: route.model.to_string(),
            why: status
                .last_exit
                .clone()
                .unwrap_or_else(|| "no reason recorded".into()),
        }),
        state => Err(Refusal::NotReady {
            model: route.model.to_string(),
            state: state.as_str(),
        }),
    }
}

/// A concurrency slot of the model, when it has a limit: at once if one is free, else
/// after waiting in its queue up to `MODELMUX_QUEUE_TIMEOUT`. A request that waited is
/// checked again: its model may have stopped being ready, or modelmux may be stopping.
pub async fn wait_turn(app: &App, model: usize) -> Result<Option<Slot>, Refusal> {
    let Some(queue) = &app.queues[model] else {
        return Ok(None);
    };
    if let Some(slot) = queue.try_acquire() {
        return Ok(Some(slot));
    }
    let deadline = Instant::now() + app.limits.queue_timeout;
    let name = || app.table.models[model].model.to_string();
    let mut state = app.state.clone();
    let waited = tokio::select! {
        waited = queue.acquire(deadline) => waited,
        _ = state.wait_for(|s| s.stopping) => return Err(Refusal::ShuttingDown),
    };
    let slot = match waited {
        Ok(slot) => slot,
        Err(QueueRefusal::Full) => return Err(Refusal::QueueFull { model: name() }),
        Err(QueueRefusal::TimedOut) => return Err(Refusal::QueueTimeout { model: name() }),
    };
    let snapshot = app.state.borrow();
    let status = &snapshot.models[model];
    match (snapshot.stopping, status.state) {
        (true, _) => Err(Refusal::ShuttingDown),
        (false, Phase::Ready) => Ok(Some(slot)),
        (false, state) => Err(Refusal::NotReady {
            model: name(),
            state: state.as_str(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::with_model;

    fn rewritten(body: &str) -> Option<String> {
        with_model(body.as_bytes(), "tgi").map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn only_the_model_value_changes() {
        assert_eq!(
            rewritten(r#"{"model": "t", "prompt": "model: t", "n": 1}"#).as_deref(),
            Some(r#"{"model": "tgi", "prompt": "model: t", "n": 1}"#)
        );
        // Escapes in the name, nesting before it, an escaped key: still the top-level value.
        assert_eq!(
            rewritten(r#"{"messages":[{"model":"x"}],"mod\u0065l":"a\"b"}"#).as_deref(),
            Some(r#"{"messages":[{"model":"x"}],"mod\u0065l":"tgi"}"#)
        );
        assert_eq!(rewritten(r#"{"prompt": "x"}"#), None);
        assert_eq!(rewritten(r#"["t"]"#), None);
        assert_eq!(
            with_model(br#"{"model":"t"}"#, "a\"b").as_deref(),
            Some(&br#"{"model":"a\"b"}"#[..])
        );
    }
}
