//! The routing front through the real binary and real `mock-vllm` engines: routing,
//! `/predict`, streaming, errors, auth, health, metrics, request ids, shutdown.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Setup, client, get, post, request, run_async, wait_until};
use http_body_util::{BodyExt, Full};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn two_models() -> Setup {
    Setup::new(&[
        (
            "chat",
            json!({"fine_tune_weights": [{"model_name": "chat-sql", "model_path": "org/sql-lora"}]}),
        ),
        ("embed", json!({"model_task": "text_embedding"})),
    ])
}

#[test]
fn requests_route_by_model_on_any_path() {
    // A proxy in the environment must not affect loopback engines.
    let m = two_models()
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        for (path, model) in [
            ("/v1/completions", "chat"),
            ("/v1/chat/completions", "chat"),
            ("/v1/embeddings", "embed"),
            ("/v1/rerank", "embed"),
            ("/v1/score", "embed"),
            ("/tokenize", "chat"),
            ("/v1/completions?api-version=1", "chat"),
            ("/v1/completions", "chat-sql"),
        ] {
            let a = post(
                &c,
                &m.url(path),
                &json!({"model": model, "prompt": "hi"}).to_string(),
            )
            .await;
            assert_eq!(a.status, 200, "{path} {model}: {}", a.body);
            let base = if model == "chat-sql" { "chat" } else { model };
            assert_eq!(a.headers["x-mock-served-by"], base, "{path} {model}");
            assert_eq!(
                a.headers["x-mock-path"], path,
                "the same path (and query) reaches the engine"
            );
        }
        let chat = post(
            &c,
            &m.url("/v1/chat/completions"),
            r#"{"model": "chat", "messages": []}"#,
        )
        .await;
        assert_eq!(
            chat.json()["choices"][0]["message"]["content"],
            "mock completion from chat"
        );
    });
}

#[test]
fn model_field_rules() {
    let single = Setup::new(&[("only", json!({}))]).start();
    let several = two_models().start();
    single.wait_ready(T);
    several.wait_ready(T);
    run_async(T, async {
        let c = client();
        let a = post(&c, &single.url("/tokenize"), r#"{"prompt": "x"}"#).await;
        assert_eq!(
            (a.status, a.headers["x-mock-served-by"].to_str().unwrap()),
            (200, "only")
        );
        let a = post(&c, &several.url("/v1/completions"), r#"{"prompt": "x"}"#).await;
        assert_eq!(a.status, 400);
        assert_eq!(
            a.json()["error"]["message"],
            "the body has no \"model\"; available: chat, chat-sql, embed"
        );
        let a = post(&c, &several.url("/v1/completions"), r#"{"model": "gpt-5"}"#).await;
        assert_eq!(a.status, 404);
        let e = &a.json()["error"];
        assert_eq!(
            e["message"],
            "model \"gpt-5\" is not served here; available: chat, chat-sql, embed"
        );
        assert_eq!(e["type"], "not_found_error");
        assert_eq!(e["code"], 404);
        let a = post(
            &c,
            &several.url("/v1/completions"),
            r#"{"model": "chat", "prompt": }"#,
        )
        .await;
        assert_eq!(a.status, 400);
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("malformed JSON body")
        );
        let a = get(&c, &several.url("/v1/completions")).await;
        assert_eq!(a.status, 404);
        assert!(a.json()["error"]["message"].is_string());
    });
}

#[test]
fn predict_follows_oci_rules() {
    let m = two_models().start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let call = |path: &'static str, route: Option<&'static str>, body: &'static str| {
            let c = c.clone();
            let url = m.url(path);
            async move {
                let mut h = vec![("content-type", "application/json")];
                if let Some(r) = route {
                    h.push(("route", r));
                }
                request(&c, "POST", &url, &h, body).await
            }
        };
        let a = call("/predict", None, r#"{"model": "chat", "prompt": "x"}"#).await;
        assert_eq!(a.headers["x-mock-path"], "/v1/completions");
        let a = call("/predict", None, r#"{"model": "embed", "input": "x"}"#).await;
        assert_eq!(
            a.headers["x-mock-path"], "/v1/embeddings",
            "text_embedding models default to embeddings"
        );
        let a = call(
            "/predict",
            Some("v1/chat/completions"),
            r#"{"model": "chat", "messages": []}"#,
        )
        .await;
        assert_eq!(a.headers["x-mock-path"], "/v1/chat/completions");
        let a = call("/predict", Some("/tokenize"), r#"{"model": "chat"}"#).await;
        assert_eq!(a.headers["x-mock-path"], "/tokenize");
        let a = call(
            "/predictWithResponseStream",
            Some("/v1/completions"),
            r#"{"model": "chat", "stream": true, "mock_chunks": 3}"#,
        )
        .await;
        assert_eq!(a.status, 200);
        assert!(a.body.ends_with("data: [DONE]\n\n"), "{}", a.body);
        for bad in [
            "http://evil.example/v1",
            "//evil.example/x",
            "/v1/../admin",
            "..",
            "evil.example:80/v1",
            "/v1/%2e%2e/x",
            "/v1?x=1",
        ] {
            let url = m.url("/predict");
            let h = [("content-type", "application/json"), ("route", bad)];
            let a = request(&c, "POST", &url, &h, r#"{"model": "chat"}"#).await;
            assert_eq!(a.status, 400, "route {bad:?} must be refused: {}", a.body);
            assert!(
                a.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("route header")
            );
        }
    });
}

#[test]
fn models_list_has_openai_shape() {
    let m = two_models().start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let a = get(&c, &m.url("/v1/models")).await;
        assert_eq!(a.status, 200);
        let v = a.json();
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["chat", "chat-sql", "embed"]);
        for d in v["data"].as_array().unwrap() {
            assert_eq!(d["object"], "model");
            assert!(d["created"].as_u64().unwrap() > 1_600_000_000);
            // The engine's own entry (mock-vllm answers like vLLM), plus modelmux's state.
            assert_eq!(d["owned_by"], "vllm");
            assert_eq!(d["max_model_len"], 4096);
            assert_eq!(d["state"], "ready");
        }
        assert_eq!(v["data"][1]["parent"], "chat");
        let one = get(&c, &m.url("/v1/models/chat-sql")).await;
        assert_eq!(one.json()["id"], "chat-sql");
        assert_eq!(get(&c, &m.url("/v1/models/nope")).await.status, 404);
        // An unknown id is echoed cut, as a name in a body is.
        let long = get(&c, &m.url(&format!("/v1/models/{}", "a".repeat(5000)))).await;
        assert_eq!(long.status, 404);
        let message = long.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.len() < 1000, "{} bytes", message.len());
    });
}

