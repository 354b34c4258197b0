//! Helpers for the run-time control tests (admin API, reload, on-demand models).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use super::{Answer, HttpClient, Modelmux, request, wait_until};

/// The admin key the tests use.
pub const ADMIN_KEY: &str = "admin-secret";

/// A blocking GET returning status and body (a fresh connection each time).
pub fn get_blocking(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `/health`'s JSON.
pub fn health(m: &Modelmux) -> Value {
    let (_, body) = get_blocking(m.port, "/health");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// One model's entry in `/health`.
pub fn model(m: &Modelmux, name: &str) -> Value {
    health(m)["models"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until a model is in `state`.
pub fn wait_state(m: &Modelmux, name: &str, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(timeout, &format!("{name} {state}"), || {
        last = model(m, name);
        last["state"] == state
    });
    last
}

/// An admin call with the admin key.
pub async fn admin(c: &HttpClient, m: &Modelmux, method: &str, path: &str, body: &str) -> Answer {
    let auth = format!("Bearer {ADMIN_KEY}");
    request(
        c,
        method,
        &m.url(path),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// A completion request for `model`.
pub async fn complete(c: &HttpClient, m: &Modelmux, model: &str) -> Answer {
    super::post(
        c,
        &m.url("/v1/completions"),
        &serde_json::json!({"model": model, "prompt": "hi"}).to_string(),
    )
    .await
}

/// The value of one sample in `/metrics` (its whole line up to the value), if present.
pub fn metric(m: &Modelmux, series: &str) -> Option<f64> {
    let (_, body) = get_blocking(m.port, "/metrics");
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// An adapter directory vLLM (and the mock) accepts.
pub fn adapter_dir(root: &std::path::Path, name: &str) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"r": 8, "peft_type": "LORA"}"#,
    )
    .unwrap();
    dir.to_string_lossy().into_owned()
}

/// Polls `cond` every 20 ms (without blocking the runtime) until it holds or `timeout`
/// passes.
pub async fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_state`] without blocking the runtime.
pub async fn state_becomes(m: &Modelmux, name: &str, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    wait_for(timeout, &format!("{name} {state}"), || {
        last = model(m, name);
        last["state"] == state
    })
    .await;
    last
}
