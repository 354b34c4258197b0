//! How modelmux treats its engines, seen from outside: usage errors, log levels, the root
//! cause of a failure, the state the moment an engine dies, `/v1/models` as the engine
//! answers it, fixed engine ports, CPU cores, the `vllm serve` spelling.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Setup, alive, blocking_get_status, client, get, post, report, run_async, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn file(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

fn health(m: &common::Modelmux) -> Value {
    wait_until(T, "modelmux listening", || {
        blocking_get_status(&m.url("/health")).is_some()
    });
    let mut out = Value::Null;
    run_async(T, async {
        out = get(&client(), &m.url("/health")).await.json()
    });
    out
}

/// `modelmux plan --json` with the same configuration as `setup` would run with.
fn plan(setup: &Setup, port: u16) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = setup
        .command(dir.path(), port)
        .args(["plan", "--json"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_usage_error_fails_at_once_with_the_engine_line_once() {
    let mut m = Setup::new(&[
        ("good", json!({})),
        (
            "typo",
            json!({"params": "--served-model-name typo --no-such-flag",
                   "env": {"MOCK_REJECT_FLAG": "--no-such-flag"}}),
        ),
    ])
    .env("MODELMUX_RESTART_DELAY", "5")
    .env("MODELMUX_MAX_RESTARTS", "5")
    .start();
    let started = Instant::now();
    assert_eq!(m.wait_exit(T), Some(1));
    // No restart back-off was waited for (the first would be 5 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let log = m.log();
    assert!(!log.contains("restart 1 in"), "{log}");
    let starts = log
        .lines()
        .filter(|l| l.contains("engine started") && l.contains("model=typo"))
        .count();
    assert_eq!(starts, 1, "{log}");
    let failure = "root cause: api_server.py: error: unrecognized arguments: --no-such-flag";
    assert_eq!(
        log.matches(failure).count(),
        1,
        "the message is printed once:\n{log}"
    );
    let last = log
        .lines()
        .rfind(|l| l.contains("exiting with status 1"))
        .unwrap();
    assert!(
        last.contains("model typo failed: exited (exit code 2) while starting: a usage error"),
        "{last}"
    );
    assert!(last.contains(failure), "{last}");
}

#[test]
fn a_usage_error_after_the_engine_was_ready_once_is_restarted() {
    // Exit code 2 from an engine that has been ready is not a usage error: restart it.
    let dir = tempfile::tempdir().unwrap();
    let m = Setup::new(&[(
        "a",
        json!({"env": {"MOCK_EVENTS_FILE": file(&dir, "events")}}),
    )])
    .start();
    m.wait_ready(T);
    run_async(T, async {
        let c = client();
        let body = r#"{"model": "a", "mock_exit": true, "mock_exit_code": 2}"#;
        let a = post(&c, &m.url("/v1/completions"), body).await;
        assert_eq!(a.status, 502, "{}", a.body);
    });
    wait_until(T, "restarted", || {
        m.log()
            .contains("engine exited (exit code 2); restart 1 in")
    });
    m.wait_ready(T);
}

/// Runs one engine that prints `lines` on stdout and returns modelmux's JSON log records
/// of engine lines.
fn engine_records(lines: &[&str], extra: Value) -> Vec<Value> {
    let mut env = json!({"MOCK_STDOUT_LINES": lines.join("\n"), "MOCK_ACCESS_LOG": "1"});
    for (k, v) in extra.as_object().unwrap() {
        env[k] = v.clone();
    }
    let mut m = Setup::new(&[("a", json!({"env": env}))])
        .env("MODELMUX_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,engine=debug")
        .start();
    m.wait_ready(T);
    run_async(T, async {
        let a = post(&client(), &m.url("/v1/completions"), r#"{"model": "a"}"#).await;
        assert_eq!(a.status, 200);
    });
    wait_until(T, "access line of the request", || {
        m.log().contains("POST /v1/completions HTTP/1.1")
    });
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(T), Some(0));
    m.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["model"] == "a" && r["stream"].is_string())
        .collect()
}

fn level_of(records: &[Value], text: &str) -> String {
    records
        .iter()
        .find(|r| r["message"].as_str().is_some_and(|m| m.contains(text)))
        .unwrap_or_else(|| panic!("no engine line with {text:?} in {records:#?}"))["level"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn engine_lines_keep_their_level_and_own_probes_are_debug() {
    let records = engine_records(
        &[
            "INFO 01-15 10:23:45 [api_server.py:1] vLLM API server version 0.32.0",
            "(APIServer pid=7) WARNING 01-15 10:23:45 [arg_utils.py:9] a deprecated flag",
            "(EngineCore_0 pid=8) ERROR 01-15 10:23:46 [core.py:700] EngineCore hit a snag",
            "Traceback (most recent call last):",
            "  File \"core.py\", line 700, in run",
            "ValueError: not really",
        ],
        json!({}),
    );
    assert_eq!(level_of(&records, "vLLM API server version"), "INFO");
    assert_eq!(level_of(&records, "a deprecated flag"), "WARN");
    assert_eq!(level_of(&records, "EngineCore hit a snag"), "ERROR");
    assert_eq!(level_of(&records, "Traceback"), "ERROR");
    assert_eq!(level_of(&records, "File \"core.py\""), "ERROR");
    assert_eq!(level_of(&records, "ValueError: not really"), "ERROR");
    // modelmux's own health probes: debug; a client's request: info, as vLLM wrote it.
    assert_eq!(level_of(&records, "\"GET /health HTTP/1.1\" 200"), "DEBUG");
    assert_eq!(
        level_of(&records, "\"GET /v1/models HTTP/1.1\" 200"),
        "DEBUG"
    );
    assert_eq!(
        level_of(&records, "\"POST /v1/completions HTTP/1.1\" 200"),
        "INFO"
    );
}

#[test]
fn the_failure_names_the_root_cause_the_engine_wrote_on_stdout() {
    let root =
        "ValueError: Available memory 0.5 GiB is less than requested memory for kv cache 64 GiB";
    let stdout = [
        "INFO 01-15 10:00:00 [core.py:1] Initializing the engine",
        "(EngineCore_0 pid=9) ERROR 01-15 10:00:01 [core.py:708] EngineCore failed to start.",
        "(EngineCore_0 pid=9) ERROR 01-15 10:00:01 [core.py:708] Traceback (most recent call last):",
        &format!("(EngineCore_0 pid=9) ERROR 01-15 10:00:01 [core.py:708] {root}"),
        "INFO 01-15 10:00:02 [core.py:1] Cleaning up",
    ];
    let mut m = Setup::new(&[(
        "big",
        json!({"env": {
            "MOCK_STDOUT_LINES": stdout.join("\n"),
            "MOCK_CRASH_AT_START": "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
        }}),
    )])
    .env("MODELMUX_MAX_RESTARTS", "0")
    .start();
    assert_eq!(m.wait_exit(T), Some(1));
    let log = m.log();
    let at = log.find("exiting with status 1").unwrap();
    let message = &log[at..];
    let first = message.lines().next().unwrap();
    assert!(first.contains(&format!("root cause: {root}")), "{first}");
    // Error lines (of both streams) first, then the other last lines.
    let body: Vec<&str> = message.lines().skip(2).map(str::trim).collect();
    let pos = |s: &str| {
        body.iter()
            .position(|l| l.contains(s))
            .unwrap_or_else(|| panic!("{s:?} missing from:\n{message}"))
    };
    assert!(pos("EngineCore failed to start") < pos("Initializing the engine"));
    assert!(pos("See root cause above") < pos("Initializing the engine"));
    assert!(pos(root) < pos("Cleaning up"));
}

#[test]
fn the_moment_an_engine_dies_its_model_is_restarting_and_requests_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let m = Setup::new(&[(
        "a",
        json!({"env": {
            "MOCK_SPAWN_CHILD": "1",
            "MOCK_CHILD_IGNORE_SIGTERM": "1",
            "MOCK_REPORT_FILE": file(&dir, "a.json"),
        }}),
    )])
    .env("MODELMUX_SHUTDOWN_GRACE", "4")
    .start();
    m.wait_ready(T);
    let r = report(&dir.path().join("a.json"));
    let (engine, child) = (
        r["pid"].as_u64().unwrap() as u32,
        r["child_pid"].as_u64().unwrap() as u32,
    );
    kill(Pid::from_raw(engine as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    wait_until(Duration::from_secs(1), "/health 503 within 1 s", || {
        blocking_get_status(&m.url("/health")) == Some(503)
    });
    let h = health(&m);
    assert_eq!(h["models"][0]["state"], "restarting", "{h}");
    assert_eq!(h["models"][0]["pid"], Value::Null);
    // The leftover child ignores SIGTERM and is still being cleaned up (SIGKILL comes
    // after the 4 s grace): the state did not wait for it.
    assert!(alive(child), "the leftover is still there");
    run_async(T, async {
        let a = post(&client(), &m.url("/v1/completions"), r#"{"model": "a"}"#).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(a.headers.contains_key("retry-after"));
    });
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "checked while cleaning up"
    );
    wait_until(T, "leftover killed after the grace", || !alive(child));
    m.wait_ready(T);
}

#[test]
fn v1_models_keeps_the_engine_fields_and_adds_the_state() {
    let m = Setup::new(&[
        (
            "chat",
            json!({"env": {"MOCK_MAX_MODEL_LEN": "8192"},
                   "fine_tune_weights": [{"model_name": "chat-sql", "model_path": "org/sql"}]}),
        ),
        ("slow", json!({"env": {"MOCK_STARTUP_DELAY_MS": "600000"}})),
    ])
    .start();
    wait_until(T, "chat ready", || {
        health(&m)["models"][0]["state"] == "ready"
    });
    run_async(T, async {
        let v = get(&client(), &m.url("/v1/models")).await.json();
        let data = v["data"].as_array().unwrap();
        let by_id = |id: &str| data.iter().find(|d| d["id"] == id).unwrap().clone();
        let chat = by_id("chat");
        assert_eq!(chat["root"], "org/chat", "{chat}");
        assert_eq!(chat["parent"], Value::Null);
        assert_eq!(chat["max_model_len"], 8192);
        assert_eq!(chat["owned_by"], "vllm");
        assert!(chat["permission"].is_array());
        assert_eq!(chat["state"], "ready");
        let sql = by_id("chat-sql");
        assert_eq!(sql["root"], "org/sql");
        assert_eq!(sql["parent"], "chat");
        assert_eq!(sql["max_model_len"], 8192);
        // Not ready yet: modelmux's own entry, with its state.
        let slow = by_id("slow");
        assert_eq!(slow["owned_by"], "modelmux");
        assert_eq!(slow["state"], "starting");
        let one = get(&client(), &m.url("/v1/models/chat-sql")).await.json();
        assert_eq!(one["parent"], "chat");
    });
}

#[test]
fn plan_and_serve_use_the_same_engine_ports() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&[
        (
            "a",
            json!({"env": {"MOCK_REPORT_FILE": file(&dir, "a.json")}}),
        ),
        (
            "b",
            json!({"env": {"MOCK_REPORT_FILE": file(&dir, "b.json")}}),
        ),
    ]);
    let port = common::port_block();
    let planned = plan(&setup, port);
    let ports: Vec<u64> = (0..2)
        .map(|i| planned["models"][i]["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [u64::from(port) + 1, u64::from(port) + 2]);
    assert_eq!(plan(&setup, port), planned, "the plan is deterministic");
    let m = setup.start_on(port);
    m.wait_ready(T);
    let h = health(&m);
    for (i, name) in ["a.json", "b.json"].iter().enumerate() {
        assert_eq!(h["models"][i]["port"].as_u64(), Some(ports[i]));
        let argv: Vec<String> =
            serde_json::from_value(report(&dir.path().join(name))["argv"].clone()).unwrap();
        assert!(
            argv.windows(2)
                .any(|w| w[0] == "--port" && w[1] == ports[i].to_string()),
            "{argv:?}"
        );
    }
}

#[test]
fn the_engine_base_port_moves_them_around_the_health_port() {
    let setup = Setup::new(&[("a", json!({})), ("b", json!({}))]);
    let base = common::port_block();
    let setup = setup
        .env("MODELMUX_ENGINE_BASE_PORT", base + 4)
        .env("HEALTH_CHECK_PORT", base + 5);
    let p = plan(&setup, base);
    assert_eq!(p["models"][0]["port"].as_u64(), Some(u64::from(base) + 4));
    assert_eq!(p["models"][1]["port"].as_u64(), Some(u64::from(base) + 6));
}

#[test]
fn a_busy_planned_port_is_a_clear_error_before_anything_starts() {
    let port = common::port_block();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", port + 2)).unwrap();
    let mut m = Setup::new(&[("a", json!({})), ("b", json!({}))]).start_on(port);
    assert_eq!(m.wait_exit(T), Some(1));
    let log = m.log();
    assert!(
        log.contains(&format!(
            "engine port 127.0.0.1:{} of model b is in use",
            port + 2
        )),
        "{log}"
    );
    assert!(log.contains("MODELMUX_ENGINE_BASE_PORT"), "{log}");
    assert!(
        !log.contains("engine started"),
        "nothing was started: {log}"
    );
}

#[test]
fn cpu_engines_get_disjoint_cores_and_a_model_env_wins() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&[
        (
            "a",
            json!({"env": {"MOCK_REPORT_FILE": file(&dir, "a.json")}}),
        ),
        (
            "b",
            json!({"env": {"MOCK_REPORT_FILE": file(&dir, "b.json")}}),
        ),
        (
            "own",
            json!({"env": {"VLLM_CPU_OMP_THREADS_BIND": "0-1|2-3"}}),
        ),
    ]);
    let port = common::port_block();
    let p = plan(&setup, port);
    let bind = |i: usize| {
        p["models"][i]["env"]["VLLM_CPU_OMP_THREADS_BIND"]
            .as_str()
            .unwrap_or_else(|| panic!("no binding in {}", p["models"][i]))
            .to_string()
    };
    assert_eq!(bind(2), "0-1|2-3", "a model's own env wins");
    let allowed = cpus_allowed();
    let (a, b) = (
        modelmux::cpus::parse_list(&bind(0)),
        modelmux::cpus::parse_list(&bind(1)),
    );
    assert!(!a.is_empty() && !b.is_empty());
    assert!(
        a.iter().chain(&b).all(|c| allowed.contains(c)),
        "{a:?} {b:?} {allowed:?}"
    );
    if allowed.len() >= 2 {
        assert!(a.iter().all(|c| !b.contains(c)), "disjoint: {a:?} {b:?}");
    }
    // The text plan shows it too, and serve gives the engines exactly the plan's.
    let m = setup.start_on(port);
    m.wait_ready(T);
    assert_eq!(
        report(&dir.path().join("a.json"))["omp_threads_bind"],
        bind(0)
    );
    assert_eq!(
        report(&dir.path().join("b.json"))["omp_threads_bind"],
        bind(1)
    );
}

fn cpus_allowed() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    modelmux::cpus::parse_list(list)
}

#[test]
fn serve_commands_take_the_model_positionally() {
    let dir = tempfile::tempdir().unwrap();
    let m = Setup::new(&[(
        "a",
        json!({"env": {"MOCK_REPORT_FILE": file(&dir, "a.json")}}),
    )])
    .env("MODELMUX_ENGINE_CMD", format!("{} serve", common::MOCK))
    .start();
    m.wait_ready(T);
    let r = report(&dir.path().join("a.json"));
    let argv: Vec<String> = serde_json::from_value(r["argv"].clone()).unwrap();
    assert_eq!(
        argv[1..3],
        ["serve".to_string(), "org/a".to_string()],
        "{argv:?}"
    );
    assert!(!argv.contains(&"--model".to_string()), "{argv:?}");
    assert_eq!(r["model"], "org/a");
}
