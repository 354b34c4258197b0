//! The admin API (SPEC §8): operators' calls turned into supervisor commands and reloads.
//! Served on `PORT` only when `MODELMUX_ADMIN_KEY` is set, and only with that key (the API
//! key does not open it); without it every `/admin/` path is 404, as if it did not exist.
//!
//! | call | answer |
//! |---|---|
//! | `GET /admin/models` | 200 `{"models": [...]}` |
//! | `POST /admin/models/{name}/restart`, `/stop`, `/start` | 202 `{"model", "action", "state"}` |
//! | `POST /admin/models/{name}/adapters` `{"name", "path"}` | 201; 409 for a name in use |
//! | `DELETE /admin/models/{name}/adapters/{adapter}` | 204 |
//! | `POST /admin/reload` | 200 `{"started", "stopped", "restarted", "unchanged"}`; 400 |
//!
//! A model name with a `/` (a Hugging Face id) is written `%2F` in the path.
//!
//! The handlers depend on [`Runtime`] only, so that the front wires them in with a few
//! lines (it hands over method, path, `Authorization` and body, and renders the [`Reply`]),
//! and tests can drive them without processes.

pub mod live;
pub mod reload;

use std::future::Future;

use serde_json::{Value, json};

use crate::state::Snapshot;
use crate::supervisor::{Accepted, Command, CommandError, ReloadReport};

/// What the admin handlers need from the rest of modelmux.
pub trait Runtime: Send + Sync + 'static {
    /// The published state.
    fn snapshot(&self) -> Snapshot;
    /// An operator's command for one model.
    fn command(&self, c: Command) -> impl Future<Output = Result<Accepted, CommandError>> + Send;
    /// Loads an adapter at run time.
    fn add_adapter(
        &self,
        model: &str,
        name: &str,
        path: &str,
    ) -> impl Future<Output = Result<(), CommandError>> + Send;
    /// Unloads a run-time adapter.
    fn remove_adapter(
        &self,
        model: &str,
        adapter: &str,
    ) -> impl Future<Output = Result<(), CommandError>> + Send;
    /// Reads the configuration again and applies the difference.
    fn reload(&self) -> impl Future<Output = Result<ReloadReport, CommandError>> + Send;
}

/// An answer: status, JSON body (none for 204), `Allow` for a 405.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The JSON body.
    pub body: Option<Value>,
    /// The methods served at the path, with a 405.
    pub allow: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            allow: None,
        }
    }

    /// An error in OpenAI's shape.
    pub fn error(status: u16, message: &str) -> Reply {
        let kind = match status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            405 => "method_not_allowed",
            409 => "conflict",
            502 => "bad_gateway",
            503 => "service_unavailable",
            _ => "internal_error",
        };
        Reply::json(
            status,
            json!({"error": {"message": message, "type": kind, "code": status}}),
        )
    }

    fn from_error(e: CommandError) -> Reply {
        let status = match &e {
            CommandError::UnknownModel { .. } | CommandError::UnknownAdapter(_) => 404,
            CommandError::Conflict(_) => 409,
            CommandError::Invalid(_) => 400,
            CommandError::Engine(_) => 502,
            CommandError::ShuttingDown => 503,
        };
        Reply::error(status, &e.to_string())
    }

    /// The body as bytes (empty for none).
    pub fn body_bytes(&self) -> Vec<u8> {
        self.body
            .as_ref()
            .map(|b| b.to_string().into_bytes())
            .unwrap_or_default()
    }
}

/// True for the paths the admin API owns (`/admin` and below).
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// The admin API over a runtime.
pub struct Admin<R> {
    key: Option<String>,
    runtime: R,
}