/// Reads one response's frames, noting when each arrived.
async fn frames(resp: hyper::Response<hyper::body::Incoming>) -> Vec<(Instant, Bytes)> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    out.push((Instant::now(), d));
                }
            }
            Err(_) => break,
        }
    }
    out
}

fn stream_request(url: &str, body: serde_json::Value) -> http::Request<Full<Bytes>> {
    http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[test]
fn streams_pass_through_chunk_by_chunk() {
    let m = two_models().start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let req = stream_request(
            &m.url("/v1/chat/completions"),
            json!({"model": "chat", "stream": true, "mock_chunks": 5, "mock_delay_ms": 300}),
        );
        let sent = Instant::now();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["x-accel-buffering"], "no");
        let got = frames(resp).await;
        let text: String = got
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert_eq!(text.matches("data: ").count(), 6, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        let first = got.first().unwrap().0;
        let last = got.last().unwrap().0;
        assert!(
            first - sent < Duration::from_millis(900),
            "first chunk came only after {:?}",
            first - sent
        );
        assert!(
            last - first >= Duration::from_millis(1100),
            "chunks were held back: all within {:?}",
            last - first
        );
        assert!(
            got.len() >= 5,
            "chunks were coalesced into {} frames",
            got.len()
        );
    });
}

#[test]
fn client_disconnect_cancels_the_engine_request() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let m = Setup::new(&[(
        "chat",
        json!({"env": {"MOCK_EVENTS_FILE": events.to_string_lossy()}}),
    )])
    .start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let req = stream_request(
            &m.url("/v1/completions"),
            json!({"model": "chat", "stream": true, "mock_chunks": 100000, "mock_delay_ms": 20}),
        );
        let resp = c.request(req).await.unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        drop(c);
    });
    wait_until(
        Duration::from_secs(1),
        "the engine saw the client go away",
        || std::fs::read_to_string(&events).is_ok_and(|e| e.contains("cancelled")),
    );
}

