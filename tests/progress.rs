//! Progress, through the real binary and `mock-vllm`: a ready engine that stops making
//! progress with requests running is restarted (`MODELMUX_STALL_TIMEOUT`), an idle or slow
//! one is not; `/health` gives `since` (RFC 3339) and `last_log` while a model loads; the
//! log says which models are still loading and, once, that all are ready.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Setup, alive, client, post, run_async, wait_until};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn get_json(m: &common::Modelmux, path: &str) -> Value {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", m.port)) else {
        return Value::Null; // not listening yet
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path} body ({e}): {buf}"))
}

fn model(m: &common::Modelmux, name: &str) -> Value {
    let h = get_json(m, "/health");
    h["models"]
        .as_array()
        .and_then(|ms| ms.iter().find(|x| x["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Seconds since the epoch of an RFC 3339 time as `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`;
/// panics on anything else.
fn parse_rfc3339(text: &str) -> f64 {
    let bad = || panic!("not an RFC 3339 time: {text:?}");
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        bad();
    }
    if b[13] != b':' || b[16] != b':' {
        bad();
    }
    let num = |r: std::ops::Range<usize>| -> i64 {
        text.get(r)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(bad)
    };
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let (h, mi, s) = (num(11..13), num(14..16), num(17..19));
    assert!((1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s < 61);
    let mut rest = &text[19..];
    let mut frac = 0.0;
    if let Some(after) = rest.strip_prefix('.') {
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            bad();
        }
        frac = format!("0.{}", &after[..digits]).parse().unwrap();
        rest = &after[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => bad(),
            };
            sign * (num(text.len() - 5..text.len() - 3) * 3600
                + num(text.len() - 2..text.len()) * 60)
        }
        _ => bad(),
    };
    // Days from the civil date (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + h * 3600 + mi * 60 + s - offset) as f64 + frac
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn rfc3339_parser_of_these_tests_is_right() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), 0.0);
    assert_eq!(parse_rfc3339("2025-01-15T10:23:45.5Z"), 1_736_936_625.5);
    assert_eq!(parse_rfc3339("2025-01-15T11:23:45+01:00"), 1_736_936_625.0);
    for bad in [
        "1736936625",
        "2025-01-15 10:23:45",
        "2025-01-15T10:23:45",
        "2025-13-01T00:00:00Z",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_rfc3339(bad)).is_err(),
            "{bad} passed"
        );
    }
}

fn stream_request(url: &str, body: Value) -> http::Request<Full<Bytes>> {
    http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Reads a response body to its end (or its error) and returns what came.
async fn read_all(resp: hyper::Response<hyper::body::Incoming>) -> String {
    let mut body = resp.into_body();
    let mut out = String::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(d) = frame.into_data() {
            out.push_str(&String::from_utf8_lossy(&d));
        }
    }
    out
}

