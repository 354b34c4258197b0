//! On-demand models through the real binary and mock-vllm (SPEC §9): listed and counted
//! ready while unloaded, loaded by their first request, unloaded when idle (stopped, or put
//! to sleep and woken), taking turns on a GPU they cannot share (the mocks keep a GPU memory
//! ledger and fail as vLLM does when an engine does not fit), and never unloaded while a
//! request is in flight.

mod common;

use std::time::Duration;

use common::raw::{Wire, post as raw_post};
use common::runtime::{
    ADMIN_KEY, admin, complete, get_blocking, health, metric, model, state_becomes, wait_for,
};
use common::{Modelmux, Setup, client, run_async};
use modelmux::weights::fixtures::{LLAMA_3_8B, QWEN2_0_5B};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const TEST: Duration = Duration::from_secs(120);

fn pid(m: &Modelmux, name: &str) -> Option<u64> {
    model(m, name)["pid"].as_u64()
}

fn port(m: &Modelmux, name: &str) -> u16 {
    model(m, name)["port"].as_u64().unwrap() as u16
}

fn on_demand(name: &str, extra: Value) -> (&str, Value) {
    let mut v = json!({"load": "on_demand"});
    if let Value::Object(fields) = extra {
        for (k, x) in fields {
            v[k] = x;
        }
    }
    (name, v)
}