#[test]
fn engine_death_mid_stream_ends_the_client_stream_and_502_on_no_answer() {
    let m = Setup::new(&[("chat", json!({}))])
        .env("MODELMUX_RESTART_DELAY", "0.1")
        .start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let req = stream_request(
            &m.url("/v1/completions"),
            json!({"model": "chat", "stream": true, "mock_chunks": 10, "mock_die_after_chunks": 2, "mock_delay_ms": 50}),
        );
        let resp = c.request(req).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), frames(resp))
            .await
            .expect("the client stream must end, not hang");
        let text: String = got
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(text.contains("tok0") && !text.contains("[DONE]"), "{text}");
    });
    // The engine is restarted; then an engine that dies without answering gives a 502.
    wait_until(T, "engine restarted", || m.log().contains("restart 1 in"));
    m.wait_ready(T);
    run_async(T, async {
        let a = post(
            &client(),
            &m.url("/v1/completions"),
            r#"{"model": "chat", "mock_exit": true}"#,
        )
        .await;
        assert_eq!(a.status, 502, "{}", a.body);
        assert_eq!(a.json()["error"]["type"], "bad_gateway");
    });
}

fn raw_exchange(port: u16, requests: &[Vec<u8>]) -> Vec<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answers = Vec::new();
    for req in requests {
        s.write_all(req).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read one response: headers, then content-length bytes.
        loop {
            let n = s
                .read(&mut chunk)
                .expect("the answer must arrive, not a reset");
            assert!(n > 0, "connection closed before an answer");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    answers.push(text);
                    break;
                }
            }
        }
    }
    answers
}

#[test]
fn oversized_bodies_get_413_not_a_reset() {
    let m = Setup::new(&[("chat", json!({}))])
        .env("MODELMUX_MAX_BODY_BYTES", "1000")
        .start();
    m.wait_ready(T);
    let big = format!(
        r#"{{"model": "chat", "prompt": "{}"}}"#,
        "x".repeat(200_000)
    );
    let with_length = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}", big.len()).into_bytes();
    let chunked = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n", big.len()).into_bytes();
    let small = br#"{"model": "chat", "prompt": "x"}"#;
    let ok = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
        small.len(),
        String::from_utf8_lossy(small)
    )
    .into_bytes();
    let answers = raw_exchange(m.port, &[with_length, chunked, ok]);
    for a in &answers[..2] {
        assert!(a.starts_with("HTTP/1.1 413"), "{a}");
        assert!(a.contains("MODELMUX_MAX_BODY_BYTES (1000 bytes)"), "{a}");
    }
    assert!(
        answers[2].starts_with("HTTP/1.1 200"),
        "the connection stays usable: {}",
        answers[2]
    );
}

#[test]
fn api_key_guards_everything_but_health_and_metrics() {
    let m = Setup::new(&[("chat", json!({}))])
        .env("MODELMUX_API_KEY", "s3cret")
        .env("MODEL_DEPLOY_HEALTH_ENDPOINT", "/ping")
        .start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let body = r#"{"model": "chat"}"#;
        let url = m.url("/v1/completions");
        assert_eq!(post(&c, &url, body).await.status, 401);
        let wrong = request(&c, "POST", &url, &[("authorization", "Bearer nope")], body).await;
        assert_eq!(wrong.status, 401);
        assert_eq!(wrong.json()["error"]["type"], "authentication_error");
        assert_eq!(
            request(
                &c,
                "POST",
                &url,
                &[("authorization", "Bearer s3cret")],
                body
            )
            .await
            .status,
            200
        );
        assert_eq!(get(&c, &m.url("/v1/models")).await.status, 401);
        for open in ["/health", "/ping", "/livez", "/metrics"] {
            assert_eq!(get(&c, &m.url(open)).await.status, 200, "{open} stays open");
        }
    });
}