/// `%XX` escapes decoded (a model name with `/` comes as `%2F`).
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl<R: Runtime> Admin<R> {
    /// The admin API with its key (`None`: every path is 404).
    pub fn new(key: Option<String>, runtime: R) -> Self {
        Admin { key, runtime }
    }

    /// The admin key; `None` when the admin API is off.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// Answers one call. `path` is without its query; `authorization` the raw header value.
    pub async fn handle(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&[u8]>,
        body: &[u8],
    ) -> Reply {
        let Some(key) = self.key.as_deref() else {
            return Reply::error(404, &format!("no such path: {path}"));
        };
        if !crate::front::auth::authorized_value(Some(key), authorization) {
            return Reply::error(
                401,
                "missing or wrong admin key (Authorization: Bearer <MODELMUX_ADMIN_KEY>)",
            );
        }
        let raw: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
        let Some(segments) = raw
            .iter()
            .map(|s| decode(s))
            .collect::<Option<Vec<String>>>()
        else {
            return Reply::error(400, "bad percent-escape in the path");
        };
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        let only = |allowed: &'static str, ok: bool| -> Option<Reply> {
            (!ok).then_some(Reply {
                allow: Some(allowed),
                ..Reply::error(
                    405,
                    &format!("{method} is not served at {path}; use {allowed}"),
                )
            })
        };
        match seg.as_slice() {
            ["models"] => only("GET", method == "GET").unwrap_or_else(|| self.models()),
            ["reload"] => match only("POST", method == "POST") {
                Some(r) => r,
                None => match self.runtime.reload().await {
                    Ok(report) => Reply::json(200, json!(report)),
                    Err(e) => Reply::from_error(e),
                },
            },
            ["models", name, action @ ("restart" | "stop" | "start")] => {
                if let Some(r) = only("POST", method == "POST") {
                    return r;
                }
                let name = name.to_string();
                let command = match *action {
                    "restart" => Command::Restart(name),
                    "stop" => Command::Stop(name),
                    _ => Command::Start(name),
                };
                match self.runtime.command(command).await {
                    Ok(a) => Reply::json(
                        202,
                        json!({"model": a.model, "action": action, "state": a.state}),
                    ),
                    Err(e) => Reply::from_error(e),
                }
            }
            ["models", name, "adapters"] => {
                if let Some(r) = only("POST", method == "POST") {
                    return r;
                }
                self.add_adapter(name, body).await
            }
            ["models", name, "adapters", adapter] => {
                if let Some(r) = only("DELETE", method == "DELETE") {
                    return r;
                }
                match self.runtime.remove_adapter(name, adapter).await {
                    Ok(()) => Reply {
                        status: 204,
                        body: None,
                        allow: None,
                    },
                    Err(e) => Reply::from_error(e),
                }
            }
            _ => Reply::error(
                404,
                &format!(
                    "no such admin path: {path}; see GET /admin/models, POST /admin/models/{{name}}/restart|stop|start|adapters, DELETE /admin/models/{{name}}/adapters/{{adapter}}, POST /admin/reload"
                ),
            ),
        }
    }

    async fn add_adapter(&self, model: &str, body: &[u8]) -> Reply {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Reply::error(400, &format!("the body is not JSON: {e}")),
        };
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::trim);
        let (Some(name), Some(path)) = (field("name"), field("path")) else {
            return Reply::error(
                400,
                "the body needs {\"name\": adapter name, \"path\": adapter directory}",
            );
        };
        if name.is_empty() || path.is_empty() {
            return Reply::error(400, "\"name\" and \"path\" must not be empty");
        }
        match self.runtime.add_adapter(model, name, path).await {
            Ok(()) => Reply::json(201, json!({"model": model, "adapter": name, "path": path})),
            Err(e) => Reply::from_error(e),
        }
    }

    /// `GET /admin/models`.
    fn models(&self) -> Reply {
        let s = self.runtime.snapshot();
        let models: Vec<Value> =
            s.live()
                .map(|(_, m)| {
                    let adapters: Vec<Value> =
                        m.adapters
                            .iter()
                            .map(|a| json!({"name": a, "source": "config"}))
                            .chain(m.runtime_adapters.iter().map(
                                |a| json!({"name": a.name, "path": a.path, "source": "runtime"}),
                            ))
                            .collect();
                    json!({
                        "name": m.name,
                        "state": m.state,
                        "since": crate::state::rfc3339(m.since),
                        "gpus": m.gpus,
                        "gpu_share": m.gpu_share,
                        "port": m.port,
                        "pid": m.pid,
                        "restarts": m.restarts,
                        "last_exit": m.last_exit,
                        "load": m.load,
                        "unload": m.unload,
                        "takes_turns": m.takes_turns,
                        "in_flight": m.usage.in_flight(),
                        "idle_seconds": (m.usage.idle_for().as_secs_f64() * 10.0).round() / 10.0,
                        "served_names": m.served_names,
                        "adapters": adapters,
                    })
                })
                .collect();
        Reply::json(200, json!({"models": models}))
    }
}

#[cfg(test)]
mod tests;