#[test]
fn an_on_demand_model_is_listed_counts_as_ready_and_loads_on_its_first_request() {
    run_async(TEST, async {
        let c = client();
        let m = Setup::new(&[("always", json!({})), on_demand("lazy", json!({}))]).start();
        m.wait_ready(T);
        let lazy = model(&m, "lazy");
        assert_eq!(
            (
                lazy["state"].as_str(),
                lazy["pid"].as_u64(),
                lazy["load"].as_str()
            ),
            (Some("unloaded"), None, Some("on_demand"))
        );
        assert_eq!(
            health(&m)["status"],
            "ready",
            "unloaded on-demand models count as ready"
        );
        let list = common::get(&c, &m.url("/v1/models")).await.json();
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["always", "lazy"]);
        assert_eq!(list["data"][1]["state"], "unloaded");
        assert_eq!(
            metric(&m, r#"modelmux_model_loads_total{model="lazy"}"#),
            Some(0.0)
        );

        let r = complete(&c, &m, "lazy").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-mock-served-by"], "lazy");
        assert_eq!(model(&m, "lazy")["state"], "ready");
        assert!(pid(&m, "lazy").is_some());
        assert_eq!(
            metric(&m, r#"modelmux_model_loads_total{model="lazy"}"#),
            Some(1.0)
        );
        assert_eq!(
            metric(&m, r#"modelmux_model_load_seconds_count{model="lazy"}"#),
            Some(1.0)
        );
        // Streaming requests wait for the load too.
        let m2 = Setup::new(&[on_demand("s", json!({}))]).start();
        m2.wait_ready(T);
        let r = common::post(
            &c,
            &m2.url("/v1/completions"),
            r#"{"model": "s", "stream": true, "mock_chunks": 3}"#,
        )
        .await;
        assert_eq!(r.status, 200);
        // A quick load (well within MODELMUX_SSE_KEEPALIVE) keeps the engine's own head.
        assert_eq!(r.headers["x-mock-served-by"], "s");
        assert!(
            r.body.contains("tok2") && r.body.ends_with("data: [DONE]\n\n"),
            "{}",
            r.body
        );
    });
}

#[test]
fn an_idle_on_demand_model_is_stopped_and_loaded_again() {
    run_async(TEST, async {
        let c = client();
        let m = Setup::new(&[on_demand("lazy", json!({"idle_unload": 1}))]).start();
        m.wait_ready(T);
        assert_eq!(complete(&c, &m, "lazy").await.status, 200);
        let p0 = pid(&m, "lazy").unwrap();
        let lazy = state_becomes(&m, "lazy", "unloaded", T).await;
        assert_eq!(lazy["pid"], Value::Null);
        wait_for(T, "the engine gone", || !common::alive(p0 as u32)).await;
        // Log lines go out in batches: wait for the line.
        wait_for(T, "the log line idle for", || m.log().contains("idle for")).await;
        assert_eq!(
            metric(&m, r#"modelmux_model_unloads_total{model="lazy"}"#),
            Some(1.0)
        );
        assert_eq!(complete(&c, &m, "lazy").await.status, 200);
        assert_ne!(pid(&m, "lazy"), Some(p0));
        assert_eq!(
            metric(&m, r#"modelmux_model_loads_total{model="lazy"}"#),
            Some(2.0)
        );
    });
}

#[test]
fn an_idle_model_with_unload_sleep_sleeps_and_wakes_in_the_same_engine() {
    run_async(TEST, async {
        let c = client();
        let m = Setup::new(&[on_demand(
            "nap",
            json!({"idle_unload": 1, "unload": "sleep"}),
        )])
        .start();
        m.wait_ready(T);
        assert_eq!(complete(&c, &m, "nap").await.status, 200);
        let p0 = pid(&m, "nap").unwrap();
        state_becomes(&m, "nap", "sleeping", T).await;
        assert_eq!(pid(&m, "nap"), Some(p0), "same engine, asleep");
        let (_, body) = get_blocking(port(&m, "nap"), "/is_sleeping");
        assert_eq!(body, r#"{"is_sleeping":true}"#);
        assert_eq!(health(&m)["status"], "ready");
        // Its sleep endpoints are never reachable through the front.
        let r = common::post(&c, &m.url("/wake_up"), "{}").await;
        assert_eq!(r.status, 404);
        assert_eq!(
            get_blocking(port(&m, "nap"), "/is_sleeping").1,
            r#"{"is_sleeping":true}"#
        );

        let r = complete(&c, &m, "nap").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(pid(&m, "nap"), Some(p0), "woken, not restarted");
        assert_eq!(
            get_blocking(port(&m, "nap"), "/is_sleeping").1,
            r#"{"is_sleeping":false}"#
        );
        assert_eq!(
            metric(&m, r#"modelmux_model_loads_total{model="nap"}"#),
            Some(2.0)
        );
        assert_eq!(
            metric(&m, r#"modelmux_model_unloads_total{model="nap"}"#),
            Some(1.0)
        );
        // The engine got sleep mode and the development endpoints, nothing else changed.
        let argv = common::get(&c, &m.url("/v1/models")).await;
        assert_eq!(argv.status, 200);
        // Log lines go out in batches (every 20 ms): wait for them rather than race.
        common::wait_until(
            Duration::from_secs(5),
            "the sleep and wake log lines",
            || {
                let log = m.log();
                log.contains("engine asleep after") && log.contains("engine awake after")
            },
        );
    });
}

#[test]
fn a_model_with_requests_in_flight_is_never_unloaded() {
    run_async(TEST, async {
        let c = client();
        let m = Setup::new(&[on_demand("busy", json!({"idle_unload": 0.5}))]).start();
        m.wait_ready(T);
        let url = m.url("/v1/completions");
        // A stream of about 3 s: six times the idle time, it must not be cut.
        let stream = common::post(
            &c,
            &url,
            r#"{"model": "busy", "stream": true, "mock_chunks": 15, "mock_delay_ms": 200}"#,
        )
        .await;
        assert_eq!(stream.status, 200);
        assert!(
            stream.body.contains("tok14") && stream.body.contains("[DONE]"),
            "{}",
            stream.body
        );
        assert_eq!(
            metric(&m, r#"modelmux_model_unloads_total{model="busy"}"#),
            Some(0.0)
        );
        // Idle from now: unloaded.
        state_becomes(&m, "busy", "unloaded", T).await;
    });
}

/// Two on-demand Llama-3-8B models (18 GiB each) and a small always-loaded one on one GPU of
/// `gib` GiB: the on-demand ones cannot be loaded together. The mocks keep the GPU's memory
/// in `mem`: an engine that does not fit fails at start as vLLM does.
fn two_that_take_turns(
    gib: u64,
    unload: &str,
    mem: &std::path::Path,
) -> (Modelmux, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    QWEN2_0_5B.write(&root.path().join("qwen"), 1).unwrap();
    LLAMA_3_8B.write(&root.path().join("llama-a"), 1).unwrap();
    LLAMA_3_8B.write(&root.path().join("llama-b"), 1).unwrap();
    let entry = |dir: &str, name: &str, extra: Value| {
        let mut v = json!({"model_path": dir, "params": format!("--served-model-name {name} --max-model-len 4096")});
        if let Value::Object(f) = extra {
            for (k, x) in f {
                v[k] = x;
            }
        }
        v
    };
    let models = json!({"models": [
        entry("qwen", "q", json!({})),
        entry("llama-a", "a", json!({"load": "on_demand", "unload": unload})),
        entry("llama-b", "b", json!({"load": "on_demand", "unload": unload})),
    ]});
    let mut setup = Setup::new(&[])
        .env("MODELMUX_GPUS", format!("1x{gib}GiB"))
        .env("MODELMUX_MODEL_ROOT", root.path().display())
        .env("MOCK_GPU_MEMORY_DIR", mem.display())
        .env("MOCK_GPU_MEMORY_BYTES", gib << 30)
        .env("MODELMUX_ADMIN_KEY", ADMIN_KEY);
    setup
        .env
        .insert("MULTI_MODEL_CONFIG".into(), models.to_string());
    let m = setup.start();
    m.wait_ready(T);
    (m, root)
}

/// Bytes the mock engine on `port` holds on its GPU.
fn held(port: u16) -> u64 {
    let (_, body) = get_blocking(port, "/mock/memory");
    serde_json::from_str::<Value>(&body).map_or(0, |v| v["bytes"].as_u64().unwrap_or(0))
}

#[test]
fn on_demand_models_that_do_not_fit_together_take_turns() {
    run_async(TEST, async {
        let c = client();
        let mem = tempfile::tempdir().unwrap();
        let (m, _root) = two_that_take_turns(24, "stop", mem.path());
        let listed = admin(&c, &m, "GET", "/admin/models", "").await.json();
        assert_eq!(listed["models"][1]["takes_turns"], true, "{listed}");
        assert_eq!(complete(&c, &m, "a").await.status, 200);
        let a0 = pid(&m, "a").unwrap();
        // b needs a's room: a (idle) is stopped first, then b starts; no engine runs out
        // of memory on the way.
        let r = complete(&c, &m, "b").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(model(&m, "a")["state"], "unloaded");
        assert!(!common::alive(a0 as u32));
        // Log lines go out in batches: wait for the line.
        wait_for(T, "the log line to make room for b", || {
            m.log().contains("to make room for b")
        })
        .await;
        // And back: the least recently used (b now) makes room for a.
        assert_eq!(complete(&c, &m, "a").await.status, 200);
        assert_eq!(model(&m, "b")["state"], "unloaded");
        assert_eq!(
            model(&m, "q")["state"],
            "ready",
            "the always-loaded model is never unloaded"
        );
        assert_eq!(
            metric(&m, r#"modelmux_model_unloads_total{model="a"}"#),
            Some(1.0)
        );
        assert_eq!(
            metric(&m, r#"modelmux_model_unloads_total{model="b"}"#),
            Some(1.0)
        );
        assert!(
            !m.log().contains("Free memory on device"),
            "an engine ran out of memory:\n{}",
            m.log()
        );
    });
}

#[test]
fn sleeping_models_take_turns_and_a_busy_one_is_not_unloaded() {
    run_async(TEST, async {
        let c = client();
        let mem = tempfile::tempdir().unwrap();
        let (m, _root) = two_that_take_turns(40, "sleep", mem.path());
        assert_eq!(complete(&c, &m, "a").await.status, 200);
        let (a0, a_port) = (pid(&m, "a").unwrap(), port(&m, "a"));
        let full = held(a_port);
        assert!(full > 20 << 30, "a holds its share: {full}");
        // a is busy with a long stream: b waits for it rather than unloading it.
        let url = m.url("/v1/completions");
        let slow = {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                common::post(
                    &c,
                    &url,
                    r#"{"model": "a", "stream": true, "mock_chunks": 8, "mock_delay_ms": 250}"#,
                )
                .await
            })
        };
        wait_for(T, "a busy", || {
            metric(&m, r#"modelmux_inflight_requests{model="a"}"#) == Some(1.0)
        })
        .await;
        let b = {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(
                async move { common::post(&c, &url, r#"{"model": "b", "prompt": "x"}"#).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(model(&m, "a")["state"], "ready", "busy: not unloaded");
        assert_eq!(model(&m, "b")["state"], "unloaded", "b waits its turn");
        let stream = slow.await.unwrap();
        assert!(
            stream.body.contains("tok7") && stream.body.contains("[DONE]"),
            "{}",
            stream.body
        );
        let rb = b.await.unwrap();
        assert_eq!(rb.status, 200, "{}", rb.body);
        // The plan left room for a sleeping model's CUDA context: a was put to sleep, not
        // stopped, and its memory released.
        let a = model(&m, "a");
        assert_eq!(
            (a["state"].as_str(), a["pid"].as_u64()),
            (Some("sleeping"), Some(a0)),
            "{a}"
        );
        assert!(held(a_port) < full / 8, "sleep released a's memory");
        // a's next request wakes it (b, idle, goes to sleep to make room): same engine.
        assert_eq!(complete(&c, &m, "a").await.status, 200);
        assert_eq!(pid(&m, "a"), Some(a0));
        assert_eq!(model(&m, "b")["state"], "sleeping");
        assert!(held(a_port) >= full);
        assert!(
            !m.log().contains("Free memory on device") && !m.log().contains("CUDA out of memory"),
            "{}",
            m.log()
        );
    });
}

#[test]
fn an_operator_can_load_stop_and_restart_an_on_demand_model() {
    run_async(TEST, async {
        let c = client();
        let m = Setup::new(&[on_demand("lazy", json!({}))])
            .env("MODELMUX_ADMIN_KEY", ADMIN_KEY)
            .start();
        m.wait_ready(T);
        assert_eq!(
            admin(&c, &m, "POST", "/admin/models/lazy/start", "")
                .await
                .status,
            202
        );
        state_becomes(&m, "lazy", "ready", T).await;
        let p0 = pid(&m, "lazy").unwrap();
        assert_eq!(
            admin(&c, &m, "POST", "/admin/models/lazy/restart", "")
                .await
                .status,
            202
        );
        wait_for(T, "a new engine", || {
            pid(&m, "lazy").is_some_and(|p| p != p0) && model(&m, "lazy")["state"] == "ready"
        })
        .await;
        assert_eq!(
            admin(&c, &m, "POST", "/admin/models/lazy/stop", "")
                .await
                .status,
            202
        );
        state_becomes(&m, "lazy", "stopped", T).await;
        // Stopped by an operator: requests do not load it.
        let r = complete(&c, &m, "lazy").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(model(&m, "lazy")["state"], "stopped");
        assert_eq!(common::blocking_get_status(&m.url("/health")), Some(503));
        assert_eq!(
            admin(&c, &m, "POST", "/admin/models/lazy/start", "")
                .await
                .status,
            202
        );
        state_becomes(&m, "lazy", "ready", T).await;
    });
}

#[test]
fn an_on_demand_model_of_another_engine_loads_and_stops_through_its_profile() {
    run_async(TEST, async {
        let c = client();
        // SGLang has no sleep mode: it is unloaded by stopping it, probed on its own
        // health path, and its requests go through the front like a vLLM model's.
        let mock = format!("{} --mock-dialect sglang", common::MOCK);
        let m = Setup::new(&[on_demand(
            "sg",
            json!({"engine": "sglang", "engine_cmd": mock, "idle_unload": 1}),
        )])
        .start();
        m.wait_ready(T);
        assert_eq!(model(&m, "sg")["state"], "unloaded");
        let r = complete(&c, &m, "sg").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-mock-dialect"], "sglang");
        let p0 = pid(&m, "sg").unwrap();
        state_becomes(&m, "sg", "unloaded", T).await;
        wait_for(T, "the engine gone", || !common::alive(p0 as u32)).await;
        let r = complete(&c, &m, "sg").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_ne!(pid(&m, "sg"), Some(p0), "a new engine");
        assert_eq!(
            metric(&m, r#"modelmux_model_loads_total{model="sg"}"#),
            Some(2.0)
        );
    });
}

/// A streaming completion for `model` on a raw connection to the pass-through wire, or to
/// hyper's (`general`), read whole (its chunked body decoded).
fn raw_stream(port: u16, general: bool, model: &str) -> common::raw::Answer {
    let mut w = if general {
        Wire::connect_general(port)
    } else {
        Wire::connect(port)
    };
    let body = json!({"model": model, "stream": true, "mock_chunks": 3}).to_string();
    w.send(&raw_post(
        "/v1/completions",
        "X-Request-Id: early-1\r\n",
        &body,
    ));
    w.answer()
}

/// The events of an SSE body, comments included, in order.
fn events(body: &str) -> Vec<&str> {
    body.split("\n\n").filter(|e| !e.is_empty()).collect()
}

#[test]
fn a_stream_waiting_for_a_slow_load_gets_its_head_early_and_keepalives_on_both_wires() {
    run_async(TEST, async {
        let slow = || json!({"env": {"MOCK_STARTUP_DELAY_MS": "2500"}});
        let m = Setup::new(&[on_demand("pass", slow()), on_demand("general", slow())])
            .env("MODELMUX_SSE_KEEPALIVE", "0.4")
            .start();
        m.wait_ready(T);
        let port = m.port;
        for (model, general) in [("pass", false), ("general", true)] {
            let a = tokio::task::spawn_blocking(move || raw_stream(port, general, model))
                .await
                .unwrap();
            let text = a.text();
            assert_eq!(a.status, 200, "{model}: {text}");
            assert_eq!(
                a.header("content-type"),
                Some("text/event-stream; charset=utf-8"),
                "{model}"
            );
            assert_eq!(a.header("x-request-id"), Some("early-1"), "{model}");
            // The head went out before the engine answered: its own headers never came.
            assert_eq!(a.header("x-mock-served-by"), None, "{model}");
            let ev = events(&text);
            let first_data = ev.iter().position(|e| e.starts_with("data:")).unwrap();
            assert!(first_data >= 2, "{model}: keepalives first: {text}");
            assert!(
                ev[..first_data].iter().all(|e| *e == ": keepalive"),
                "{model}: {text}"
            );
            assert!(
                text.contains("tok2") && text.ends_with("data: [DONE]\n\n"),
                "{model}: {text}"
            );
            assert!(!text.contains("\"error\""), "{model}: {text}");
            assert_eq!(model_state(&m, model), "ready");
        }
        // Once loaded, a stream gets the engine's own head again.
        let a = tokio::task::spawn_blocking(move || raw_stream(port, false, "pass"))
            .await
            .unwrap();
        assert_eq!(a.header("x-mock-served-by"), Some("pass"), "{}", a.text());
        assert!(!a.text().contains(": keepalive"));
    });
}

fn model_state(m: &Modelmux, name: &str) -> String {
    model(m, name)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_stream_whose_load_does_not_finish_in_time_ends_with_an_error_event() {
    run_async(TEST, async {
        let m = Setup::new(&[on_demand(
            "never",
            json!({"env": {"MOCK_STARTUP_DELAY_MS": "600000"}}),
        )])
        .env("MODELMUX_SSE_KEEPALIVE", "0.3")
        .env("MODELMUX_QUEUE_TIMEOUT", "1.5")
        .start();
        m.wait_ready(T);
        let port = m.port;
        for general in [false, true] {
            let a = tokio::task::spawn_blocking(move || raw_stream(port, general, "never"))
                .await
                .unwrap();
            let text = a.text();
            assert_eq!(a.status, 200, "{text}");
            let ev = events(&text);
            let n = ev.len();
            assert!(n >= 3, "{text}");
            assert!(ev[..n - 2].iter().all(|e| *e == ": keepalive"), "{text}");
            assert_eq!(ev[n - 1], "data: [DONE]", "{text}");
            let error: Value = serde_json::from_str(ev[n - 2].strip_prefix("data: ").unwrap())
                .unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(error["error"]["code"], 503, "{text}");
            assert_eq!(error["error"]["type"], "service_unavailable", "{text}");
            assert!(
                error["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("MODELMUX_QUEUE_TIMEOUT"),
                "{text}"
            );
        }
        // A request that does not stream keeps its plain 503 with Retry-After.
        let c = client();
        let r = complete(&c, &m, "never").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.headers["retry-after"], "5");
    });
}

#[test]
fn requests_queue_in_order_for_the_slot_of_a_loading_model() {
    run_async(TEST, async {
        let m = Setup::new(&[on_demand(
            "q",
            // Each answer that does not stream takes 300 ms at the engine, so that the order
            // in which the clients see their answers end is the order the slot was given in
            // (without it, a busy machine could run the next request before the previous
            // client's task got to record its answer).
            json!({"max_concurrency": 1,
                   "env": {"MOCK_STARTUP_DELAY_MS": "2000", "MOCK_RESPONSE_DELAY_MS": "300"}}),
        )])
        .env("MODELMUX_SSE_KEEPALIVE", "0.5")
        .start();
        m.wait_ready(T);
        let queued = || metric(&m, r#"modelmux_queue_length{model="q"}"#);
        assert_eq!(queued(), Some(0.0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (c, url, tx) = (client(), m.url("/v1/completions"), tx.clone());
            // The first streams (its head goes out early), the others do not.
            let body = json!({"model": "q", "stream": i == 0, "prompt": "x", "mock_chunks": 2})
                .to_string();
            tasks.push(tokio::spawn(async move {
                let r = common::post(&c, &url, &body).await;
                tx.send(i).unwrap();
                r
            }));
            // The first waits for the load (holding the slot), the next ones for the slot:
            // all count as queued. Each takes its place before the next comes.
            wait_for(T, "the request queued", || queued() == Some(i as f64 + 1.0)).await;
        }
        assert_eq!(model_state(&m, "q"), "starting");
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let order: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(queued(), Some(0.0));
        let status = common::get(&client(), &m.url("/status")).await.json();
        assert_eq!(status["models"][0]["queue_length"], 0, "{status}");
    });
}