#[test]
fn loading_model_gets_503_with_retry_after_while_others_serve() {
    let m = Setup::new(&[
        ("slow", json!({"env": {"MOCK_STARTUP_DELAY_MS": "600000"}})),
        ("fast", json!({})),
    ])
    .start();
    wait_until(T, "fast ready", || {
        m.log().contains("ready after") && m.log().contains("model=fast")
    });
    run_async(T, async {
        let c = client();
        let a = post(&c, &m.url("/v1/completions"), r#"{"model": "slow"}"#).await;
        assert_eq!(a.status, 503);
        assert!(a.headers.contains_key("retry-after"));
        assert_eq!(
            a.json()["error"]["message"],
            "model slow is starting; retry shortly"
        );
        assert_eq!(
            post(&c, &m.url("/v1/completions"), r#"{"model": "fast"}"#)
                .await
                .status,
            200
        );
        let h = get(&c, &m.url("/health")).await;
        assert_eq!(h.status, 503);
        assert_eq!(h.json()["models"][0]["state"], "starting");
        assert_eq!(get(&c, &m.url("/livez")).await.status, 200);
    });
}

#[test]
fn request_ids_are_passed_on_or_made_up() {
    let m = Setup::new(&[("chat", json!({}))]).start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let a = request(
            &c,
            "POST",
            &m.url("/v1/completions"),
            &[("x-request-id", "abc-123")],
            r#"{"model": "chat"}"#,
        )
        .await;
        assert_eq!(a.headers["x-request-id"], "abc-123");
        assert_eq!(
            a.headers["x-mock-request-id"], "abc-123",
            "the engine got it"
        );
        let b = post(&c, &m.url("/v1/completions"), r#"{"model": "chat"}"#).await;
        let made = b.headers["x-request-id"].to_str().unwrap().to_string();
        assert!(!made.is_empty());
        assert_eq!(b.headers["x-mock-request-id"].to_str().unwrap(), made);
        let e = post(&c, &m.url("/v1/completions"), r#"{"model": "none"}"#).await;
        assert!(
            e.headers.contains_key("x-request-id"),
            "errors carry one too"
        );
    });
    wait_until(Duration::from_secs(5), "the access log line", || {
        m.log().contains("request_id=abc-123")
    });
}

#[test]
fn metrics_count_requests_states_and_restarts() {
    let m = two_models().start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        for _ in 0..3 {
            post(&c, &m.url("/v1/completions"), r#"{"model": "chat"}"#).await;
        }
        post(
            &c,
            &m.url("/v1/completions"),
            r#"{"model": "chat", "stream": true, "mock_chunks": 2}"#,
        )
        .await;
        post(&c, &m.url("/v1/completions"), r#"{"model": "missing"}"#).await;
        let text = get(&c, &m.url("/metrics")).await.body;
        for line in [
            "modelmux_requests_total{model=\"chat\",code=\"200\"} 4",
            "modelmux_requests_total{model=\"\",code=\"404\"} 1",
            "modelmux_request_duration_seconds_count{model=\"chat\"} 4",
            "modelmux_time_to_first_byte_seconds_count{model=\"chat\"} 1",
            "modelmux_inflight_requests{model=\"chat\"} 0",
            "modelmux_model_state{model=\"embed\",state=\"ready\"} 1",
            "modelmux_model_state{model=\"embed\",state=\"starting\"} 0",
            "modelmux_model_restarts_total{model=\"chat\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    });
}

#[test]
fn separate_health_port_serves_health_only() {
    let health_port = common::free_port();
    let m = Setup::new(&[("chat", json!({}))])
        .env("HEALTH_CHECK_PORT", health_port)
        .start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let h = format!("http://127.0.0.1:{health_port}");
        assert_eq!(get(&c, &format!("{h}/health")).await.status, 200);
        assert_eq!(get(&c, &format!("{h}/livez")).await.status, 200);
        let elsewhere = post(&c, &format!("{h}/v1/completions"), r#"{"model": "chat"}"#).await;
        assert_eq!(elsewhere.status, 404);
        assert!(
            elsewhere
                .body
                .contains("is not served on HEALTH_CHECK_PORT")
                && elsewhere.body.contains("send requests to PORT"),
            "{}",
            elsewhere.body
        );
    });
    // The same header rule as on PORT: two request ids is a 400, not one of them echoed.
    let twice = raw_answer_on(
        health_port,
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\r\nX-Request-Id: b\r\nConnection: close\r\n\r\n",
    );
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    assert!(twice.contains("X-Request-Id"), "{twice}");
}

#[test]
fn shutdown_lets_in_flight_requests_finish() {
    let mut m = Setup::new(&[("chat", json!({"env": {"MOCK_RESPONSE_DELAY_MS": "4000"}}))]).start();
    m.wait_ready(T);
    let url = m.url("/v1/completions");
    let pending = std::thread::spawn(move || {
        run_async(T, async move {
            let a = post(&client(), &url, r#"{"model": "chat"}"#).await;
            assert_eq!(a.status, 200, "{}", a.body);
        })
    });
    wait_until(T, "request in flight", || {
        metrics_line(&m, "modelmux_inflight_requests{model=\"chat\"} 1")
    });
    m.signal(nix::sys::signal::Signal::SIGTERM);
    // While it finishes, the front still answers, and says it is stopping: /health 503 (a
    // load balancer takes the pod out), a new request 503 with Retry-After (not a refused
    // connection).
    wait_until(T, "/health 503 while stopping", || {
        common::blocking_get_status(&m.url("/health")) == Some(503)
    });
    let refused = raw_answer(
        &m,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"model\": \"chat\"}",
    );
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("\r\nretry-after:"),
        "{refused}"
    );
    assert!(
        metrics_line(&m, "modelmux_inflight_requests{model=\"chat\"} 1"),
        "checked while the first request was still in flight"
    );
    pending.join().expect("the in-flight request completed");
    assert_eq!(m.wait_exit(T), Some(0));
}

/// One raw request on a fresh connection, and everything the front answered.
fn raw_answer(m: &common::Modelmux, request: &str) -> String {
    raw_answer_on(m.port, request)
}

/// One raw request on a fresh connection to `port`, and everything that came back.
fn raw_answer_on(port: u16, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the listener accepts");
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

fn metrics_line(m: &common::Modelmux, line: &str) -> bool {
    let mut s = match std::net::TcpStream::connect(("127.0.0.1", m.port)) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.lines().any(|l| l == line)
}

#[test]
fn pooled_connections_to_a_restarted_engine_are_not_reused() {
    let m = Setup::new(&[("chat", json!({}))])
        .env("MODELMUX_RESTART_DELAY", "0.1")
        .start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        // Several requests at once leave several idle engine connections in the pool.
        let url = m.url("/v1/completions");
        let many = (0..8).map(|_| post(&c, &url, r#"{"model": "chat"}"#));
        for a in futures_join(many).await {
            assert_eq!(a.status, 200);
        }
        let a = post(
            &c,
            &m.url("/v1/completions"),
            r#"{"model": "chat", "mock_exit": true}"#,
        )
        .await;
        assert_eq!(a.status, 502);
    });
    wait_until(T, "engine restarted", || m.log().contains("restart 1 in"));
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        for _ in 0..10 {
            let a = post(&c, &m.url("/v1/completions"), r#"{"model": "chat"}"#).await;
            assert_eq!(
                a.status, 200,
                "a stale pooled connection leaked through: {}",
                a.body
            );
        }
    });
}

async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.collect();
    let mut out = Vec::new();
    // Poll them together so that they overlap.
    let mut pinned: Vec<_> = handles.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (f, d) in pinned.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *d = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(done.into_iter().map(|d| d.unwrap()));
    out
}

#[test]
fn the_access_log_follows_rust_log_in_both_formats() {
    for format in ["text", "json"] {
        let mut m = Setup::new(&[("chat", json!({}))])
            .env("RUST_LOG", "info,access=warn")
            .env("MODELMUX_LOG_FORMAT", format)
            .start();
        m.wait_ready(T);
        run_async(T, async {
            let h = [("x-request-id", "quiet-1")];
            let a = request(
                &client(),
                "POST",
                &m.url("/v1/completions"),
                &h,
                r#"{"model": "chat"}"#,
            )
            .await;
            assert_eq!(a.status, 200);
        });
        m.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(m.wait_exit(T), Some(0));
        let log = m.log();
        assert!(log.contains("clean shutdown"), "{format}: {log}");
        assert!(
            !log.contains("quiet-1"),
            "{format}: access=warn still logs requests: {log}"
        );
    }
    // With the default filter the line is there, in JSON as one object.
    let mut m = Setup::new(&[("chat", json!({}))])
        .env("MODELMUX_LOG_FORMAT", "json")
        .start();
    m.wait_ready(T);
    run_async(T, async {
        let h = [("x-request-id", "loud-1")];
        request(
            &client(),
            "POST",
            &m.url("/v1/completions"),
            &h,
            r#"{"model": "chat"}"#,
        )
        .await;
    });
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.wait_exit(T), Some(0));
    let line = m
        .log()
        .lines()
        .find(|l| l.contains("loud-1"))
        .map(str::to_string)
        .expect("the access line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (
            v["target"].as_str(),
            v["status"].as_u64(),
            v["model"].as_str()
        ),
        (Some("access"), Some(200), Some("chat"))
    );
}
