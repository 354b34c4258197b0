//! No process of an engine outlives modelmux (SPEC §4): the engine, a child in its group
//! (like vLLM's EngineCore), one that called `setsid()`, and an orphaned daemon, with
//! modelmux as an ordinary process and as PID 1 of a PID namespace, after SIGKILL and after
//! a clean SIGTERM. Each test marks its engines with an environment variable and looks only
//! at processes carrying it.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Setup, alive, marked, new_mark, ppid, report, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn file(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

/// A model whose engine starts every kind of child, marked with `mark`.
fn family(dir: &tempfile::TempDir, name: &str, mark: &str, extra: Value) -> (&'static str, Value) {
    let mut env = json!({
        "MMX_TEST_MARK": mark,
        "MOCK_SPAWN_CHILD": "1",
        "MOCK_SPAWN_SETSID": "1",
        "MOCK_SPAWN_DAEMON": "1",
        "MOCK_REPORT_FILE": file(dir, &format!("{name}.json")),
        "MOCK_EVENTS_FILE": file(dir, "events"),
    });
    for (k, v) in extra.as_object().unwrap() {
        env[k] = v.clone();
    }
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    (name, json!({ "env": env }))
}

/// Every pid a mock engine reported: itself and its three kinds of children.
fn family_pids(r: &Value) -> Vec<u32> {
    ["pid", "child_pid", "setsid_pid", "daemon_pid"]
        .iter()
        .map(|k| {
            r[k].as_u64()
                .unwrap_or_else(|| panic!("{k} missing in {r}")) as u32
        })
        .collect()
}

fn session(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(3)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_of_modelmux_leaves_no_process_of_any_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (value, mark) = new_mark("sigkill");
    let models = [
        family(&dir, "a", &value, json!({"MOCK_IGNORE_SIGTERM": "1"})),
        family(&dir, "b", &value, json!({})),
    ];
    let mut m = Setup::new(&models).start();
    m.wait_ready(T);
    let reports = [
        report(&dir.path().join("a.json")),
        report(&dir.path().join("b.json")),
    ];
    let pids: Vec<u32> = reports.iter().flat_map(family_pids).collect();
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    for r in &reports {
        let engine = r["pid"].as_u64().unwrap() as u32;
        let guardian = ppid(engine);
        assert_eq!(ppid(guardian), m.pid(), "modelmux → guardian → engine");
        // Its own session: where the kernel shares CPU time by session (autogroup), a busy
        // engine gets its own share instead of splitting the front's.
        assert_eq!(session(engine), engine, "the engine leads its own session");
        assert_ne!(session(m.pid()), engine);
        // The daemon's parent exited at once: the guardian, a subreaper, adopted it.
        let daemon = r["daemon_pid"].as_u64().unwrap() as u32;
        wait_until(T, "daemon adopted by the guardian", || {
            ppid(daemon) == guardian
        });
        let setsid = r["setsid_pid"].as_u64().unwrap() as u32;
        assert_eq!(
            session(setsid),
            setsid,
            "the setsid child leads its own session"
        );
    }
    // Two guardians, two engines, three children each.
    assert_eq!(marked(&mark).len(), 10, "{:?}", marked(&mark));
    m.signal(Signal::SIGKILL);
    assert_eq!(m.wait_exit(T), None);
    wait_until(Duration::from_secs(10), "no marked process left", || {
        marked(&mark).is_empty()
    });
}

#[test]
fn sigterm_stops_the_main_process_first_then_its_leftovers_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (value, mark) = new_mark("sigterm");
    let models = [family(
        &dir,
        "a",
        &value,
        json!({"MOCK_SIGTERM_DELAY_MS": "300"}),
    )];
    let mut m = Setup::new(&models).start();
    m.wait_ready(T);
    let r = report(&dir.path().join("a.json"));
    let pids = family_pids(&r);
    let engine = pids[0];
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(T), Some(0), "{}", m.log());
    assert!(marked(&mark).is_empty(), "{:?}", marked(&mark));
    let events = std::fs::read_to_string(dir.path().join("events")).unwrap();
    let at = |what: &str| {
        events
            .lines()
            .position(|l| l == what)
            .unwrap_or_else(|| panic!("no {what:?} in:\n{events}"))
    };
    let exiting = at(&format!("exiting {engine}"));
    assert!(at(&format!("sigterm {engine}")) < exiting);
    // The children got SIGTERM only after the main process had exited (vLLM's EngineCore
    // is stopped by its API server, not by a signal to the whole group), and the setsid
    // child and the daemon got it too.
    for child in &pids[1..] {
        assert!(
            at(&format!("child-sigterm {child}")) > exiting,
            "child {child} got SIGTERM before the engine exited:\n{events}"
        );
    }
    assert!(
        !m.log().contains("ERROR"),
        "a clean shutdown logs no error:\n{}",
        m.log()
    );
}

