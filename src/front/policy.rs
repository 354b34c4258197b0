//! Every rule about a request, in one place, for both wires: the wires turn bytes into
//! [`Head`] facts and a body, ask here, and either pass the request on or render the
//! [`Refusal`] they get back.
//!
//! 1. [`on_head`], as soon as the head is in: duplicate headers, the front's own paths,
//!    the API key (checked before a byte of the body is read), engine control paths, the
//!    method, the declared body size.
//! 2. [`on_body`], once the body is in: its `"model"`, `/predict`'s `route`, readiness.
//! 3. [`wait_turn`]: the model's concurrency slot, waiting in its queue if it has one, then
//!    its admission ([`crate::demand`]): a lease on a ready model, after an on-demand load
//!    or wake when it is unloaded or asleep, all within one `MODELMUX_QUEUE_TIMEOUT`
//!    ([`ready_turn`] when no wait is needed; [`crate::front::early`] sends a streaming
//!    request's keepalives while it waits).

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::time::Instant;

use super::headers::EngineAuthorization;
use super::local::{self, Local};
use super::queue::{QueueRefusal, Slot};
use super::refusal::{Refusal, clip};
use super::{App, auth};
use crate::config::{LoadMode, route_path};
use crate::demand::{self, Refused};
use crate::state::{Lookup, Phase, Route, RoutingTable};
use crate::usage::Lease;

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
    /// The admin API (`/admin/...`, with the admin key): read the body, then ask
    /// [`crate::admin`].
    Admin,
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
    no_duplicates(head)?;
    // The admin API has its own key; the API key never opens it. Off, it does not exist.
    if crate::admin::is_admin_path(head.path) {
        return match app.admin.key() {
            None => Err(Refusal::NoSuchPath(head.path.to_string())),
            Some(k) if auth::authorized_value(Some(k), head.authorization.once().copied()) => {
                Ok(Decision::Admin)
            }
            Some(_) => Err(Refusal::AdminUnauthorized),
        };
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

/// Two `Authorization`, `route` or `X-Request-Id` headers: which one counts would be up to
/// each hop, so the request is refused (on both listeners).
pub fn no_duplicates(head: &Head) -> Result<(), Refusal> {
    for (name, seen) in [
        ("Authorization", &head.authorization),
        ("route", &head.route),
        ("X-Request-Id", &head.request_id),
    ] {
        if *seen == Seen::Twice {
            return Err(Refusal::DuplicateHeader(name));
        }
    }
    Ok(())
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
    /// The model's engine (from the live routing table).
    pub route: Route,
    /// The engine path, with the query (origin form).
    pub path: Cow<'a, str>,
    /// The body to send instead of the client's, when the engine wants another `"model"`
    /// for its base model ([`Route::request_model`]); the wires frame its length.
    pub body: Option<Vec<u8>>,
    /// The `Authorization` the engine gets.
    pub authorization: EngineAuthorization,
}

/// Whether `body` is a JSON object (at least by its first byte). serde would take a struct
/// from an array too, by position: only an object has a `"model"` key.
fn is_object(body: &[u8]) -> bool {
    body.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{')
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
    if !is_object(body) {
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
fn engine_body(
    table: &RoutingTable,
    route: &Route,
    asked: Option<&str>,
    body: &[u8],
) -> Option<Vec<u8>> {
    let wanted = route.request_model.as_deref()?;
    let asked = asked?;
    if asked == wanted || table.is_adapter(asked) {
        return None;
    }
    with_model(body, wanted)
}

/// The rules that need the body. `target` is the request target as received (path and
/// query); `model` is set as soon as the model is known, for metrics. Names are looked up
/// in the live routing table (reloads and run-time adapters included).
pub fn on_body<'a>(
    app: &App,
    head: &Head,
    target: &'a str,
    body: &[u8],
    model: &mut Option<usize>,
) -> Result<Target<'a>, Refusal> {
    if !is_object(body) {
        let why = "the body must be a JSON object with a \"model\" field";
        return Err(Refusal::MalformedBody(why.into()));
    }
    let field = serde_json::from_slice::<ModelField>(body)
        .map_err(|e| Refusal::MalformedBody(e.to_string()))?;
    let snapshot = app.state.borrow();
    let table = &*snapshot.table;
    let route = match table.lookup(field.model.as_deref()) {
        Lookup::Found(r) => r,
        Lookup::Unknown => {
            return Err(Refusal::UnknownModel {
                name: clip(field.model.as_deref().unwrap_or_default()),
                available: table.available(),
            });
        }
        Lookup::Missing => {
            return Err(Refusal::MissingModel {
                available: table.available(),
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
            None => route.predict_route.to_string().into(),
        }
    } else {
        target.into()
    };
    // A `route` (or the model's default predict path) must not name what the request line
    // may not: engine control paths are for modelmux alone.
    if is_predict(head.path) && local::is_engine_control(&path) {
        return Err(Refusal::ControlPath(path.into_owned()));
    }
    if snapshot.stopping {
        return Err(Refusal::ShuttingDown);
    }
    let status = &snapshot.models[route.index];
    readiness(status.load, status.state, &route.model, || {
        status.last_exit.clone()
    })?;
    let authorization = match (&app.api_key, &route.engine_authorization) {
        (Some(_), Some(own)) => EngineAuthorization::Replaced(own.clone()),
        _ => EngineAuthorization::Client,
    };
    Ok(Target {
        route: route.clone(),
        path,
        body: engine_body(table, route, field.model.as_deref(), body),
        authorization,
    })
}

/// Whether a model in `state` takes a request: a ready one at once; an on-demand one in
/// any state a request can load it from (`unloaded`, `sleeping`, loading or waking): the
/// request waits its turn ([`wait_turn`]). Otherwise the typed refusal.
fn readiness(
    load: LoadMode,
    state: Phase,
    model: &str,
    last_exit: impl FnOnce() -> Option<String>,
) -> Result<(), Refusal> {
    match state {
        Phase::Ready => Ok(()),
        Phase::Failed => Err(Refusal::Failed {
            model: model.to_string(),
            why: last_exit().unwrap_or_else(|| "no reason recorded".into()),
        }),
        Phase::Stopped => Err(Refusal::Stopped {
            model: model.to_string(),
        }),
        _ if load == LoadMode::OnDemand => Ok(()),
        state => Err(Refusal::NotReady {
            model: model.to_string(),
            state: state.as_str(),
        }),
    }
}

/// An admitted request's turn: its concurrency slot (when the model has a limit) and its
/// lease on the model (an unload or stop waits for it). Both are held until the response
/// is over.
#[derive(Debug)]
pub struct Turn {
    /// The model's concurrency slot.
    pub slot: Option<Slot>,
    /// The request's lease on its model.
    pub lease: Lease,
}

/// The request's turn on model `model`: a concurrency slot when the model has a limit (at
/// once if one is free, else after waiting in its FIFO queue), then its admission: at once
/// for a ready model; for an on-demand model that is unloaded or asleep, after asking for
/// the load or wake and waiting for it. One deadline, `MODELMUX_QUEUE_TIMEOUT`, bounds the
/// whole wait: no slot in time is a 429, no load in time a 503 (SPEC §5, §9).
pub async fn wait_turn(app: &App, model: usize) -> Result<Turn, Refusal> {
    // The common case, a ready model with a free slot, takes no clock and no wait.
    let mut deadline = None;
    let slot = match app.queue(model) {
        None => None,
        Some(queue) => match queue.try_acquire() {
            Some(slot) => Some(slot),
            None => {
                let at = *deadline.insert(Instant::now() + app.limits.queue_timeout);
                let mut state = app.state.clone();
                let waited = tokio::select! {
                    waited = queue.acquire(at) => waited,
                    _ = state.wait_for(|s| s.stopping) => return Err(Refusal::ShuttingDown),
                };
                match waited {
                    Ok(slot) => Some(slot),
                    Err(QueueRefusal::Full) => {
                        return Err(Refusal::QueueFull {
                            model: app.model_name(model),
                        });
                    }
                    Err(QueueRefusal::TimedOut) => {
                        return Err(Refusal::QueueTimeout {
                            model: app.model_name(model),
                        });
                    }
                }
            }
        },
    };
    let lease = match ready_lease(app, model) {
        Some(lease) => lease,
        None => {
            let at = deadline.unwrap_or_else(|| Instant::now() + app.limits.queue_timeout);
            let _loading = LoadWait::new(&app.metrics.model(Some(model)).loading);
            demand::admit(&app.state, &app.control, model, at)
                .await
                .map_err(|r| refused(app, model, r))?
        }
    };
    Ok(Turn { slot, lease })
}

/// The turn at once, without waiting, when the model is ready and has a free slot (the
/// common case); `None` when the request must wait ([`wait_turn`]).
pub fn ready_turn(app: &App, model: usize) -> Option<Turn> {
    let slot = match app.queue(model) {
        None => None,
        Some(queue) => Some(queue.try_acquire()?),
    };
    let lease = ready_lease(app, model)?;
    Some(Turn { slot, lease })
}

/// Counts a request waiting for its model's load or wake (`modelmux_queue_length` counts
/// these with the requests waiting for a slot) for as long as it waits.
struct LoadWait<'a>(&'a AtomicUsize);

impl<'a> LoadWait<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Relaxed);
        LoadWait(count)
    }
}

impl Drop for LoadWait<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A lease at once when the model is ready and modelmux is not stopping. The lease is taken
/// while the snapshot is read, so a drain that comes after sees it.
fn ready_lease(app: &App, model: usize) -> Option<Lease> {
    let snapshot = app.state.borrow();
    let m = snapshot.models.get(model)?;
    if snapshot.stopping || m.retired || m.state != Phase::Ready {
        return None;
    }
    m.usage.lease()
}

/// The refusal for a request the admission turned away.
fn refused(app: &App, model: usize, r: Refused) -> Refusal {
    let name = app.model_name(model);
    match r {
        Refused::ShuttingDown => Refusal::ShuttingDown,
        Refused::Removed => Refusal::Removed { model: name },
        Refused::Failed(why) => Refusal::Failed { model: name, why },
        Refused::Stopped => Refusal::Stopped { model: name },
        Refused::NotReady(state) => Refusal::NotReady {
            model: name,
            state: state.as_str(),
        },
        Refused::TimedOut(state) => Refusal::LoadTimeout {
            model: name,
            state: state.as_str(),
        },
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
