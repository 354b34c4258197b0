//! modelmux's calls to an engine's control endpoints, on loopback only (the front refuses
//! them from outside): vLLM's sleep mode (`POST /sleep?level=1`, `POST /wake_up`, with
//! `VLLM_SERVER_DEV_MODE=1`) and its runtime LoRA API (`POST /v1/load_lora_adapter`,
//! `POST /v1/unload_lora_adapter`, with `VLLM_ALLOW_RUNTIME_LORA_UPDATING`).
//!
//! vLLM answers a loaded or unloaded adapter with 200 and a line of text, and an error with
//! its JSON `{"error": {"message", "type", "code"}}` and the code as status (400 for a name
//! in use or missing fields, 404 for an adapter path it cannot find or an unknown name, 500
//! when the engine fails), so [`CallError`] keeps the engine's status and message.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

/// The level of sleep modelmux uses: the weights go to CPU memory, the KV cache is dropped;
/// waking copies the weights back (seconds), no reload from disk.
pub const SLEEP_LEVEL: u8 = 1;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The engine answered with an error status; its message.
    Refused {
        /// The engine's status code.
        status: u16,
        /// The engine's message (its JSON error's `message`, else the body).
        message: String,
    },
    /// No answer: connection refused, reset, or the time ran out.
    NoAnswer(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused { status, message } => {
                write!(f, "{message} (engine status {status})")
            }
            CallError::NoAnswer(why) => write!(f, "no answer: {why}"),
        }
    }
}

/// A client for control calls; it never goes through a proxy.
#[derive(Clone)]
pub struct EngineCalls {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for EngineCalls {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        EngineCalls {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector),
        }
    }
}

/// The message of an error body: vLLM's `{"error": {"message"}}`, FastAPI's `{"detail"}`,
/// else the text itself (cut).
fn message_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.pointer("/error/message").and_then(|m| m.as_str()) {
            return m.to_string();
        }
        if let Some(d) = v.get("detail") {
            return match d.as_str() {
                Some(s) => s.to_string(),
                None => d.to_string(),
            };
        }
    }
    text.chars().take(500).collect()
}

impl EngineCalls {
    /// `POST http://127.0.0.1:{port}{path}` with a JSON body (or none); the body of a 200.
    async fn post(
        &self,
        port: u16,
        path: &str,
        body: Option<serde_json::Value>,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let mut req = hyper::Request::post(format!("http://127.0.0.1:{port}{path}"));
        if let Some(key) = key {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let payload = match &body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| CallError::NoAnswer(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CallError::NoAnswer(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| CallError::NoAnswer(e.to_string()))?
                .to_bytes();
            if status == 200 {
                Ok(body)
            } else {
                Err(CallError::Refused {
                    status,
                    message: message_of(&body),
                })
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(CallError::NoAnswer(format!(
                "no answer within {:.0} s",
                timeout.as_secs_f64()
            ))),
        }
    }

    /// Puts the engine to sleep (level [`SLEEP_LEVEL`]).
    pub async fn sleep(
        &self,
        port: u16,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let path = format!("/sleep?level={SLEEP_LEVEL}");
        self.post(port, &path, None, key, timeout).await.map(drop)
    }

    /// Wakes the engine.
    pub async fn wake_up(
        &self,
        port: u16,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        self.post(port, "/wake_up", None, key, timeout)
            .await
            .map(drop)
    }

    /// Loads a LoRA adapter.
    pub async fn load_adapter(
        &self,
        port: u16,
        key: Option<&str>,
        name: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let body = json!({"lora_name": name, "lora_path": path});
        self.post(port, "/v1/load_lora_adapter", Some(body), key, timeout)
            .await
            .map(drop)
    }

    /// Unloads a LoRA adapter.
    pub async fn unload_adapter(
        &self,
        port: u16,
        key: Option<&str>,
        name: &str,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let body = json!({"lora_name": name});
        self.post(port, "/v1/unload_lora_adapter", Some(body), key, timeout)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_vllm_and_fastapi_bodies() {
        let vllm = br#"{"error": {"message": "The lora adapter 'x' cannot be found.", "type": "NotFoundError", "param": null, "code": 404}}"#;
        assert_eq!(message_of(vllm), "The lora adapter 'x' cannot be found.");
        assert_eq!(message_of(br#"{"detail": "Not Found"}"#), "Not Found");
        assert_eq!(
            message_of(b"Internal Server Error"),
            "Internal Server Error"
        );
    }
}