#[test]
fn a_killed_engine_leaves_no_orphan_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (value, mark) = new_mark("enginekill");
    let models = [family(&dir, "a", &value, json!({}))];
    let m = Setup::new(&models).start();
    m.wait_ready(T);
    let first = family_pids(&report(&dir.path().join("a.json")));
    std::fs::remove_file(dir.path().join("a.json")).unwrap();
    kill(Pid::from_raw(first[0] as i32), Signal::SIGKILL).unwrap();
    wait_until(T, "old engine family gone", || {
        first.iter().all(|p| !alive(*p))
    });
    m.wait_ready(T);
    let second = family_pids(&report(&dir.path().join("a.json")));
    assert!(second.iter().all(|p| alive(*p)));
    // One guardian, one engine, three children: nothing of the first run is left.
    assert_eq!(marked(&mark).len(), 5, "{:?}", marked(&mark));
}

#[test]
fn a_killed_guardian_is_made_up_for_by_modelmux() {
    let dir = tempfile::tempdir().unwrap();
    let (value, mark) = new_mark("guardiankill");
    let models = [family(&dir, "a", &value, json!({}))];
    let m = Setup::new(&models).start();
    m.wait_ready(T);
    let first = family_pids(&report(&dir.path().join("a.json")));
    std::fs::remove_file(dir.path().join("a.json")).unwrap();
    let guardian = ppid(first[0]);
    assert_ne!(guardian, m.pid());
    kill(Pid::from_raw(guardian as i32), Signal::SIGKILL).unwrap();
    // The engine dies with its guardian (PR_SET_PDEATHSIG); its children, orphaned to
    // modelmux, carry this run's mark and are killed by it.
    wait_until(T, "old engine family gone", || {
        first.iter().all(|p| !alive(*p))
    });
    m.wait_ready(T);
    report(&dir.path().join("a.json"));
    assert_eq!(marked(&mark).len(), 5, "{:?}", marked(&mark));
    assert!(m.log().contains("guardian is gone"), "{}", m.log());
}

/// modelmux as PID 1 of a new PID namespace (root only).
struct Pid1 {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
    /// modelmux's pid outside the namespace.
    init: u32,
}

impl Pid1 {
    fn start(setup: &Setup, dir: &std::path::Path) -> Option<Pid1> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { nix::libc::geteuid() } != 0 {
            eprintln!("skipped: PID-namespace test needs root");
            return None;
        }
        let probe = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .output();
        if !probe.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("skipped: unshare --pid --fork --mount-proc is not possible ({probe:?})");
            return None;
        }
        let base = setup.command(dir, common::port_block());
        let mut cmd = Command::new("unshare");
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
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut init = 0u32;
        let id = child.id();
        wait_until(T, "modelmux inside the namespace", || {
            init = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
                .unwrap_or(0);
            init != 0
        });
        Some(Pid1 { child, log, init })
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(std::time::Instant::now() < deadline, "{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host pid of a process whose pid inside its namespace is `inner`, among `pids`.
fn host_pid(pids: &[u32], inner: u64) -> Option<u32> {
    pids.iter().copied().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("NSpid:"))?.to_string();
                line.split_whitespace().last()?.parse::<u64>().ok()
            })
            == Some(inner)
    })
}

#[test]
fn as_pid1_an_engine_killed_with_its_children_is_restarted_and_sigterm_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (value, mark) = new_mark("pid1");
    let models = [family(&dir, "a", &value, json!({}))];
    let setup = Setup::new(&models);
    let home = tempfile::tempdir().unwrap();
    let Some(mut m) = Pid1::start(&setup, home.path()) else {
        return;
    };
    wait_until(T, "engine ready", || m.log().contains("ready after"));
    let r = report(&dir.path().join("a.json"));
    std::fs::remove_file(dir.path().join("a.json")).unwrap();
    let first = marked(&mark);
    assert_eq!(first.len(), 5, "{first:?}");
    let engine = host_pid(&first, r["pid"].as_u64().unwrap()).expect("engine's host pid");
    kill(Pid::from_raw(engine as i32), Signal::SIGKILL).unwrap();
    wait_until(T, "first family gone", || first.iter().all(|p| !alive(*p)));
    wait_until(T, "restarted", || {
        m.log().matches("ready after").count() == 2
    });
    report(&dir.path().join("a.json"));
    assert_eq!(marked(&mark).len(), 5, "{:?}", marked(&mark));
    kill(Pid::from_raw(m.init as i32), Signal::SIGTERM).unwrap();
    assert_eq!(m.wait_exit(T), Some(0), "{}", m.log());
    assert!(marked(&mark).is_empty(), "{:?}", marked(&mark));
    assert!(m.log().contains("clean shutdown"), "{}", m.log());
}

#[test]
fn as_pid1_sigkill_leaves_no_process_of_any_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (value, mark) = new_mark("pid1kill");
    let models = [family(
        &dir,
        "a",
        &value,
        json!({"MOCK_IGNORE_SIGTERM": "1"}),
    )];
    let setup = Setup::new(&models);
    let home = tempfile::tempdir().unwrap();
    let Some(m) = Pid1::start(&setup, home.path()) else {
        return;
    };
    wait_until(T, "engine ready", || m.log().contains("ready after"));
    report(&dir.path().join("a.json"));
    assert_eq!(marked(&mark).len(), 5);
    kill(Pid::from_raw(m.init as i32), Signal::SIGKILL).unwrap();
    wait_until(Duration::from_secs(10), "no marked process left", || {
        marked(&mark).is_empty()
    });
}
