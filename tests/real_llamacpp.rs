//! The real llama.cpp tier: llama-cpp-python's OpenAI server (the `llamacpp-python`
//! profile) with a tiny random GGUF, behind modelmux's front beside a `mock-vllm` model.
//! `scripts/real-llamacpp-setup.sh DIR` installs it (pinned, several minutes: it builds
//! llama.cpp); these tests skip with a printed reason unless `MODELMUX_ENGINES_DIR` names
//! such a directory (`make test-llamacpp` does). When `llama-server` was built too
//! (`--with-llama-server`), the `llamacpp` profile is tested against it as well; when the
//! vLLM tier is there too (`MODELMUX_REAL_DIR`, `make test-vllm`), one vLLM and one llama.cpp
//! model run behind one front, and SIGKILL of modelmux leaves no process of that run.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{MOCK, Setup};
use nix::sys::signal::Signal;
use serde_json::json;

/// `MODELMUX_ENGINES_DIR`: the directory `scripts/real-llamacpp-setup.sh DIR` filled
/// (`llamacpp-venv/`, `tiny-llama.gguf`, optionally `llama-server/bin/llama-server`). Unset,
/// the tier is skipped, so that plain `cargo test` stays fast; `make test-llamacpp` sets it.
fn engines_dir() -> Option<PathBuf> {
    std::env::var_os("MODELMUX_ENGINES_DIR").map(PathBuf::from)
}

fn skip(test: &str, why: String) {
    use std::io::Write;
    // Straight to stderr: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
}

/// The venv's python and the model, or `None` (with the reason printed) when the tier is
/// not installed.
fn installed(test: &str) -> Option<(PathBuf, PathBuf)> {
    let Some(dir) = engines_dir() else {
        skip(
            test,
            "the llama.cpp tier needs llama-cpp-python; run `make test-llamacpp` (or set \
             MODELMUX_ENGINES_DIR to a directory made by scripts/real-llamacpp-setup.sh)"
                .into(),
        );
        return None;
    };
    let python = dir.join("llamacpp-venv/bin/python");
    let model = dir.join("tiny-llama.gguf");
    let ok = python.exists()
        && model.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import llama_cpp.server"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        Some((python, model))
    } else {
        skip(
            test,
            format!(
                "MODELMUX_ENGINES_DIR={}: no llama-cpp-python or tiny GGUF there; run \
                 scripts/real-llamacpp-setup.sh {0}",
                dir.display()
            ),
        );
        None
    }
}

/// One llama-cpp-python model (`tiny`) and one mock vLLM model (`mock`) behind one front.
fn mixed_setup(python: &Path, model: &Path) -> Setup {
    Setup {
        models: vec![
            json!({"model_path": model, "engine": "llamacpp-python",
                   "engine_cmd": format!("{} -m llama_cpp.server", python.display()),
                   "params": "--model_alias tiny --n_ctx 512 --verbose false"}),
            json!({"model_path": "org/mock", "params": "--served-model-name mock",
                   "engine_cmd": MOCK}),
        ],
        env: BTreeMap::new(),
        args: Vec::new(),
    }
}

/// A POST with a UUID `X-Request-Id`: llama-cpp-python answers 400 to any other id (its
/// starlette-context `RequestIdPlugin` validates it), and modelmux's own ids are not UUIDs
/// (the plan marks the engine `uuid_request_ids` for the front).
async fn post_uuid(c: &common::HttpClient, url: &str, body: &str) -> common::Answer {
    let headers = [
        ("content-type", "application/json"),
        ("x-request-id", "0c6c52f3-a1b3-4cbf-8bd4-b4a4b7f1a0a1"),
    ];
    common::request(c, "POST", url, &headers, body).await
}

fn ready_pid(mm: &common::Modelmux, model: &str) -> Option<u64> {
    let url = mm.url("/health");
    let body = blocking_get_body(&url)?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["models"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == model && m["state"] == "ready")
        .and_then(|m| m["pid"].as_u64())
}

fn blocking_get_body(url: &str) -> Option<String> {
    use std::io::{Read, Write};
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
    Some(buf.split_once("\r\n\r\n")?.1.to_string())
}