#[test]
fn an_engine_without_progress_is_restarted_with_the_reason() {
    let m = Setup::new(&[("chat", json!({}))])
        .env("MODELMUX_STALL_TIMEOUT", "1")
        .env("MODELMUX_HEALTH_INTERVAL", "0.1")
        .start();
    m.wait_ready(T);
    let first = model(&m, "chat")["pid"].as_u64().unwrap() as u32;
    run_async(T, async {
        let c = client();
        let req = stream_request(
            &m.url("/v1/completions"),
            json!({"model": "chat", "stream": true, "mock_chunks": 10, "mock_stall_after_chunks": 2}),
        );
        let resp = c.request(req).await.unwrap();
        // The engine hangs after two tokens; modelmux must restart it, which ends the stream.
        let text = tokio::time::timeout(Duration::from_secs(20), read_all(resp))
            .await
            .expect("the client stream must end once the hung engine is stopped");
        assert!(text.contains("tok1") && !text.contains("[DONE]"), "{text}");
    });
    wait_until(T, "the restart", || {
        model(&m, "chat")["restarts"].as_u64() >= Some(1)
    });
    wait_until(Duration::from_secs(10), "the hung engine gone", || {
        !alive(first)
    });
    wait_until(Duration::from_secs(5), "the hang and restart lines", || {
        let log = m.log();
        log.contains("engine is hung:") && log.contains("restart 1 in")
    });
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("engine is hung:"))
        .unwrap_or_else(|| panic!("no hang line in the log:\n{log}"));
    assert!(
        line.contains("1 request running and no progress for")
            && line.contains("generated tokens stuck at 2")
            && line.contains("MODELMUX_STALL_TIMEOUT=1"),
        "{line}"
    );
    // Not before the timeout: the stall lasted at least the second it was given.
    let secs: f64 = line
        .split("no progress for ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(secs >= 1.0, "{line}");
    let last_exit = model(&m, "chat")["last_exit"].as_str().unwrap().to_string();
    assert!(
        last_exit.starts_with("hung: 1 request running and no progress for"),
        "{last_exit}"
    );
    // The new engine serves.
    m.wait_ready(T);
    run_async(T, async {
        let a = post(
            &client(),
            &m.url("/v1/completions"),
            r#"{"model": "chat", "prompt": "x"}"#,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
    });
}

#[test]
fn idle_and_slow_but_moving_engines_are_not_restarted() {
    let m = Setup::new(&[
        ("idle", json!({"env": {"MOCK_ACCESS_LOG": "1"}})),
        ("slow", json!({"env": {"MOCK_ACCESS_LOG": "1"}})),
    ])
    .env("MODELMUX_STALL_TIMEOUT", "1")
    .env("MODELMUX_HEALTH_INTERVAL", "0.1")
    // The engines' access lines for modelmux's own /metrics reads are at debug.
    .env("RUST_LOG", "info,engine=debug")
    .start();
    m.wait_ready(T);
    run_async(T, async {
        // 24 tokens 150 ms apart: 3.5 s of a request running, each gap well under 1 s.
        let req = stream_request(
            &m.url("/v1/completions"),
            json!({"model": "slow", "stream": true, "mock_chunks": 24, "mock_delay_ms": 150}),
        );
        let resp = client().request(req).await.unwrap();
        let text = read_all(resp).await;
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    });
    // The check did run meanwhile: both engines' metrics were read, many times.
    let log = m.log();
    for name in ["idle", "slow"] {
        let reads = log
            .lines()
            .filter(|l| l.contains("GET /metrics HTTP/1.1") && l.contains(&format!("model={name}")))
            .count();
        assert!(reads >= 10, "{name}: {reads} metrics reads\n{log}");
    }
    assert!(!log.contains("engine is hung"), "{log}");
    for name in ["idle", "slow"] {
        let status = model(&m, name);
        assert_eq!(status["restarts"], 0, "{status}");
        assert_eq!(status["state"], "ready", "{status}");
    }
}

#[test]
fn health_gives_since_as_rfc3339_and_the_last_line_while_loading() {
    let started = now();
    let m = Setup::new(&[(
        "chat",
        json!({"env": {"MOCK_STARTUP_DELAY_MS": "4000", "MOCK_LOADING_BAR": "1"}}),
    )])
    .start();
    // A progress bar that has not reached its newline yet: only the '\r' redraws show it.
    let mut loading = Value::Null;
    wait_until(T, "last_log with the loading bar", || {
        loading = model(&m, "chat");
        loading["state"] == "starting"
            && loading["last_log"].as_str().is_some_and(|l| {
                l.starts_with("Loading safetensors checkpoint shards:")
                    && !l.contains("100%")
                    && !l.contains('\r')
            })
    });
    let since = parse_rfc3339(loading["since"].as_str().unwrap());
    assert!(
        since >= started - 1.0 && since <= now() + 1.0,
        "since {since} is not between the start ({started}) and now: {loading}"
    );
    // The status page's JSON gives the same time and line.
    let status = get_json(&m, "/status");
    assert_eq!(status["models"][0]["since"], loading["since"], "{status}");
    assert!(status["models"][0]["last_log"].is_string(), "{status}");

    m.wait_ready(T);
    let ready = model(&m, "chat");
    let ready_since = parse_rfc3339(ready["since"].as_str().unwrap());
    assert!(ready_since > since, "{ready}");
    assert!(ready_since <= now() + 1.0, "{ready}");
    assert_eq!(ready["last_log"], Value::Null, "{ready}");
}

#[test]
fn the_log_tells_which_models_load_and_when_all_are_ready() {
    let m = Setup::new(&[
        (
            "big",
            json!({"env": {"MOCK_STARTUP_DELAY_MS": "2500", "MOCK_LOADING_BAR": "1"}}),
        ),
        ("small", json!({})),
    ])
    .env("MODELMUX_PROGRESS_INTERVAL", "0.3")
    .start();
    m.wait_ready(T);
    wait_until(Duration::from_secs(5), "the all-ready line", || {
        m.log().contains("all 2 models ready in ")
    });
    let log = m.log();
    let loading: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("big: loading "))
        .collect();
    assert!(loading.len() >= 3, "{log}");
    assert!(
        loading
            .iter()
            .any(|l| l.contains(" s — Loading safetensors checkpoint shards:")),
        "{log}"
    );
    let ready: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("models ready in "))
        .collect();
    assert_eq!(ready.len(), 1, "{log}");
    let expected_tail = format!(" s — serving on http://0.0.0.0:{}", m.port);
    assert!(ready[0].contains(&expected_tail), "{}", ready[0]);
    let took: f64 = ready[0]
        .split("models ready in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!((2.5..30.0).contains(&took), "{}", ready[0]);
    // The ready line comes after the last loading line, and none comes after it.
    let ready_at = log.find("models ready in ").unwrap();
    assert!(!log[ready_at..].contains("big: loading "), "{log}");
}
