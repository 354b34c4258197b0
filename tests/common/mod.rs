//! Test harness: runs the real `modelmux` binary against `mock-vllm` engines, with hard
//! timeouts and clean-up on drop.
#![allow(dead_code)]

pub mod browser;
pub mod planning;
pub mod raw;
pub mod runtime;
pub mod tools;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const MODELMUX: &str = env!("CARGO_BIN_EXE_modelmux");
pub const MOCK: &str = env!("CARGO_BIN_EXE_mock-vllm");

/// A directory holding a stand-in `vllm` program, so that `plan` with the default engine
/// command (`vllm serve`) finds it: plan refuses what serve would refuse, a missing engine
/// program included.
pub fn fake_vllm_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fake-vllm-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("vllm");
        std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    })
}

/// Runs modelmux to completion with only `env` (plus a `PATH` that has a stand-in `vllm`).
pub fn run_clean(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let path = format!(
        "{}:{}",
        fake_vllm_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(MODELMUX);
    cmd.args(args).env_clear().env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run modelmux")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ports each test run gets: `PORT` and the engine ports after it (`PORT+1`, ...).
pub const PORT_BLOCK: u16 = 16;

/// A `PORT` whose block of [`PORT_BLOCK`] ports is free now. Blocks come from one counter
/// per test process, below the kernel's ephemeral range (where client sockets would take
/// engine ports), from a start that differs between processes, so tests running at once
/// do not share engine ports.
pub fn port_block() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20000;
    const HIGH: u32 = 32000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let slots = (HIGH - LOW) / u32::from(PORT_BLOCK);
    let seed = std::process::id().wrapping_mul(2654435761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    for _ in 0..slots {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let slot = (seed.wrapping_add(n)) % slots;
        let base = (LOW + slot * u32::from(PORT_BLOCK)) as u16;
        let free = (base..base + PORT_BLOCK).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free block of {PORT_BLOCK} ports in {LOW}..{HIGH}");
}

/// Living processes whose environment holds `KEY=VALUE` (a test's own marker: every
/// process of its run inherits it, whatever its parent, group or session).
pub fn marked(key_value: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|kv| kv == key_value.as_bytes()) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// A marker unique to one test: `MMX_TEST_MARK=<name>-<pid>-<nanos>`.
pub fn new_mark(name: &str) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let value = format!("{name}-{}-{nanos}", std::process::id());
    (value.clone(), format!("MMX_TEST_MARK={value}"))
}

/// The parent of a process (0 when it is gone).
pub fn ppid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while a process exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            state != Some('Z') && state != Some('X')
        }
        Err(_) => false,
    }
}

/// A running modelmux with its captured log.
pub struct Modelmux {
    pub child: Option<Child>,
    pub port: u16,
    pub log: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
    engine_pids: Arc<Mutex<Vec<u32>>>,
}

/// How to start one.
pub struct Setup {
    pub models: Vec<serde_json::Value>,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
}

impl Setup {
    /// Models given as `(served name, extra JSON fields)`.
    pub fn new(models: &[(&str, serde_json::Value)]) -> Self {
        let models = models
            .iter()
            .map(|(name, extra)| {
                let mut m = serde_json::json!({"model_path": format!("org/{name}"), "params": format!("--served-model-name {name}")});
                if let serde_json::Value::Object(fields) = extra {
                    for (k, v) in fields {
                        m[k] = v.clone();
                    }
                }
                m
            })
            .collect();
        Setup {
            models,
            env: BTreeMap::new(),
            args: Vec::new(),
        }
    }

    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.env.insert(k.into(), v.to_string());
        self
    }

    /// The base command: modelmux with the mock engine, no GPUs, a free port.
    pub fn command(&self, dir: &Path, port: u16) -> Command {
        let mut cmd = Command::new(MODELMUX);
        cmd.args(&self.args)
            .env_remove("RUST_LOG")
            .env(
                "MULTI_MODEL_CONFIG",
                serde_json::json!({"models": self.models}).to_string(),
            )
            .env("MODELMUX_ENGINE_CMD", MOCK)
            .env("MODELMUX_GPUS", "none")
            .env("MODELMUX_MODEL_ROOT", dir)
            .env("MODELMUX_SHUTDOWN_GRACE", "5")
            .env("MODELMUX_RESTART_DELAY", "0.1")
            .env("PORT", port.to_string())
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn start(self) -> Modelmux {
        self.start_on(port_block())
    }

    /// Starts it with this `PORT`.
    pub fn start_on(self, port: u16) -> Modelmux {
        let dir = tempfile::tempdir().unwrap();
        let mut child = self
            .command(dir.path(), port)
            .spawn()
            .expect("start modelmux");
        let log = Arc::new(Mutex::new(String::new()));
        let engine_pids = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let (log2, pids2) = (log.clone(), engine_pids.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("engine started")
                    && let Some(pid) = line
                        .split("pid=")
                        .nth(1)
                        .and_then(|s| s.split(' ').next())
                        .and_then(|s| s.parse().ok())
                {
                    pids2.lock().unwrap().push(pid);
                }
                if std::env::var("MODELMUX_TEST_LOG").is_ok() {
                    eprintln!("{line}");
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Modelmux {
            child: Some(child),
            port,
            log,
            dir,
            engine_pids,
        }
    }
}

impl Modelmux {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Every engine pid modelmux reported starting.
    pub fn engine_pids(&self) -> Vec<u32> {
        self.engine_pids.lock().unwrap().clone()
    }

    /// Waits until `/health` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let url = self.url("/health");
        wait_until(timeout, "modelmux /health 200", || {
            blocking_get_status(&url) == Some(200)
        });
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for modelmux to exit and returns its status code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Give the log reader a moment to reach the end of the pipe.
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "modelmux did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Modelmux {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // PR_SET_PDEATHSIG already killed the engines; make sure of it anyway.
        for pid in self.engine_pids() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A plain blocking GET returning the status, or None when nothing answers.
pub fn blocking_get_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split(' ').nth(1)?.parse().ok()
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response read whole.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn post(client: &HttpClient, url: &str, body: &str) -> Answer {
    request(
        client,
        "POST",
        url,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

pub async fn get(client: &HttpClient, url: &str) -> Answer {
    request(client, "GET", url, &[], "").await
}

/// Reads a mock engine's report file (argv, env, pid) once it exists.
pub fn report(path: &Path) -> serde_json::Value {
    wait_until(Duration::from_secs(20), "mock report file", || {
        std::fs::read_to_string(path).is_ok_and(|s| !s.is_empty())
    });
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs an async test body under a hard timeout.
pub fn run_async<F: std::future::Future<Output = ()>>(timeout: Duration, f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(timeout, f)
            .await
            .expect("test timed out")
    });
}
