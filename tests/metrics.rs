//! `/metrics` with the engines' own metrics merged in (SPEC §6), through the real binary
//! and `mock-vllm` (which serves vLLM V1's metrics), checked with Python's
//! `prometheus_client` parser where it is installed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Setup, client, get, post, run_async, tools, wait_until};
use serde_json::{Value, json};

/// Parses Prometheus text from stdin with `prometheus_client` and prints the families as
/// JSON. The parser raises on bad syntax and duplicate label names.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

/// The families of `text` as `prometheus_client` reads them, or `None` (skipped) without it.
fn parse_with_prometheus_client(text: &str, test: &str) -> Option<Vec<Value>> {
    let python = tools::require(
        tools::python_with("prometheus_client"),
        test,
        "no Python with prometheus_client (pip install prometheus_client==0.26.0)",
    )?;
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap())
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The value of the one sample line that starts with `prefix` (labels included).
fn value(text: &str, prefix: &str) -> f64 {
    let found = lines_starting(text, prefix);
    assert_eq!(found.len(), 1, "one line {prefix}... in:\n{text}");
    found[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn engine_metrics_join_the_scrape_with_a_model_label_and_one_header_per_family() {
    let m = Setup::new(&[("chat", json!({})), ("embed", json!({}))]).start();
    m.wait_ready(Duration::from_secs(30));
    let text = std::cell::RefCell::new(String::new());
    run_async(Duration::from_secs(60), async {
        let c = client();
        let url = m.url("/v1/completions");
        for body in [
            r#"{"model": "chat", "prompt": "a"}"#,
            r#"{"model": "chat", "prompt": "b", "stream": true, "mock_chunks": 5}"#,
            r#"{"model": "embed", "prompt": "c"}"#,
        ] {
            assert_eq!(post(&c, &url, body).await.status, 200);
        }
        let scrape = get(&c, &m.url("/metrics")).await;
        assert_eq!(scrape.status, 200);
        assert!(
            scrape.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        *text.borrow_mut() = scrape.body;
    });
    let text = text.into_inner();

    // modelmux's own families come first, then the engines', each header once.
    assert!(text.starts_with("# HELP modelmux_requests_total"), "{text}");
    let mut types = BTreeMap::new();
    for line in lines_starting(&text, "# TYPE ") {
        let name = line.split(' ').nth(2).unwrap();
        *types.entry(name).or_insert(0) += 1;
    }
    assert!(types.values().all(|n| *n == 1), "{types:?}");
    assert_eq!(lines_starting(&text, "# HELP ").len(), types.len());
    for family in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:time_to_first_token_seconds",
        "modelmux_engine_scrape_errors_total",
    ] {
        assert!(types.contains_key(family), "{family} missing:\n{text}");
    }
    // Every engine sample names its model first; the engine's own labels follow.
    let chat = r#"{model="chat",model_name="chat",engine="0"}"#;
    assert_eq!(
        value(&text, &format!("vllm:generation_tokens_total{chat}")),
        9.0
    );
    assert_eq!(
        value(&text, &format!("vllm:prompt_tokens_total{chat}")),
        2.0
    );
    assert_eq!(
        value(
            &text,
            r#"vllm:generation_tokens_total{model="embed",model_name="embed",engine="0"}"#
        ),
        4.0
    );
    assert_eq!(
        value(
            &text,
            r#"vllm:time_to_first_token_seconds_count{model="chat","#
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            r#"modelmux_engine_scrape_errors_total{model="chat"}"#
        ),
        0.0
    );
    for line in text.lines().filter(|l| l.starts_with("vllm:")) {
        assert!(
            line.contains("{model=\"chat\",") || line.contains("{model=\"embed\","),
            "{line}"
        );
    }

    let test = "engine_metrics_join_the_scrape (prometheus_client check)";
    let Some(families) = parse_with_prometheus_client(&text, test) else {
        return;
    };
    let names: Vec<&str> = families
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        names.len(),
        unique.len(),
        "a family split in two: {names:?}"
    );
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} not parsed: {names:?}"))
    };
    // prometheus_client names counters without `_total`.
    assert_eq!(family("vllm:generation_tokens")["type"], "counter");
    assert_eq!(family("vllm:num_requests_waiting")["type"], "gauge");
    let ttft = family("vllm:time_to_first_token_seconds");
    assert_eq!(ttft["type"], "histogram");
    let samples = ttft["samples"].as_array().unwrap();
    for model in ["chat", "embed"] {
        let count = samples
            .iter()
            .filter(|s| s["labels"]["model"] == model)
            .count();
        // 22 buckets, +Inf, _count, _sum.
        assert_eq!(count, 25, "{model}: {ttft}");
    }
    assert!(samples.iter().all(|s| {
        s["name"]
            .as_str()
            .unwrap()
            .starts_with("vllm:time_to_first_token_seconds_")
    }));
    for f in families
        .iter()
        .filter(|f| f["name"].as_str().unwrap().starts_with("vllm:"))
    {
        assert_ne!(f["type"], "untyped", "{f}");
        for s in f["samples"].as_array().unwrap() {
            assert!(
                s["labels"]["model"] == s["labels"]["model_name"],
                "model label: {s}"
            );
        }
    }
}

#[test]
fn a_slow_engine_is_left_out_and_counted_and_a_loading_one_is_not_asked() {
    let m = Setup::new(&[
        ("fast", json!({})),
        ("slow", json!({"env": {"MOCK_METRICS_DELAY_MS": "20000"}})),
        (
            "loading",
            json!({"env": {"MOCK_STARTUP_DELAY_MS": "600000"}}),
        ),
    ])
    .start();
    let health = m.url("/health");
    wait_until(Duration::from_secs(30), "fast and slow ready", || {
        run_probe(&health).is_some_and(|h| {
            h["models"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["state"] == "ready")
                .count()
                == 2
        })
    });
    run_async(Duration::from_secs(60), async {
        let c = client();
        for round in 1..=2 {
            let started = Instant::now();
            let scrape = get(&c, &m.url("/metrics")).await;
            let took = started.elapsed();
            assert_eq!(scrape.status, 200);
            // The slow engine would take 20 s; the budget is 1 s.
            assert!(took < Duration::from_secs(10), "scrape took {took:?}");
            let text = scrape.body;
            assert_eq!(
                value(
                    &text,
                    r#"modelmux_engine_scrape_errors_total{model="slow"}"#
                ),
                f64::from(round)
            );
            assert_eq!(
                value(
                    &text,
                    r#"modelmux_engine_scrape_errors_total{model="fast"}"#
                ),
                0.0
            );
            assert_eq!(
                value(
                    &text,
                    r#"modelmux_engine_scrape_errors_total{model="loading"}"#
                ),
                0.0
            );
            assert_eq!(
                value(&text, r#"vllm:num_requests_running{model="fast","#),
                0.0
            );
            assert!(!text.contains("model_name=\"slow\""), "{text}");
            assert!(!text.contains("model_name=\"loading\""), "{text}");
        }
    });
}

/// `/health`'s JSON, whatever its status.
fn run_probe(url: &str) -> Option<Value> {
    use std::io::Read;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    serde_json::from_str(buf.split("\r\n\r\n").nth(1)?).ok()
}
