//! Engine supervision through the real binary and real `mock-vllm` processes: start,
//! readiness, restarts, failure policies, hung engines, shutdown, SIGKILL, PID 1.

mod common;

use std::time::Duration;

use common::{Setup, alive, blocking_get_status, wait_until};
use nix::sys::signal::Signal;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn health(m: &common::Modelmux) -> serde_json::Value {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", m.port)) else {
        return serde_json::Value::Null; // not listening yet
    };
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("health body ({e}): {buf}"))
}

fn file(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

/// Children of `pid` that are zombies.
fn zombie_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.len() > 2 && fields[0] == "Z" && fields[1] == pid.to_string() {
            out.push(child);
        }
    }
    out
}

#[test]
fn engines_start_concurrently_with_their_plan() {
    let dir = tempfile::tempdir().unwrap();
    let env = |name: &str| json!({"env": {"MOCK_STARTUP_DELAY_MS": "3000", "MOCK_REPORT_FILE": file(&dir, name)}});
    let m = Setup::new(&[("a", env("a.json")), ("b", env("b.json"))])
        .env("MODELMUX_API_KEY", "secret")
        .start();
    // Both engines run before either is ready: they were started together.
    let a = common::report(&dir.path().join("a.json"));
    let b = common::report(&dir.path().join("b.json"));
    let h = health(&m);
    assert_eq!(h["models"][0]["state"], "starting", "{h}");
    assert_eq!(h["models"][1]["state"], "starting", "{h}");
    assert_eq!(blocking_get_status(&m.url("/health")), Some(503));
    for r in [&a, &b] {
        assert_eq!(
            r["cuda_visible_devices"], "",
            "MODELMUX_GPUS=none gives an empty list"
        );
        assert_eq!(r["cuda_device_order"], "PCI_BUS_ID");
        let argv: Vec<String> = serde_json::from_value(r["argv"].clone()).unwrap();
        assert!(
            argv.windows(2).any(|w| w == ["--host", "127.0.0.1"]),
            "{argv:?}"
        );
    }
    m.wait_ready(T);
    let h = health(&m);
    assert_eq!(h["models"][0]["pid"], a["pid"]);
    let log = m.log();
    assert!(
        log.contains("mock-vllm: serving [\"a\"]") && log.contains("model=a"),
        "engine lines are re-logged with the model: {log}"
    );
}

