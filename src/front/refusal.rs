//! Why the front answers a request itself instead of passing it to an engine, as one type,
//! rendered the same way by both wires: as a hyper response ([`Refusal::to_response`]) and
//! as raw HTTP/1.1 bytes ([`Refusal::write`]) for the pass-through wire.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::errors::error_body;
use crate::front::wire::push_decimal;

/// Largest body read and thrown away after a refusal so that the connection can go on;
/// past it the connection closes.
pub const DISCARD_LIMIT: u64 = 1024 * 1024;

/// Longest model name echoed back in a message; longer names are cut.
pub const MAX_ECHO: usize = 256;

/// Cuts `text` to at most [`MAX_ECHO`] bytes (on a character boundary), marking the cut.
pub fn clip(text: &str) -> String {
    if text.len() <= MAX_ECHO {
        return text.to_string();
    }
    let mut end = MAX_ECHO;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A request the front refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Two `Authorization`, `route` or `X-Request-Id` headers: which one counts is
    /// ambiguous, so neither does (400).
    DuplicateHeader(&'static str),
    /// The body is not JSON, or not readable (400).
    MalformedBody(String),
    /// No `"model"` while several models are served (400).
    MissingModel {
        /// Every name, for the message.
        available: String,
    },
    /// The `route` header of `/predict` is not a plain path (400).
    BadRoute,
    /// Missing or wrong API key (401).
    Unauthorized,
    /// A path that is not served for this method (404).
    NotServed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// Anything but health, liveness and metrics on a separate `HEALTH_CHECK_PORT` (404).
    HealthListenerOnly {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// An engine's control path (`/sleep`, `/collective_rpc`, ...): never passed on (404).
    ControlPath(String),
    /// An `/admin/` path while the admin API is off (`MODELMUX_ADMIN_KEY` unset): as if it
    /// did not exist (404).
    NoSuchPath(String),
    /// An `/admin/` call without the admin key (the API key does not open it) (401).
    AdminUnauthorized,
    /// A reload removed the model while the request waited (404).
    Removed {
        /// The model's name.
        model: String,
    },
    /// No model of that name (404).
    UnknownModel {
        /// The name asked for (cut to [`MAX_ECHO`] bytes).
        name: String,
        /// Every name, for the message.
        available: String,
    },
    /// The front serves this path for other methods only (405).
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The methods that are served, for `Allow`.
        allow: &'static str,
    },
    /// The client paused too long while sending its body (408).
    BodyTimeout,
    /// The body is larger than `MODELMUX_MAX_BODY_BYTES` (413).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The model's queue is full (429).
    QueueFull {
        /// The model's name.
        model: String,
    },
    /// The request waited `MODELMUX_QUEUE_TIMEOUT` for a slot (429).
    QueueTimeout {
        /// The model's name.
        model: String,
    },
    /// The engine failed at the connection level before it answered (502).
    BadGateway {
        /// The model's name.
        model: String,
        /// What went wrong.
        why: String,
    },
    /// The model is not ready yet (503, `Retry-After: 5`).
    NotReady {
        /// The model's name.
        model: String,
        /// Its state.
        state: &'static str,
    },
    /// The model failed and is not served (503, `Retry-After: 60`).
    Failed {
        /// The model's name.
        model: String,
        /// Why it failed.
        why: String,
    },
    /// An operator stopped the model (503, `Retry-After: 30`).
    Stopped {
        /// The model's name.
        model: String,
    },
    /// An on-demand model did not finish loading within `MODELMUX_QUEUE_TIMEOUT` (503,
    /// `Retry-After: 5`).
    LoadTimeout {
        /// The model's name.
        model: String,
        /// Its state when the wait ended.
        state: &'static str,
    },
    /// modelmux is shutting down (503, `Retry-After: 5`).
    ShuttingDown,
    /// `MODELMUX_MAX_CONNECTIONS` connections are open (503, `Retry-After: 1`).
    TooManyConnections,
}

impl Refusal {
    /// The status code.
    pub fn status(&self) -> u16 {
        use Refusal::*;
        match self {
            DuplicateHeader(_) | MalformedBody(_) | MissingModel { .. } | BadRoute => 400,
            Unauthorized | AdminUnauthorized => 401,
            NotServed { .. }
            | HealthListenerOnly { .. }
            | ControlPath(_)
            | NoSuchPath(_)
            | Removed { .. }
            | UnknownModel { .. } => 404,
            MethodNotAllowed { .. } => 405,
            BodyTimeout => 408,
            TooLarge { .. } => 413,
            QueueFull { .. } | QueueTimeout { .. } => 429,
            BadGateway { .. } => 502,
            NotReady { .. }
            | Failed { .. }
            | Stopped { .. }
            | LoadTimeout { .. }
            | ShuttingDown
            | TooManyConnections => 503,
        }
    }

    /// The error's `type`.
    pub fn kind(&self) -> &'static str {
        super::errors::kind_of(self.status())
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        use Refusal::*;
        match self {
            DuplicateHeader(name) => {
                format!("the request has more than one {name} header; send it once")
            }
            MalformedBody(why) => format!("malformed JSON body: {why}"),
            MissingModel { available } => {
                format!("the body has no \"model\"; available: {available}")
            }
            BadRoute => "the route header must be a plain path such as /v1/chat/completions".into(),
            Unauthorized => {
                "missing or wrong API key: send Authorization: Bearer <MODELMUX_API_KEY>".into()
            }
            NotServed { method, path } => format!(
                "{} {} is not served; inference routes take POST",
                clip(method),
                clip(path)
            ),
            HealthListenerOnly { method, path } => format!(
                "{} {} is not served on HEALTH_CHECK_PORT, which answers GET /health, /ping, \
                 /livez and /metrics only; send requests to PORT",
                clip(method),
                clip(path)
            ),
            ControlPath(path) => format!(
                "{} is an engine control path; modelmux does not pass it on",
                clip(path)
            ),
            NoSuchPath(path) => format!("no such path: {}", clip(path)),
            AdminUnauthorized => {
                "missing or wrong admin key (Authorization: Bearer <MODELMUX_ADMIN_KEY>)".into()
            }
            Removed { model } => format!("model {model} was removed by a reload"),
            Stopped { model } => format!(
                "model {model} is stopped by an operator; POST /admin/models/{model}/start starts it"
            ),
            LoadTimeout { model, state } => format!(
                "model {model} is loading on demand ({state}) and was not ready within MODELMUX_QUEUE_TIMEOUT; retry shortly"
            ),
            UnknownModel { name, available } => {
                format!("model {name:?} is not served here; available: {available}")
            }
            MethodNotAllowed {
                method,
                path,
                allow,
            } => format!(
                "{} {} is not allowed; use {allow}",
                clip(method),
                clip(path)
            ),
            BodyTimeout => "the request body did not arrive in time (MODELMUX_BODY_TIMEOUT)".into(),
            TooLarge { limit } => {
                format!("request body is larger than MODELMUX_MAX_BODY_BYTES ({limit} bytes)")
            }
            QueueFull { model } => format!(
                "model {model} is at its max_concurrency and its queue is full; retry later"
            ),
            QueueTimeout { model } => {
                format!("model {model} had no free slot within MODELMUX_QUEUE_TIMEOUT; retry later")
            }
            BadGateway { model, why } => format!("engine of model {model} did not answer: {why}"),
            NotReady { model, state } => format!("model {model} is {state}; retry shortly"),
            Failed { model, why } => format!("model {model} failed and is not served ({why})"),
            ShuttingDown => "modelmux is shutting down".into(),
            TooManyConnections => {
                "too many connections (MODELMUX_MAX_CONNECTIONS); retry shortly".into()
            }
        }
    }

    /// Seconds for `Retry-After`, when the client should come back.
    pub fn retry_after(&self) -> Option<u32> {
        use Refusal::*;
        match self {
            QueueFull { .. } | QueueTimeout { .. } | TooManyConnections => Some(1),
            NotReady { .. } | LoadTimeout { .. } | ShuttingDown => Some(5),
            Stopped { .. } => Some(30),
            Failed { .. } => Some(60),
            _ => None,
        }
    }

    /// `Allow` for a 405.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            Refusal::MethodNotAllowed { allow, .. } => Some(allow),
            _ => None,
        }
    }

    /// True when the connection closes after this answer: the request's body is not read
    /// (a client without the key, one that stalled, one over the connection limit).
    pub fn closes(&self) -> bool {
        matches!(
            self,
            Refusal::Unauthorized | Refusal::BodyTimeout | Refusal::TooManyConnections
        )
    }

    fn body(&self) -> String {
        error_body(self.status(), self.kind(), &self.message())
    }

    /// The refusal as a response with `X-Request-Id` (hyper's wire).
    pub fn to_response(&self, request_id: &HeaderValue) -> Response {
        let status = StatusCode::from_u16(self.status()).expect("valid status");
        let mut resp = Response::builder()
            .status(status)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header("x-request-id", request_id.clone());
        if let Some(secs) = self.retry_after() {
            resp = resp.header(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow() {
            resp = resp.header(header::ALLOW, HeaderValue::from_static(allow));
        }
        if matches!(self, Refusal::Unauthorized | Refusal::AdminUnauthorized) {
            resp = resp.header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.closes() {
            resp = resp.header(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.body(Body::from(self.body())).expect("valid response")
    }

    /// The refusal as HTTP/1.1 bytes (the pass-through wire), appended to `out`; `close`
    /// adds `Connection: close` (also added when [`Refusal::closes`]). Returns the body's
    /// length.
    pub fn write(&self, out: &mut Vec<u8>, request_id: &[u8], close: bool) -> usize {
        let status = self.status();
        let body = self.body();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, status as usize);
        out.push(b' ');
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        push_decimal(out, body.len());
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(request_id);
        if let Some(secs) = self.retry_after() {
            out.extend_from_slice(b"\r\nretry-after: ");
            push_decimal(out, secs as usize);
        }
        if let Some(allow) = self.allow() {
            out.extend_from_slice(b"\r\nallow: ");
            out.extend_from_slice(allow.as_bytes());
        }
        if matches!(self, Refusal::Unauthorized | Refusal::AdminUnauthorized) {
            out.extend_from_slice(b"\r\nwww-authenticate: Bearer");
        }
        if close || self.closes() {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body.as_bytes());
        body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Both renderings carry the same status, headers and body.
    #[tokio::test]
    async fn raw_and_hyper_renderings_agree() {
        let cases = [
            Refusal::Unauthorized,
            Refusal::QueueFull { model: "m".into() },
            Refusal::MethodNotAllowed {
                method: "PUT".into(),
                path: "/health".into(),
                allow: "GET, HEAD",
            },
            Refusal::NotReady {
                model: "m".into(),
                state: "starting",
            },
            Refusal::TooLarge { limit: 10 },
        ];
        for r in cases {
            let id = HeaderValue::from_static("rid-1");
            let resp = r.to_response(&id);
            let mut raw = Vec::new();
            let len = r.write(&mut raw, b"rid-1", false);
            let text = String::from_utf8(raw).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert_eq!(body.len(), len);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {} ", r.status())),
                "{head}"
            );
            let (parts, hyper_body) = resp.into_parts();
            assert_eq!(parts.status.as_u16(), r.status());
            for (name, value) in &parts.headers {
                let line = format!("{}: {}", name, value.to_str().unwrap());
                assert!(head.contains(&line), "{line} missing from {head}");
            }
            let hyper_body = hyper_body.collect().await.unwrap().to_bytes();
            assert_eq!(hyper_body, body.as_bytes());
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"]["code"], r.status());
            assert_eq!(v["error"]["type"], r.kind());
        }
    }

    #[test]
    fn rate_limits_say_so_and_long_names_are_cut() {
        let r = Refusal::QueueTimeout { model: "m".into() };
        assert_eq!(
            (r.status(), r.kind(), r.retry_after()),
            (429, "rate_limit_exceeded", Some(1))
        );
        let long = "é".repeat(1000);
        let cut = clip(&long);
        assert!(cut.len() <= MAX_ECHO + "…".len(), "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