#[test]
fn llamacpp_python_serves_streams_restarts_and_counts_beside_vllm() {
    let Some((python, model)) = installed("llamacpp_python_serves") else {
        return;
    };
    let started = Instant::now();
    let mut mm = mixed_setup(&python, &model).start();
    mm.wait_ready(Duration::from_secs(180));
    eprintln!(
        "llama-cpp-python engine ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let first = ready_pid(&mm, "tiny").expect("tiny is ready with a pid");

    common::run_async(Duration::from_secs(120), async {
        let c = common::client();
        // /v1/models lists both, under their served names.
        let models = common::get(&c, &mm.url("/v1/models")).await.json();
        let ids: Vec<&str> = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["tiny", "mock"]);
        // Routing: each name reaches its own engine.
        let a = post_uuid(
            &c,
            &mm.url("/v1/completions"),
            r#"{"model": "tiny", "prompt": "hello world", "max_tokens": 8, "temperature": 0}"#,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        assert_eq!(v["object"], "text_completion", "{v}");
        assert!(
            a.headers.get("x-mock-served-by").is_none(),
            "went to the mock"
        );
        let a = post_uuid(&c, &mm.url("/v1/chat/completions"),
            r#"{"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}"#).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["choices"][0]["message"]["role"], "assistant");
        let a = post_uuid(
            &c,
            &mm.url("/v1/completions"),
            r#"{"model": "mock", "prompt": "x"}"#,
        )
        .await;
        assert_eq!(a.headers["x-mock-served-by"], "mock");
        // Streaming: several events, then [DONE].
        let a = post_uuid(
            &c,
            &mm.url("/v1/completions"),
            r#"{"model": "tiny", "prompt": "hello", "max_tokens": 16, "stream": true}"#,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let events = a.body.matches("data: ").count();
        assert!(events >= 3, "{}", a.body);
        assert!(a.body.trim_end().ends_with("data: [DONE]"), "{}", a.body);
    });

    // kill -9 of the engine: restarted, ready again under a new pid, the old one gone.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    common::wait_until(Duration::from_secs(120), "a new ready engine", || {
        ready_pid(&mm, "tiny").is_some_and(|p| p != first)
    });
    eprintln!(
        "llama-cpp-python engine ready again {:.1} s after kill -9",
        killed.elapsed().as_secs_f64()
    );
    assert!(!common::alive(first as u32));
    common::run_async(Duration::from_secs(60), async {
        let c = common::client();
        let a = post_uuid(
            &c,
            &mm.url("/v1/completions"),
            r#"{"model": "tiny", "prompt": "again", "max_tokens": 4}"#,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let text = common::get(&c, &mm.url("/metrics")).await.body;
        assert!(
            text.contains("modelmux_model_restarts_total{model=\"tiny\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("modelmux_requests_total{model=\"tiny\",code=\"200\"}"),
            "{text}"
        );
        // llama-cpp-python has no /metrics: its profile says so, and the scrape skips it.
        assert!(
            text.contains("modelmux_engine_scrape_errors_total{model=\"tiny\"} 0"),
            "{text}"
        );
    });

    // SIGTERM: exit 0, no engine of this run left.
    let pids = mm.engine_pids();
    mm.signal(Signal::SIGTERM);
    assert_eq!(
        mm.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        mm.log()
    );
    common::wait_until(Duration::from_secs(10), "engines gone", || {
        pids.iter().all(|p| !common::alive(*p))
    });
}

#[test]
fn sigkill_of_modelmux_leaves_no_llamacpp_engine() {
    let Some((python, model)) = installed("sigkill_of_modelmux") else {
        return;
    };
    let setup = mixed_setup(&python, &model);
    let dir = tempfile::tempdir().unwrap();
    // Engine ports follow PORT: a block of free ports.
    let port = common::port_block();
    let mut cmd = setup.command(dir.path(), port);
    cmd.stderr(std::process::Stdio::piped());
    // Its own session, as by hand on a GPU box: no terminal or test harness kills for it.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().unwrap();
    let _modelmux = KillGroups(vec![child.id()]);
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
    let health = format!("http://127.0.0.1:{port}/health");
    common::wait_until(Duration::from_secs(180), "ready", || {
        common::blocking_get_status(&health) == Some(200)
    });
    let pids: Vec<u32> = log
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains("engine started"))
        .filter_map(|l| l.split("pid=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    let _cleanup = KillGroups(pids.clone());
    assert_eq!(pids.len(), 2, "{}", log.lock().unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    common::wait_until(
        Duration::from_secs(10),
        "no engine left after SIGKILL",
        || pids.iter().all(|p| !common::alive(*p)),
    );
}

/// Kills these process groups when a test ends, passed or failed (the processes are this
/// test's own: modelmux leads its session, each engine its group).
struct KillGroups(Vec<u32>);

impl Drop for KillGroups {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

#[test]
fn llama_server_profile_against_the_real_llama_server() {
    let Some((_, model)) = installed("llama_server_profile") else {
        return;
    };
    let server = engines_dir().unwrap().join("llama-server/bin/llama-server");
    if !server.exists() {
        let why = format!(
            "{} is not built (scripts/real-llamacpp-setup.sh DIR --with-llama-server)",
            server.display()
        );
        skip("llama_server_profile", why);
        return;
    }
    // The engine takes its key from a file; the front has a key of its own, so modelmux
    // must send the engine's key (requests, its metrics scrape) in place of the client's.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# llama-server's keys\nllama-k3y\n").unwrap();
    let params = format!(
        "--alias tiny,tiny2 -c 512 -np 1 --api-key-file {}",
        keys.display()
    );
    let setup = Setup {
        models: vec![json!({"model_path": model, "engine": "llamacpp",
                            "engine_cmd": server, "params": params})],
        env: [("MODELMUX_API_KEY".to_string(), "front-k3y".to_string())].into(),
        args: Vec::new(),
    };
    let ask = |c: &common::HttpClient, url: String, body: String| {
        let c = c.clone();
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("x-request-id", "0c6c52f3-a1b3-4cbf-8bd4-b4a4b7f1a0a1"),
                ("authorization", "Bearer front-k3y"),
            ];
            common::request(&c, "POST", &url, &headers, &body).await
        }
    };
    let started = Instant::now();
    let mut mm = setup.start();
    mm.wait_ready(Duration::from_secs(180));
    eprintln!(
        "llama-server ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    common::run_async(Duration::from_secs(120), async {
        let c = common::client();
        for name in ["tiny", "tiny2"] {
            let a = ask(&c, mm.url("/v1/chat/completions"),
                json!({"model": name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}).to_string()).await;
            assert_eq!(a.status, 200, "{name}: {}", a.body);
        }
        let a = ask(
            &c,
            mm.url("/v1/completions"),
            r#"{"model": "tiny", "prompt": "hello", "max_tokens": 16, "stream": true}"#.into(),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.matches("data: ").count() >= 3, "{}", a.body);
        // The engine's own metrics carry the profile's prefix (--metrics was added).
        let health = common::get(&c, &mm.url("/health")).await.json();
        let port = health["models"][0]["port"].as_u64().unwrap();
        let direct = format!("http://127.0.0.1:{port}/metrics");
        let a = common::get(&c, &direct).await;
        assert_eq!(a.status, 401, "llama-server checks its key: {}", a.body);
        let engine_key = [("authorization", "Bearer llama-k3y")];
        let text = common::request(&c, "GET", &direct, &engine_key, "")
            .await
            .body;
        assert!(text.contains("llamacpp:prompt_tokens_total"), "{text}");
        // ... and reach modelmux's own scrape with the model label.
        let merged = common::get(&c, &mm.url("/metrics")).await.body;
        assert!(
            merged
                .lines()
                .any(|l| l.starts_with("llamacpp:prompt_tokens_total{")
                    && l.contains("model=\"tiny\"")),
            "{merged}"
        );
    });
    mm.signal(Signal::SIGTERM);
    assert_eq!(
        mm.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        mm.log()
    );
}

/// Kills every process of one run (those carrying its marker, `MMX_TEST_MARK=...`) when the
/// test ends, passed or failed.
struct KillRun(String);

impl Drop for KillRun {
    fn drop(&mut self) {
        for pid in common::marked(&self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

#[test]
fn vllm_and_llamacpp_behind_one_front() {
    let Some((python, model)) = installed("vllm_and_llamacpp") else {
        return;
    };
    let Some(real) = std::env::var_os("MODELMUX_REAL_DIR").map(PathBuf::from) else {
        skip(
            "vllm_and_llamacpp",
            "needs the vLLM tier too: set MODELMUX_REAL_DIR (make test-vllm)".into(),
        );
        return;
    };
    let vllm_python = real.join("venv/bin/python");
    if !vllm_python.exists() || !real.join("models/BUILT").exists() {
        skip(
            "vllm_and_llamacpp",
            format!(
                "MODELMUX_REAL_DIR={}: no vLLM install or models there",
                real.display()
            ),
        );
        return;
    }
    let (mark, marker) = common::new_mark("vllm_and_llamacpp");
    let _cleanup = KillRun(marker.clone());
    let cache = real.join("cache");
    let mut setup = Setup {
        models: vec![
            json!({"model_path": real.join("models/tiny-llama-a"),
                   "engine_cmd": format!("{} -m vllm.entrypoints.openai.api_server", vllm_python.display()),
                   "params": "--served-model-name vllm-a --max-model-len 2048 --dtype float32",
                   "env": {"VLLM_CPU_OMP_THREADS_BIND": "0"}}),
            json!({"model_path": model, "engine": "llamacpp-python",
                   "engine_cmd": format!("{} -m llama_cpp.server", python.display()),
                   "params": "--model_alias tiny --n_ctx 512 --n_threads 1 --verbose false"}),
        ],
        env: BTreeMap::new(),
        args: Vec::new(),
    };
    for (k, v) in [
        ("MMX_TEST_MARK", mark.as_str()),
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("VLLM_NO_USAGE_STATS", "1"),
        ("DO_NOT_TRACK", "1"),
        ("VLLM_CPU_KVCACHE_SPACE", "1"),
        ("MODELMUX_SHUTDOWN_GRACE", "20"),
    ] {
        setup.env.insert(k.into(), v.into());
    }
    setup
        .env
        .insert("HF_HOME".into(), cache.join("hf").display().to_string());
    setup.env.insert(
        "VLLM_CACHE_ROOT".into(),
        cache.join("vllm").display().to_string(),
    );
    let started = Instant::now();
    let mm = setup.start();
    mm.wait_ready(Duration::from_secs(900));
    eprintln!(
        "vLLM + llama-cpp-python ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    common::run_async(Duration::from_secs(300), async {
        let c = common::client();
        for name in ["vllm-a", "tiny"] {
            let a = post_uuid(&c, &mm.url("/v1/chat/completions"),
                &json!({"model": name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}).to_string()).await;
            assert_eq!(a.status, 200, "{name}: {}", a.body);
            assert_eq!(
                a.json()["model"],
                name,
                "{name} answered by the other engine"
            );
            let a = post_uuid(
                &c,
                &mm.url("/v1/completions"),
                &json!({"model": name, "prompt": "hello", "max_tokens": 12, "stream": true})
                    .to_string(),
            )
            .await;
            assert_eq!(a.status, 200, "{name}: {}", a.body);
            assert!(a.body.matches("data: ").count() >= 3, "{name}: {}", a.body);
            assert!(
                a.body.trim_end().ends_with("data: [DONE]"),
                "{name}: {}",
                a.body
            );
        }
        let text = common::get(&c, &mm.url("/metrics")).await.body;
        for name in ["vllm-a", "tiny"] {
            assert!(
                text.contains(&format!(
                    "modelmux_requests_total{{model=\"{name}\",code=\"200\"}} 2"
                )),
                "{text}"
            );
        }
    });

    // kill -9 of the llama.cpp engine: it comes back; the vLLM model keeps serving.
    let health: serde_json::Value =
        serde_json::from_str(&blocking_get_body(&mm.url("/health")).unwrap()).unwrap();
    let tiny = health["models"][1]["pid"].as_u64().unwrap();
    let vllm = health["models"][0]["pid"].as_u64().unwrap() as u32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(tiny as i32), Signal::SIGKILL).unwrap();
    common::wait_until(Duration::from_secs(120), "tiny ready again", || {
        ready_pid(&mm, "tiny").is_some_and(|p| p != tiny)
    });
    assert_eq!(
        ready_pid(&mm, "vllm-a"),
        Some(vllm as u64),
        "vLLM was disturbed"
    );

    // SIGKILL of modelmux: no process of the run is left, the engines' main processes,
    // vLLM's EngineCore (a grandchild) and the guardians included.
    let engines = [vllm, ready_pid(&mm, "tiny").unwrap() as u32];
    let before = common::marked(&marker);
    assert!(
        before.len() > 3,
        "modelmux, two guardians, two engines and vLLM's EngineCore at least: {before:?}"
    );
    let killed = Instant::now();
    mm.signal(Signal::SIGKILL);
    common::wait_until(
        Duration::from_secs(15),
        "engines gone after SIGKILL",
        || engines.iter().all(|p| !common::alive(*p)),
    );
    let mut left = common::marked(&marker);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = common::marked(&marker);
    }
    let describe = |pids: &[u32]| -> Vec<String> {
        pids.iter()
            .map(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                format!("{p} {}", cmd.trim())
            })
            .collect()
    };
    assert!(
        left.is_empty(),
        "processes of the run left {:.0} s after SIGKILL of modelmux: {:?} (of {})",
        killed.elapsed().as_secs_f64(),
        describe(&left),
        before.len()
    );
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!(
            "all {} processes of the run gone {:.1} s after SIGKILL of modelmux\n",
            before.len(),
            killed.elapsed().as_secs_f64()
        ),
    );
}