#[test]
fn engine_environment_keeps_the_api_and_admin_keys_private() {
    let dir = tempfile::tempdir().unwrap();
    let m = Setup::new(&[(
        "a",
        json!({"env": {"MOCK_REPORT_FILE": file(&dir, "a.json"), "EXTRA": "1"}}),
    )])
    .env("MODELMUX_API_KEY", "secret")
    .env("MODELMUX_ADMIN_KEY", "admin-secret")
    .start();
    let r = common::report(&dir.path().join("a.json"));
    let pid = r["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("EXTRA=1"));
    for key in ["MODELMUX_API_KEY", "MODELMUX_ADMIN_KEY", "secret"] {
        assert!(!environ.contains(key), "{key} must not reach engines");
    }
    drop(m);
}

#[test]
fn crash_after_ready_is_restarted_with_growing_delay() {
    let m = Setup::new(&[("a", json!({"env": {"MOCK_CRASH_AFTER_MS": "300"}}))])
        .env("MODELMUX_RESTART_DELAY", "0.2")
        .env("MODELMUX_MAX_RESTARTS", "20")
        .start();
    wait_until(T, "three restarts", || m.log().contains("restart 3 in"));
    let log = m.log();
    let delays: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("engine exited (exit code 1); restart"))
        .filter_map(|l| l.split(" in ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(delays.len() >= 3, "{log}");
    for (n, d) in delays.iter().take(3).enumerate() {
        let base = 0.2 * f64::from(1 << n);
        assert!(
            *d >= base - 0.05 && *d <= 2.0 * base + 0.05,
            "restart {}: delay {d} outside [{base}, {}]",
            n + 1,
            2.0 * base
        );
    }
    assert!(
        log.contains("mock-vllm: crashing after 300 ms"),
        "stderr is re-logged: {log}"
    );
    wait_until(T, "restart count in /health", || {
        health(&m)["models"][0]["restarts"].as_u64() >= Some(3)
    });
}

#[test]
fn crash_loop_exits_1_with_the_engine_stderr_and_leaves_no_engine() {
    let mut m = Setup::new(&[
        ("good", json!({})),
        (
            "bad",
            json!({"env": {"MOCK_CRASH_AT_START": "boom: CUDA out of memory"}}),
        ),
    ])
    .env("MODELMUX_MAX_RESTARTS", "2")
    .env("MODELMUX_RESTART_DELAY", "0.05")
    .start();
    assert_eq!(m.wait_exit(T), Some(1));
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("exiting with status 1"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("model bad failed: exited (exit code 1) while starting"),
        "{line}"
    );
    assert!(
        log.contains("  boom: CUDA out of memory"),
        "stderr tail is repeated: {log}"
    );
    let pids = m.engine_pids();
    assert!(pids.len() >= 3, "good once, bad three times: {pids:?}");
    wait_until(Duration::from_secs(5), "no engine left", || {
        pids.iter().all(|p| !alive(*p))
    });
}

#[test]
fn degrade_keeps_serving_the_other_models() {
    let m = Setup::new(&[
        (
            "bad",
            json!({"env": {"MOCK_CRASH_AT_START": "bad weights"}}),
        ),
        ("good", json!({})),
    ])
    .env("MODELMUX_ON_FAILURE", "degrade")
    .env("MODELMUX_MAX_RESTARTS", "1")
    .env("MODELMUX_RESTART_DELAY", "0.05")
    .start();
    wait_until(T, "bad model failed", || {
        health(&m)["models"][0]["state"] == "failed"
    });
    wait_until(T, "good model ready", || {
        health(&m)["models"][1]["state"] == "ready"
    });
    assert_eq!(
        blocking_get_status(&m.url("/health")),
        Some(503),
        "not every model is ready"
    );
    common::run_async(T, async {
        let c = common::client();
        let ok = common::post(
            &c,
            &m.url("/v1/completions"),
            r#"{"model": "good", "prompt": "x"}"#,
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let failed = common::post(
            &c,
            &m.url("/v1/completions"),
            r#"{"model": "bad", "prompt": "x"}"#,
        )
        .await;
        assert_eq!(failed.status, 503, "{}", failed.body);
        assert!(failed.headers.contains_key("retry-after"));
        assert!(
            failed.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("failed")
        );
    });
    assert!(m.child.as_ref().map(|c| alive(c.id())).unwrap());
}

#[test]
fn hung_engine_is_restarted() {
    let m = Setup::new(&[("a", json!({"env": {"MOCK_HANG_AFTER_MS": "800"}}))])
        .env("MODELMUX_HEALTH_INTERVAL", "0.2")
        .env("MODELMUX_HEALTH_TIMEOUT", "0.2")
        .start();
    m.wait_ready(T);
    let first = health(&m)["models"][0]["pid"].as_u64().unwrap() as u32;
    wait_until(T, "hang detected", || {
        m.log().contains("stopped answering /health")
    });
    wait_until(T, "restarted", || {
        health(&m)["models"][0]["restarts"].as_u64() >= Some(1)
    });
    wait_until(Duration::from_secs(10), "hung engine gone", || {
        !alive(first)
    });
    let log = m.log();
    assert!(
        log.contains("health probe failed (1/3)") && log.contains("health probe failed (3/3)"),
        "{log}"
    );
}

#[test]
fn startup_timeout_fails_the_model() {
    let mut m = Setup::new(&[("slow", json!({"env": {"MOCK_STARTUP_DELAY_MS": "600000"}}))])
        .env("MODELMUX_STARTUP_TIMEOUT", "1")
        .env("MODELMUX_MAX_RESTARTS", "0")
        .start();
    assert_eq!(m.wait_exit(T), Some(1));
    assert!(
        m.log()
            .contains("model slow failed: was not ready within 1 s"),
        "{}",
        m.log()
    );
}

#[test]
fn sigterm_stops_every_engine_and_its_children_with_sigterm_first() {
    let dir = tempfile::tempdir().unwrap();
    let env = |name: &str| json!({"env": {"MOCK_SPAWN_CHILD": "1", "MOCK_REPORT_FILE": file(&dir, name), "MOCK_EVENTS_FILE": file(&dir, "events")}});
    let mut m = Setup::new(&[("a", env("a.json")), ("b", env("b.json"))]).start();
    m.wait_ready(T);
    let reports = [
        common::report(&dir.path().join("a.json")),
        common::report(&dir.path().join("b.json")),
    ];
    let pids: Vec<u32> = reports
        .iter()
        .flat_map(|r| {
            [
                r["pid"].as_u64().unwrap() as u32,
                r["child_pid"].as_u64().unwrap() as u32,
            ]
        })
        .collect();
    assert!(pids.iter().all(|p| alive(*p)));
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(T), Some(0), "{}", m.log());
    for p in &pids {
        assert!(!alive(*p), "pid {p} outlived modelmux");
    }
    let events = std::fs::read_to_string(dir.path().join("events")).unwrap();
    for r in &reports {
        assert!(
            events.contains(&format!("sigterm {}", r["pid"])),
            "engine got SIGTERM: {events}"
        );
    }
    assert!(m.log().contains("clean shutdown"));
}

#[test]
fn engine_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Setup::new(&[(
        "stubborn",
        json!({"env": {"MOCK_IGNORE_SIGTERM": "1", "MOCK_REPORT_FILE": file(&dir, "r.json"), "MOCK_EVENTS_FILE": file(&dir, "events")}}),
    )])
    .env("MODELMUX_SHUTDOWN_GRACE", "1")
    .start();
    m.wait_ready(T);
    let pid = common::report(&dir.path().join("r.json"))["pid"]
        .as_u64()
        .unwrap() as u32;
    let started = std::time::Instant::now();
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(T), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "SIGKILL came before the grace period"
    );
    assert!(!alive(pid));
    assert!(
        std::fs::read_to_string(dir.path().join("events"))
            .unwrap()
            .contains("sigterm")
    );
    assert!(
        m.log()
            .contains("engine ignored SIGTERM for 1 s; killed (killed by SIGKILL)"),
        "{}",
        m.log()
    );
}

