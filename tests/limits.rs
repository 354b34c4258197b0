//! The front's limits, tried the way a slow or hostile client would, on both wires (the
//! pass-through wire on a fresh connection, hyper on a connection handed to it): header,
//! idle and body timeouts, the connection limit, the API key checked from the head, SSE
//! keepalives, the per-model queue, the bind address. Real binary, real `mock-vllm`.

mod common;

use std::time::Duration;

use common::raw::{Wire, post};
use common::{Setup, wait_until};
use serde_json::json;

const T: Duration = Duration::from_secs(60);
/// How long a test waits for the front to act on a sub-second limit (not a timing
/// assertion: only an upper bound on waiting).
const ACT: Duration = Duration::from_secs(15);

/// A connection on each wire, made when the loop gets to it.
fn wires(port: u16) -> impl Iterator<Item = (&'static str, Wire)> {
    [("pass", false), ("general", true)]
        .into_iter()
        .map(move |(name, general)| match general {
            false => (name, Wire::connect(port)),
            true => (name, Wire::connect_general(port)),
        })
}

#[test]
fn heads_that_never_complete_are_dropped_on_both_wires() {
    let m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_HEADER_TIMEOUT", "0.5")
        .env("MODELMUX_IDLE_TIMEOUT", "600")
        .start();
    m.wait_ready(T);
    let mut silent = Wire::connect(m.port);
    assert!(
        silent.closed_within(ACT),
        "a connection that never sends a head"
    );
    for (wire, mut w) in wires(m.port) {
        w.send(b"POST /v1/completions HTTP/1.1\r\nHost: f\r\nContent-Ty");
        assert!(w.closed_within(ACT), "{wire}: a head that never completes");
    }
    // All three are counted for operators.
    assert!(metric(
        &m,
        "modelmux_client_timeouts_total{limit=\"header\"} 3"
    ));
    // A head sent in time is served as usual.
    let mut w = Wire::connect(m.port);
    w.send(&post("/v1/completions", "", r#"{"model": "alpha"}"#));
    assert_eq!(w.answer().status, 200);
}

#[test]
fn idle_keep_alive_connections_are_closed_on_both_wires() {
    let m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_IDLE_TIMEOUT", "0.5")
        .start();
    m.wait_ready(T);
    for (wire, mut w) in wires(m.port) {
        w.send(&post("/v1/completions", "", r#"{"model": "alpha"}"#));
        assert_eq!(w.answer().status, 200, "{wire}");
        assert!(
            w.closed_within(ACT),
            "{wire}: the idle connection stayed open"
        );
    }
}

#[test]
fn a_stalled_body_gets_408_on_both_wires() {
    let m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_BODY_TIMEOUT", "0.5")
        .start();
    m.wait_ready(T);
    for (wire, mut w) in wires(m.port) {
        w.send(b"POST /v1/completions HTTP/1.1\r\nHost: f\r\nX-Request-Id: stalled\r\nContent-Length: 100\r\n\r\n{\"model\":");
        let a = w.answer();
        assert_eq!(a.status, 408, "{wire}: {}", a.text());
        assert_eq!(a.header("x-request-id"), Some("stalled"), "{wire}");
        assert!(w.closed_within(ACT), "{wire}");
    }
    assert!(metric(
        &m,
        "modelmux_client_timeouts_total{limit=\"body\"} 2"
    ));
}

#[test]
fn connections_past_the_limit_get_503_until_one_closes() {
    let m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_MAX_CONNECTIONS", "3")
        .start();
    m.wait_ready(T);
    let mut held: Vec<Wire> = (0..3)
        .map(|_| {
            let mut w = Wire::connect(m.port);
            w.send(&post("/v1/completions", "", r#"{"model": "alpha"}"#));
            assert_eq!(w.answer().status, 200);
            w
        })
        .collect();
    let mut extra = Wire::connect(m.port);
    let a = extra.answer();
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.header("retry-after").is_some() && a.header("x-request-id").is_some());
    assert!(
        a.text().contains("MODELMUX_MAX_CONNECTIONS"),
        "{}",
        a.text()
    );
    assert!(extra.closed_within(ACT));
    held.pop();
    wait_until(ACT, "a place for a new connection", || {
        let mut w = Wire::connect(m.port);
        w.send(&post("/v1/completions", "", r#"{"model": "alpha"}"#));
        w.answer().status == 200
    });
}

#[test]
fn the_health_port_has_the_same_limits() {
    let health = common::free_port();
    let m = Setup::new(&[("alpha", json!({}))])
        .env("HEALTH_CHECK_PORT", health)
        .env("MODELMUX_MAX_CONNECTIONS", "2")
        .env("MODELMUX_HEADER_TIMEOUT", "0.5")
        .env("MODELMUX_IDLE_TIMEOUT", "600")
        .start();
    m.wait_ready(T);
    let mut silent = Wire::connect(health);
    assert!(
        silent.closed_within(ACT),
        "a silent connection gets the header timeout, not the idle one"
    );
    let held: Vec<Wire> = (0..2)
        .map(|_| {
            let mut w = Wire::connect(health);
            w.send(b"GET /health HTTP/1.1\r\nHost: f\r\n\r\n");
            assert_eq!(w.answer().status, 200);
            w
        })
        .collect();
    let mut extra = Wire::connect(health);
    let a = extra.answer();
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(
        a.text().contains("MODELMUX_MAX_CONNECTIONS"),
        "{}",
        a.text()
    );
    drop(held);
    wait_until(ACT, "a place for a new health connection", || {
        let mut w = Wire::connect(health);
        w.send(b"GET /health HTTP/1.1\r\nHost: f\r\n\r\n");
        w.answer().status == 200
    });
}

/// modelmux's peak resident memory in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_wrong_key_is_refused_from_the_head_without_reading_the_body() {
    let m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_API_KEY", "k3y")
        .start();
    m.wait_ready(T);
    let big = 29 * 1024 * 1024;
    // The head alone gets the answer: the body is never waited for.
    let mut w = Wire::connect(m.port);
    w.send(format!("POST /v1/completions HTTP/1.1\r\nHost: f\r\nAuthorization: Bearer nope\r\nContent-Length: {big}\r\n\r\n").as_bytes());
    let a = w.answer();
    assert_eq!(a.status, 401);
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    assert_eq!(a.header("connection"), Some("close"));
    // A chunked upload (the general wire) too.
    let mut w = Wire::connect(m.port);
    w.send(
        b"POST /v1/completions HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n",
    );
    assert_eq!(w.answer().status, 401);

    // Clients that send their 29 MiB anyway cost no memory: nothing is kept.
    let before = peak_rss_kib(m.pid());
    let port = m.port;
    let senders: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                use std::io::Write;
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                let head = format!(
                    "POST /v1/completions HTTP/1.1\r\nHost: f\r\nContent-Length: {big}\r\n\r\n"
                );
                let _ = s.write_all(head.as_bytes());
                let chunk = vec![b'x'; 1024 * 1024];
                for _ in 0..29 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let after = peak_rss_kib(m.pid());
    assert!(
        after < before + 64 * 1024,
        "peak RSS went from {before} KiB to {after} KiB"
    );
}

/// The events of an SSE body, split at blank lines.
fn events(text: &str) -> Vec<&str> {
    text.split("\n\n").filter(|e| !e.is_empty()).collect()
}

#[test]
fn silent_streams_get_keepalive_comments_between_events_on_both_wires() {
    let m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_SSE_KEEPALIVE", "0.1")
        .start();
    m.wait_ready(T);
    let body = r#"{"model": "alpha", "stream": true, "mock_chunks": 3, "mock_delay_ms": 700}"#;
    for (wire, mut w) in wires(m.port) {
        w.send(&post("/v1/completions", "", body));
        let a = w.answer();
        assert_eq!(a.status, 200, "{wire}");
        let text = a.text();
        let evs = events(&text);
        let data: Vec<&&str> = evs.iter().filter(|e| e.starts_with("data: ")).collect();
        let comments = evs.iter().filter(|e| **e == ": keepalive").count();
        assert_eq!(data.len(), 4, "{wire}: every event arrives whole: {text:?}");
        assert_eq!(data.len() + comments, evs.len(), "{wire}: {text:?}");
        assert!(comments >= 1, "{wire}: no keepalive in {text:?}");
    }
    // Off with 0.
    let quiet = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_SSE_KEEPALIVE", "0")
        .start();
    quiet.wait_ready(T);
    let mut w = Wire::connect(quiet.port);
    w.send(&post("/v1/completions", "", body));
    assert!(!w.answer().text().contains("keepalive"));
}

/// Starts a stream that holds `model`'s only slot until the returned connection closes.
fn hold_slot(port: u16, model: &str) -> Wire {
    let mut w = Wire::connect(port);
    let body = json!({"model": model, "stream": true, "mock_chunks": 100000, "mock_delay_ms": 50});
    w.send(&post("/v1/completions", "", &body.to_string()));
    // The head arrives once the engine answers, so the slot is taken.
    while !w.buf.windows(4).any(|x| x == b"\r\n\r\n") {
        assert!(w.fill());
    }
    assert!(w.buf.starts_with(b"HTTP/1.1 200"));
    w
}

fn metric(m: &common::Modelmux, line: &str) -> bool {
    let mut w = Wire::connect(m.port);
    w.send(b"GET /metrics HTTP/1.1\r\nHost: f\r\n\r\n");
    w.answer().text().lines().any(|l| l == line)
}

#[test]
fn a_busy_model_queues_in_order_then_answers_429() {
    let m = Setup::new(&[("gate", json!({"max_concurrency": 1, "max_queue": 2}))]).start();
    m.wait_ready(T);
    let holder = hold_slot(m.port, "gate");
    let port = m.port;
    let waiter = |id: &'static str, general: bool| {
        std::thread::spawn(move || {
            let mut w = if general {
                Wire::connect_general(port)
            } else {
                Wire::connect(port)
            };
            w.send(&post(
                "/v1/completions",
                &format!("X-Request-Id: {id}\r\n"),
                r#"{"model": "gate"}"#,
            ));
            w.answer().status
        })
    };
    let first = waiter("queued-1", false);
    wait_until(ACT, "one waiter", || {
        metric(&m, "modelmux_queue_length{model=\"gate\"} 1")
    });
    let second = waiter("queued-2", true);
    wait_until(ACT, "two waiters", || {
        metric(&m, "modelmux_queue_length{model=\"gate\"} 2")
    });
    for (wire, mut w) in wires(m.port) {
        w.send(&post("/v1/completions", "", r#"{"model": "gate"}"#));
        let a = w.answer();
        assert_eq!(a.status, 429, "{wire}: {}", a.text());
        assert_eq!(a.header("retry-after"), Some("1"), "{wire}");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_exceeded", "{wire}");
    }
    drop(holder);
    assert_eq!((first.join().unwrap(), second.join().unwrap()), (200, 200));
    wait_until(ACT, "both access lines", || {
        let log = m.log();
        log.contains("request_id=queued-1") && log.contains("request_id=queued-2")
    });
    let log = m.log();
    let at = |id: &str| log.find(&format!("request_id={id}")).unwrap();
    assert!(at("queued-1") < at("queued-2"), "first in, first out");
    assert!(metric(&m, "modelmux_queue_length{model=\"gate\"} 0"));
}

#[test]
fn a_client_that_leaves_the_queue_still_gets_its_access_line_on_both_wires() {
    let m = Setup::new(&[("gate", json!({"max_concurrency": 1}))]).start();
    m.wait_ready(T);
    let _holder = hold_slot(m.port, "gate");
    for (wire, mut w) in wires(m.port) {
        let id = format!("left-{wire}");
        w.send(&post(
            "/v1/completions",
            &format!("X-Request-Id: {id}\r\n"),
            r#"{"model": "gate"}"#,
        ));
        wait_until(ACT, "queued", || {
            metric(&m, "modelmux_queue_length{model=\"gate\"} 1")
        });
        drop(w);
        wait_until(ACT, "its access line", || {
            m.log()
                .lines()
                .any(|l| l.contains(&format!("request_id={id}")) && l.contains("went away"))
        });
        wait_until(ACT, "out of the queue", || {
            metric(&m, "modelmux_queue_length{model=\"gate\"} 0")
        });
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_after_the_send_timeout_on_both_wires() {
    let m = Setup::new(&[("gate", json!({"max_concurrency": 1}))])
        .env("MODELMUX_SEND_TIMEOUT", "0.5")
        .env("MODELMUX_QUEUE_TIMEOUT", "120")
        .start();
    m.wait_ready(T);
    let endless = json!({"model": "gate", "stream": true, "mock_chunks": 1_000_000_000u64, "mock_delay_ms": 0});
    for (wire, mut stalled) in wires(m.port) {
        // An endless stream that the client never reads: once the buffers between are
        // full the front can send nothing more, and after the send timeout it closes both
        // connections, which frees the model's only slot.
        stalled.send(&post("/v1/completions", "", &endless.to_string()));
        // Its head arrives once the engine answers, so the slot is taken.
        while !stalled.buf.windows(4).any(|x| x == b"\r\n\r\n") {
            assert!(stalled.fill(), "{wire}");
        }
        let mut next = Wire::connect(m.port);
        // Filling the buffers takes seconds; the cut follows half a second later (on the
        // general wire too, where a blocked write wakes the connection's timer).
        next.stream.set_read_timeout(Some(ACT)).unwrap();
        next.send(&post("/v1/completions", "", r#"{"model": "gate"}"#));
        // Without the limit this waits the whole queue timeout, then gets 429.
        let a = next.answer();
        assert_eq!(a.status, 200, "{wire}: {}", a.text());
        assert!(
            stalled.closed_within(T),
            "{wire}: the stalled client's connection"
        );
        let text = String::from_utf8_lossy(&stalled.buf).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{wire}");
        assert!(
            !text.contains("[DONE]"),
            "{wire}: a cut stream does not look whole"
        );
    }
    wait_until(ACT, "a warning from each wire", || {
        let log = m.log();
        let cut = |wire: &str| {
            log.lines()
                .any(|l| l.contains("MODELMUX_SEND_TIMEOUT") && l.contains(wire))
        };
        cut("wire=\"pass\"") && cut("wire=\"general\"")
    });
    assert!(metric(
        &m,
        "modelmux_client_timeouts_total{limit=\"send\"} 2"
    ));
    assert!(metric(
        &m,
        "modelmux_client_timeouts_total{limit=\"header\"} 0"
    ));
}

#[test]
fn a_request_waits_for_a_slot_no_longer_than_the_queue_timeout() {
    let m = Setup::new(&[("gate", json!({"max_concurrency": 1}))])
        .env("MODELMUX_QUEUE_TIMEOUT", "0.3")
        .start();
    m.wait_ready(T);
    let _holder = hold_slot(m.port, "gate");
    for (wire, mut w) in wires(m.port) {
        w.send(&post("/v1/completions", "", r#"{"model": "gate"}"#));
        let a = w.answer();
        assert_eq!(a.status, 429, "{wire}: {}", a.text());
        assert!(a.text().contains("MODELMUX_QUEUE_TIMEOUT"), "{wire}");
    }
}

#[test]
fn modelmux_host_picks_the_address_to_listen_on() {
    let m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_HOST", "127.0.0.2")
        .start();
    let url = format!("http://127.0.0.2:{}/health", m.port);
    wait_until(T, "health on 127.0.0.2", || {
        common::blocking_get_status(&url) == Some(200)
    });
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", m.port)).is_err(),
        "the front also listens on 127.0.0.1"
    );
}
