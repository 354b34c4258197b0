//! The `Authorization` an engine gets, on both wires, through the real binary and
//! `mock-vllm` (which checks `--api-key` as vLLM's `AuthenticationMiddleware` does).
//! With `MODELMUX_API_KEY` set, an engine with a key of its own gets that key instead of
//! the client's (the front's); otherwise the client's header passes as it came, and without
//! `MODELMUX_API_KEY` the engine's own key is the client's to send.

mod common;

use std::time::Duration;

use common::Setup;
use common::raw::{Answer, Wire, post};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn ask(port: u16, general: bool, model: &str, authorization: &str) -> Answer {
    let mut w = if general {
        Wire::connect_general(port)
    } else {
        Wire::connect(port)
    };
    let body = format!(r#"{{"model": "{model}"}}"#);
    w.send(&post("/v1/completions", authorization, &body));
    w.answer()
}

/// The header names the engine saw (the mock reports them), lower case.
fn seen_by_engine(a: &Answer) -> Vec<String> {
    a.header("x-mock-header-names")
        .unwrap_or_default()
        .split(',')
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The models, with llama.cpp's key file written into `dir`.
fn models(dir: &std::path::Path) -> Vec<(&'static str, serde_json::Value)> {
    let keys = dir.join("llama-keys");
    std::fs::write(&keys, "# the key file's first key\nllama-k3y\n").unwrap();
    vec![
        // A space inside is fine for vLLM (`Bearer engine k3y`), and so for modelmux.
        (
            "locked",
            json!({"params": "--served-model-name locked --api-key 'engine k3y'"}),
        ),
        ("open", json!({})),
        // TGI's launcher takes its key as `--api-key` too (its router checks it).
        (
            "tgi",
            json!({"engine": "tgi", "engine_cmd": format!("{} --mock-dialect tgi", common::MOCK),
                   "params": "--served-model-name tgi --api-key tgi-k3y"}),
        ),
        // llama.cpp also reads its keys from a file.
        (
            "llama",
            json!({"engine": "llamacpp", "engine_cmd": format!("{} --mock-dialect llamacpp", common::MOCK),
                   "params": format!("--alias llama --api-key-file {}", keys.display())}),
        ),
    ]
}

fn has_authorization(a: &Answer) -> bool {
    seen_by_engine(a).contains(&"authorization".to_string())
}

#[test]
fn with_a_front_key_an_engine_with_its_own_key_gets_that_key() {
    let dir = tempfile::tempdir().unwrap();
    let m = Setup::new(&models(dir.path()))
        .env("MODELMUX_API_KEY", "front-k3y")
        .start();
    m.wait_ready(T);
    let front = "Authorization: Bearer front-k3y\r\n";
    for general in [false, true] {
        let a = ask(m.port, general, "locked", front);
        assert_eq!(a.status, 200, "general wire: {general}: {}", a.text());
        let a = ask(m.port, general, "tgi", front);
        assert_eq!(a.status, 200, "general wire: {general}: {}", a.text());
        let a = ask(m.port, general, "llama", front);
        assert_eq!(a.status, 200, "general wire: {general}: {}", a.text());
        // An engine without a key of its own gets the client's header as it came.
        let a = ask(m.port, general, "open", front);
        assert_eq!(a.status, 200, "general wire: {general}: {}", a.text());
        assert!(has_authorization(&a), "general wire: {general}");
        // The engine's key does not open the front.
        let engine = "Authorization: Bearer engine k3y\r\n";
        let a = ask(m.port, general, "locked", engine);
        assert_eq!(a.status, 401, "general wire: {general}");
    }
}

#[test]
fn without_a_front_key_the_clients_header_reaches_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let m = Setup::new(&models(dir.path())).start();
    m.wait_ready(T);
    for general in [false, true] {
        let engine = "Authorization: Bearer engine k3y\r\n";
        let a = ask(m.port, general, "locked", engine);
        assert_eq!(a.status, 200, "general wire: {general}: {}", a.text());
        let a = ask(m.port, general, "locked", "Authorization: Bearer wrong\r\n");
        assert_eq!(
            a.status, 401,
            "the engine's own check (general wire: {general})"
        );
        assert_eq!(a.text(), r#"{"error":"Unauthorized"}"#);
        let a = ask(
            m.port,
            general,
            "llama",
            "Authorization: Bearer llama-k3y\r\n",
        );
        assert_eq!(a.status, 200, "general wire: {general}: {}", a.text());
        let a = ask(m.port, general, "llama", "Authorization: Bearer wrong\r\n");
        assert_eq!(a.status, 401, "general wire: {general}");
        let a = ask(
            m.port,
            general,
            "open",
            "Authorization: Bearer anything\r\n",
        );
        assert_eq!(a.status, 200, "general wire: {general}");
        assert!(has_authorization(&a), "general wire: {general}");
    }
}

/// The llama model's engine pid while it is ready.
fn ready_pid(port: u16) -> Option<i64> {
    let mut w = Wire::connect(port);
    w.send(b"GET /health HTTP/1.1\r\nHost: f\r\n\r\n");
    let health: serde_json::Value = serde_json::from_slice(&w.answer().body).ok()?;
    let models = health["models"].as_array()?;
    let llama = models.iter().find(|m| m["name"] == "llama")?;
    (llama["state"] == "ready")
        .then(|| llama["pid"].as_i64())
        .flatten()
}

#[test]
fn a_rotated_key_file_is_read_again_when_the_engine_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let m = Setup::new(&models(dir.path()))
        .env("MODELMUX_API_KEY", "front-k3y")
        .env("MODELMUX_RESTART_DELAY", "0.1")
        .start();
    m.wait_ready(T);
    let front = "Authorization: Bearer front-k3y\r\n";
    assert_eq!(ask(m.port, false, "llama", front).status, 200);
    // The operator rotates the key; the engine reads it when it starts again.
    std::fs::write(dir.path().join("llama-keys"), "rotated-k3y\n").unwrap();
    let old = ready_pid(m.port).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(T, "the llama engine ready again", || {
        ready_pid(m.port).is_some_and(|p| p != old)
    });
    for general in [false, true] {
        let a = ask(m.port, general, "llama", front);
        assert_eq!(a.status, 200, "general wire: {general}: {}", a.text());
    }
}