#[test]
fn second_signal_kills_at_once() {
    let mut m = Setup::new(&[("stubborn", json!({"env": {"MOCK_IGNORE_SIGTERM": "1"}}))])
        .env("MODELMUX_SHUTDOWN_GRACE", "60")
        .start();
    m.wait_ready(T);
    let pids = m.engine_pids();
    m.signal(Signal::SIGTERM);
    wait_until(T, "shutdown began", || m.log().contains("SIGTERM received"));
    m.signal(Signal::SIGINT);
    assert_eq!(m.wait_exit(Duration::from_secs(10)), Some(1));
    wait_until(Duration::from_secs(5), "engine killed", || {
        pids.iter().all(|p| !alive(*p))
    });
}

#[test]
fn sigkill_of_modelmux_leaves_no_engine() {
    let dir = tempfile::tempdir().unwrap();
    let env = |name: &str| json!({"env": {"MOCK_IGNORE_SIGTERM": "1", "MOCK_REPORT_FILE": file(&dir, name)}});
    let mut m = Setup::new(&[("a", env("a.json")), ("b", env("b.json"))]).start();
    m.wait_ready(T);
    let pids: Vec<u32> = ["a.json", "b.json"]
        .iter()
        .map(|f| common::report(&dir.path().join(f))["pid"].as_u64().unwrap() as u32)
        .collect();
    m.signal(Signal::SIGKILL);
    assert_eq!(m.wait_exit(T), None);
    wait_until(
        Duration::from_secs(2),
        "engines gone within 2 s of SIGKILL",
        || pids.iter().all(|p| !alive(*p)),
    );
}

#[test]
fn orphans_of_engines_are_reaped() {
    let m = Setup::new(&[(
        "a",
        json!({"env": {"MOCK_SPAWN_CHILD": "1", "MOCK_CRASH_AFTER_MS": "500"}}),
    )])
    .env("MODELMUX_RESTART_DELAY", "0.5")
    .start();
    wait_until(T, "first crash", || m.log().contains("restart 1 in"));
    wait_until(Duration::from_secs(5), "no zombie under modelmux", || {
        zombie_children(m.pid()).is_empty()
    });
}

/// modelmux as PID 1 of a fresh PID namespace: it handles SIGTERM, reaps an orphaned engine
/// child, and leaves no zombie.
#[test]
fn pid1_in_a_pid_namespace_reaps_orphans_and_handles_sigterm() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { nix::libc::geteuid() } != 0 {
        eprintln!("skipped: PID-namespace test needs root");
        return;
    }
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: unshare --pid --fork --mount-proc is not possible here ({probe:?})");
        return;
    }
    let setup = Setup::new(&[(
        "a",
        json!({"env": {"MOCK_SPAWN_CHILD": "1", "MOCK_CRASH_AFTER_MS": "700"}}),
    )])
    .env("MODELMUX_RESTART_DELAY", "0.3");
    let dir = tempfile::tempdir().unwrap();
    let port = common::port_block();
    let base = setup.command(dir.path(), port);
    let mut cmd = std::process::Command::new("unshare");
    // --kill-child: if the test fails and kills unshare, the namespace goes with it.
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        common::MODELMUX,
    ]);
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            log2.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let guard = KillOnDrop(child.id());
    // modelmux's host pid: the child of unshare.
    let mut init = 0u32;
    wait_until(T, "modelmux inside the namespace", || {
        init =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
                .unwrap_or(0);
        init != 0
    });
    let ns_pid = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let nspid_line = ns_pid
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_string();
    assert!(
        nspid_line.trim_end().ends_with("\t1") || nspid_line.trim_end().ends_with(" 1"),
        "modelmux is PID 1 inside: {nspid_line}"
    );
    wait_until(T, "an engine crashed and was restarted", || {
        log.lock().unwrap().contains("restart 1 in")
    });
    wait_until(Duration::from_secs(5), "orphan reaped, no zombie", || {
        zombie_children(init).is_empty()
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init as i32), Signal::SIGTERM).unwrap();
    let status = wait_child(&mut child, T);
    assert_eq!(status, Some(0), "{}", log.lock().unwrap());
    drop(guard);
}

fn wait_child(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        assert!(std::time::Instant::now() < deadline, "child did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}
