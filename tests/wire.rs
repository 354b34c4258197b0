//! HTTP/1.1 as clients put it on the wire, through the real binary and real `mock-vllm`
//! engines: pipelining, requests in pieces, per-hop headers, chunked streams passed through,
//! and the unusual requests that the pass-through path hands to the general one.

mod common;

use std::time::Duration;

use common::Setup;
use common::raw::{Wire, post};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn two_models() -> common::Modelmux {
    let m = Setup::new(&[("alpha", json!({})), ("beta", json!({}))]).start();
    m.wait_ready(T);
    m
}

#[test]
fn pipelined_requests_are_answered_in_order_even_across_a_hand_over() {
    let m = two_models();
    let mut w = Wire::connect(m.port);
    let mut batch = post(
        "/v1/completions",
        "X-Request-Id: first\r\n",
        r#"{"model": "alpha"}"#,
    );
    batch.extend(post("/v1/completions", "", r#"{"model": "beta"}"#));
    // A health check in the middle moves the connection to the general path.
    batch.extend(b"GET /health HTTP/1.1\r\nHost: front\r\n\r\n");
    batch.extend(post("/v1/chat/completions", "", r#"{"model": "alpha"}"#));
    w.send(&batch);

    let a = w.answer();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-mock-served-by"), Some("alpha"));
    assert_eq!(a.header("x-request-id"), Some("first"));
    assert_eq!(a.header("x-mock-request-id"), Some("first"));
    let b = w.answer();
    assert_eq!(b.header("x-mock-served-by"), Some("beta"));
    let made_up = b.header("x-request-id").unwrap();
    assert!(
        made_up.starts_with("mmx-") && made_up.len() == 25,
        "{made_up}"
    );
    assert_eq!(b.header("x-mock-request-id"), Some(made_up));
    let h = w.answer();
    assert_eq!(h.status, 200);
    assert!(h.text().contains("\"ready\""), "{}", h.text());
    let c = w.answer();
    assert_eq!(c.header("x-mock-served-by"), Some("alpha"));
    assert_eq!(c.header("x-mock-path"), Some("/v1/chat/completions"));
}

#[test]
fn requests_in_pieces_and_streams_keep_the_connection_in_step() {
    let m = two_models();
    let mut w = Wire::connect(m.port);
    // The head byte by byte, then the body in two parts.
    let req = post("/v1/completions", "", r#"{"model": "beta", "prompt": "x"}"#);
    let head_end = req.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4;
    for b in &req[..head_end] {
        w.send(&[*b]);
    }
    std::thread::sleep(Duration::from_millis(20));
    w.send(&req[head_end..head_end + 5]);
    std::thread::sleep(Duration::from_millis(20));
    w.send(&req[head_end + 5..]);
    let a = w.answer();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-mock-served-by"), Some("beta"));

    // A chunked event stream passes through; the next request on the connection works.
    let body = r#"{"model": "alpha", "stream": true, "mock_chunks": 40}"#;
    w.send(&post("/v1/completions", "", body));
    let s = w.answer();
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    let text = s.text();
    assert!(
        text.contains("tok39") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    w.send(&post("/v1/completions", "", r#"{"model": "alpha"}"#));
    assert_eq!(w.answer().status, 200);
}

#[test]
fn large_bodies_pass_whole_and_the_connection_goes_on() {
    let m = two_models();
    let mut w = Wire::connect(m.port);
    let prompt = "x".repeat(2 * 1024 * 1024);
    let body = format!(r#"{{"model": "beta", "prompt": "{prompt}"}}"#);
    w.send(&post("/v1/completions", "", &body));
    let a = w.answer();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("x-mock-body-bytes"),
        Some(body.len().to_string().as_str())
    );
    w.send(&post("/v1/completions", "", r#"{"model": "alpha"}"#));
    let b = w.answer();
    assert_eq!(b.header("x-mock-served-by"), Some("alpha"));
    assert_eq!(b.header("x-mock-body-bytes"), Some("18"));
}

#[test]
fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let mut m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_SHUTDOWN_GRACE", "30")
        .start();
    m.wait_ready(T);
    let mut idle = Wire::connect(m.port);
    idle.send(&post("/v1/completions", "", r#"{"model": "alpha"}"#));
    assert_eq!(idle.answer().status, 200);
    let mut handed_over = Wire::connect(m.port);
    handed_over.send(b"GET /livez HTTP/1.1\r\nHost: f\r\n\r\n");
    assert_eq!(handed_over.answer().status, 200);

    let asked = std::time::Instant::now();
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.wait_exit(T), Some(0));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert!(idle.closed() && handed_over.closed());
}

#[test]
fn per_hop_headers_stop_at_the_front() {
    let m = two_models();
    let mut w = Wire::connect(m.port);
    let hop = "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic x\r\n\
               TE: trailers\r\nX-Custom: kept\r\n";
    w.send(&post("/v1/completions", hop, r#"{"model": "alpha"}"#));
    let a = w.answer();
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.header("x-mock-header-names").unwrap().to_string();
    let seen: Vec<&str> = seen.split(',').collect();
    for gone in ["keep-alive", "proxy-authorization", "te", "connection"] {
        assert!(!seen.contains(&gone), "{gone} reached the engine: {seen:?}");
    }
    for kept in ["x-custom", "content-type", "x-request-id"] {
        assert!(
            seen.contains(&kept),
            "{kept} did not reach the engine: {seen:?}"
        );
    }
    let host = a.header("x-mock-host").unwrap();
    assert!(host.starts_with("127.0.0.1:"), "{host}");

    // Connection: close is honoured: the answer says so and the connection ends.
    w.send(&post(
        "/v1/completions",
        "Connection: close\r\n",
        r#"{"model": "alpha"}"#,
    ));
    let a = w.answer();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(w.closed(), "the connection stayed open");
}

#[test]
fn unusual_requests_are_served_by_the_general_path() {
    let m = two_models();

    // A chunked request body.
    let mut w = Wire::connect(m.port);
    let body = r#"{"model": "beta"}"#;
    w.send(
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let a = w.answer();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-mock-served-by"), Some("beta"));

    // Expect: 100-continue gets its interim answer, then the real one.
    let mut w = Wire::connect(m.port);
    let body = r#"{"model": "alpha"}"#;
    w.send(
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: f\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(w.answer().status, 100);
    w.send(body.as_bytes());
    assert_eq!(w.answer().header("x-mock-served-by"), Some("alpha"));

    // HTTP/1.0: answered, then closed.
    let mut w = Wire::connect(m.port);
    let body = r#"{"model": "alpha"}"#;
    w.send(
        format!(
            "POST /v1/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(w.answer().status, 200);
    assert!(w.closed());

    // POST to a route the front serves itself is not proxied.
    let mut w = Wire::connect(m.port);
    w.send(&post("/health", "", r#"{"model": "alpha"}"#));
    assert_eq!(w.answer().status, 405);
    w.send(&post("/v1/models/alpha", "", r#"{"model": "alpha"}"#));
    assert_eq!(w.answer().status, 405);
    // Errors come from the general path with their usual shape, and the connection lives on.
    w.send(&post("/v1/completions", "", r#"{"model": "nope"}"#));
    let a = w.answer();
    assert_eq!(a.status, 404);
    assert!(a.text().contains("not_found_error"), "{}", a.text());
    w.send(&post("/v1/completions", "", r#"{"model": "beta"}"#));
    assert_eq!(w.answer().header("x-mock-served-by"), Some("beta"));
}
