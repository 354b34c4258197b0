//! Engine profiles through the real binary: `plan` shows each engine's exact command, bad
//! engine input exits 2 before anything starts, and `serve` runs every profile against
//! `mock-vllm` speaking that server's command line (`--mock-dialect`), which exits 2 on a
//! flag its server would not take: a wrong mapping fails here, not on a GPU box.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use common::{MOCK, MODELMUX, Setup};
use serde_json::{Value, json};

/// A directory of stand-ins for the engine programs that are not installed here
/// (`text-generation-launcher`, `llama-server`): `plan` and `serve` check that the engine
/// program exists.
fn fake_engines() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for name in ["text-generation-launcher", "llama-server"] {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\nexit 2\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    })
    .path()
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(MODELMUX);
    let path = format!(
        "{}:{}",
        fake_engines().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.args(args).env_clear().env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run modelmux")
}

fn plan_json(config: &Value, env: &[(&str, &str)]) -> Value {
    let config = config.to_string();
    let mut all = vec![("MULTI_MODEL_CONFIG", config.as_str())];
    all.extend_from_slice(env);
    let out = run(&["plan", "--json"], &all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn argv_after_port(model: &Value) -> Vec<String> {
    let argv: Vec<String> = serde_json::from_value(model["argv"].clone()).unwrap();
    let port = model["port"].as_u64().unwrap().to_string();
    let at = argv.iter().position(|a| *a == port).expect("port in argv");
    argv[at + 1..].to_vec()
}

fn argv_before_port(model: &Value) -> Vec<String> {
    let argv: Vec<String> = serde_json::from_value(model["argv"].clone()).unwrap();
    let port = model["port"].as_u64().unwrap().to_string();
    let at = argv.iter().position(|a| *a == port).expect("port in argv");
    argv[..=at].to_vec()
}

#[test]
fn plan_shows_each_engines_exact_command() {
    let config = json!({"models": [
        {"model_path": "org/v", "params": "--served-model-name v -tp 2"},
        {"model_path": "org/s", "engine": "sglang", "params": "--served-model-name s --tp-size 2"},
        {"model_path": "org/t", "engine": "tgi", "params": "--served-model-name t --num-shard 2"},
        {"model_path": "org/l", "engine": "llamacpp", "params": "--alias l -c 4096"},
        {"model_path": "org/p", "engine": "llamacpp-python", "params": "--model_alias p --n_gpu_layers -1"},
    ]});
    let plan = plan_json(
        &config,
        &[("MODELMUX_GPUS", "8"), ("VLLM_PARAMS", "--enforce-eager")],
    );
    let m = &plan["models"];
    let engines: Vec<&str> = (0..5).map(|i| m[i]["engine"].as_str().unwrap()).collect();
    assert_eq!(
        engines,
        ["vllm", "sglang", "tgi", "llamacpp", "llamacpp-python"]
    );
    let port = |i: usize| m[i]["port"].as_u64().unwrap().to_string();
    assert_eq!(
        argv_before_port(&m[1]),
        [
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            "org/s",
            "--host",
            "127.0.0.1",
            "--port",
            &port(1)
        ]
    );
    assert_eq!(
        argv_after_port(&m[1]),
        [
            "--served-model-name",
            "s",
            "--tp-size",
            "2",
            "--enable-metrics"
        ]
    );
    assert_eq!(
        argv_before_port(&m[2]),
        [
            "text-generation-launcher",
            "--model-id",
            "org/t",
            "--hostname",
            "127.0.0.1",
            "--port",
            &port(2)
        ]
    );
    // TGI's per-instance ports and socket path, then the model's own flags.
    let tgi = argv_after_port(&m[2]);
    assert_eq!(tgi[0], "--prometheus-port");
    assert_eq!(
        tgi[2..4],
        [
            "--shard-uds-path".to_string(),
            format!("/tmp/modelmux-tgi-{}", port(2))
        ]
    );
    assert_eq!(tgi[4], "--master-port");
    assert_eq!(tgi[6..], ["--num-shard", "2"]);
    assert_eq!(m[2]["served_names"], json!(["t"]));
    assert_eq!(
        argv_before_port(&m[3]),
        [
            "llama-server",
            "--model",
            "org/l",
            "--host",
            "127.0.0.1",
            "--port",
            &port(3)
        ]
    );
    assert_eq!(
        argv_after_port(&m[3]),
        ["--alias", "l", "-c", "4096", "--metrics"]
    );
    assert_eq!(
        argv_before_port(&m[4]),
        [
            "python3",
            "-m",
            "llama_cpp.server",
            "--model",
            "org/p",
            "--host",
            "127.0.0.1",
            "--port",
            &port(4)
        ]
    );
    // VLLM_PARAMS reached the vLLM model only.
    assert_eq!(
        argv_after_port(&m[0]),
        ["--enforce-eager", "--served-model-name", "v", "-tp", "2"]
    );
    // GPUs per each server's own count: 2 + 2 + 2 + 1 + 1 of 8.
    let gpus: Vec<usize> = (0..5)
        .map(|i| m[i]["gpus"].as_array().unwrap().len())
        .collect();
    assert_eq!(gpus, [2, 2, 2, 1, 1]);
    let health: Vec<&str> = (0..5)
        .map(|i| m[i]["health_path"].as_str().unwrap())
        .collect();
    let uuid_ids: Vec<bool> = (0..5)
        .map(|i| m[i]["uuid_request_ids"].as_bool().unwrap())
        .collect();
    assert_eq!(uuid_ids, [false, false, false, false, true]);
    assert_eq!(
        health,
        ["/health", "/health", "/health", "/health", "/v1/models"]
    );
    // The text plan names the engine and the full command.
    let out = run(
        &["plan"],
        &[
            ("MULTI_MODEL_CONFIG", &config.to_string()),
            ("MODELMUX_GPUS", "8"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  engine:       tgi (Text Generation Inference"),
        "{text}"
    );
    assert!(
        text.contains(
            "  command:      text-generation-launcher --model-id org/t --hostname 127.0.0.1"
        ),
        "{text}"
    );
}

#[test]
fn modelmux_engine_and_its_command_apply_to_models_that_name_none() {
    let config = json!({"models": [
        {"model_path": "org/a", "params": "--max-total-tokens 2048"},
        {"model_path": "org/b", "engine": "vllm"},
    ]});
    let tgi = fake_engines().join("text-generation-launcher");
    let tgi_cmd = format!("{} --json-output", tgi.display());
    let plan = plan_json(
        &config,
        &[
            ("MODELMUX_GPUS", "none"),
            ("MODELMUX_ENGINE", "tgi"),
            ("MODELMUX_ENGINE_CMD", &tgi_cmd),
        ],
    );
    let m = &plan["models"];
    assert_eq!(m[0]["engine"], "tgi");
    assert_eq!(
        argv_before_port(&m[0])[..3],
        [tgi.to_str().unwrap(), "--json-output", "--model-id"]
    );
    // The vLLM model keeps vLLM's default command: MODELMUX_ENGINE_CMD is TGI's here.
    assert_eq!(m[1]["engine"], "vllm");
    assert_eq!(
        argv_before_port(&m[1])[..4],
        [
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model"
        ]
    );
}

#[test]
fn bad_engine_input_exits_2_before_anything_starts() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            r#"{"models": [{"model_path": "org/a", "engine": "ollama"}]}"#,
            &[],
            "MULTI_MODEL_CONFIG: models[0].engine: unknown engine \"ollama\"; use one of vllm, sglang, tgi, llamacpp, llamacpp-python",
        ),
        (
            r#"{"models": [{"model_path": "org/a"}]}"#,
            &[("MODELMUX_ENGINE", "triton")],
            "MODELMUX_ENGINE=\"triton\": unknown engine; use one of vllm, sglang, tgi, llamacpp, llamacpp-python",
        ),
        (
            r#"{"models": [{"model_path": "org/a", "engine": "tgi", "params": "--tensor-parallel-size 2"}]}"#,
            &[],
            "models[0].params: --tensor-parallel-size is a flag of vllm, not of tgi (this model's engine): tgi spells it --num-shard",
        ),
        (
            r#"{"models": [{"model_path": "org/a", "engine": "llamacpp", "params": "--gpu-memory-utilization 0.5"}]}"#,
            &[],
            "models[0].params: --gpu-memory-utilization is a flag of vllm, not of llamacpp (this model's engine): llamacpp has no such flag",
        ),
    ];
    for (config, env, expected) in cases {
        for command in [&["plan"][..], &["serve"][..]] {
            let mut all = vec![
                ("MULTI_MODEL_CONFIG", config),
                ("MODELMUX_GPUS", "none"),
                ("MODELMUX_ENGINE_CMD", MOCK),
            ];
            all.extend_from_slice(env);
            let out = run(command, &all);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command:?} {config}: {stderr}");
            assert!(stderr.contains(expected), "{command:?}: {stderr}");
            assert!(!stderr.contains("engine started"), "{stderr}");
        }
    }
}

fn mock_cmd(dialect: &str) -> String {
    format!("{MOCK} --mock-dialect {dialect}")
}

fn setup(models: Vec<Value>) -> Setup {
    Setup {
        models,
        env: BTreeMap::new(),
        args: Vec::new(),
    }
}

#[test]
fn every_profile_serves_through_the_front_on_its_servers_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let report = |name: &str| dir.path().join(format!("{name}.json"));
    let model = |name: &str, engine: &str, params: &str| {
        json!({"model_path": format!("org/{name}"), "engine": engine, "params": params,
               "engine_cmd": mock_cmd(engine),
               "env": {"MOCK_REPORT_FILE": report(name)}})
    };
    let mm = setup(vec![
        model("v", "vllm", "--served-model-name v"),
        model("s", "sglang", "--served-model-name s"),
        json!({"model_path": "org/t", "engine": "tgi", "params": "--served-model-name t --lora-adapters sql=/x/sql",
               "engine_cmd": mock_cmd("tgi"), "env": {"MOCK_REPORT_FILE": report("t")}}),
        model("l", "llamacpp", "--alias l"),
        model("p", "llamacpp-python", "--model_alias p"),
    ])
    .start();
    mm.wait_ready(Duration::from_secs(60));
    for (name, dialect) in [
        ("v", "vllm"),
        ("s", "sglang"),
        ("t", "tgi"),
        ("l", "llamacpp"),
        ("p", "llamacpp-python"),
    ] {
        assert_eq!(common::report(&report(name))["dialect"], dialect);
    }
    common::run_async(Duration::from_secs(60), async {
        let c = common::client();
        // llama-cpp-python refuses request ids that are not UUIDs (the plan says so:
        // `uuid_request_ids`); until the front converts them, clients send UUIDs.
        let post = |url: String, body: String| {
            let c = c.clone();
            async move {
                let headers = [
                    ("content-type", "application/json"),
                    ("x-request-id", "0c6c52f3-a1b3-4cbf-8bd4-b4a4b7f1a0a1"),
                ];
                common::request(&c, "POST", &url, &headers, &body).await
            }
        };
        for (name, dialect) in [
            ("v", "vllm"),
            ("s", "sglang"),
            ("t", "tgi"),
            ("l", "llamacpp"),
            ("p", "llamacpp-python"),
        ] {
            let a = post(
                mm.url("/v1/chat/completions"),
                json!({"model": name, "messages": []}).to_string(),
            )
            .await;
            assert_eq!(a.status, 200, "{name}: {}", a.body);
            assert_eq!(a.headers["x-mock-dialect"], dialect, "{name}");
        }
        // A TGI adapter name reaches TGI as its adapter id.
        let a = common::post(
            &c,
            &mm.url("/v1/completions"),
            r#"{"model": "sql", "prompt": "x"}"#,
        )
        .await;
        assert_eq!(
            (a.status, a.headers["x-mock-dialect"].to_str().unwrap()),
            (200, "tgi")
        );
        assert_eq!(a.headers["x-mock-adapter-id"], "sql");
        // Streaming passes through whatever the server.
        let a = post(
            mm.url("/v1/completions"),
            r#"{"model": "l", "prompt": "x", "stream": true}"#.to_string(),
        )
        .await;
        assert_eq!(a.status, 200);
        assert!(a.body.ends_with("data: [DONE]\n\n"), "{}", a.body);
        // One scrape carries each engine's own series, under its own prefix, at its
        // profile's path; llama-cpp-python has no metrics and is not asked (no error).
        let text = common::get(&c, &mm.url("/metrics")).await.body;
        for (prefix, model) in [
            ("vllm:", "v"),
            ("sglang:", "s"),
            ("tgi_", "t"),
            ("llamacpp:", "l"),
        ] {
            let series = format!("{prefix}num_requests_running{{");
            let line = text
                .lines()
                .find(|l| l.starts_with(&series) && l.contains(&format!("model=\"{model}\"")));
            assert!(line.is_some(), "{series} of {model} missing:\n{text}");
        }
        for model in ["v", "s", "t", "l", "p"] {
            let zero = format!("modelmux_engine_scrape_errors_total{{model=\"{model}\"}} 0");
            assert!(text.contains(&zero), "{zero}:\n{text}");
        }
        let models = common::get(&c, &mm.url("/v1/models")).await.json();
        let ids: Vec<&str> = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["v", "s", "t", "sql", "l", "p"]);
    });
}

#[test]
fn a_flag_the_server_does_not_take_fails_the_model() {
    // A vLLM command line given to a server that speaks TGI's: the mock exits 2 as TGI's
    // launcher does, and modelmux gives up on the model instead of serving it.
    let mut mm = setup(vec![
        json!({"model_path": "org/a", "engine_cmd": mock_cmd("tgi")}),
    ])
    .env("MODELMUX_MAX_RESTARTS", "1")
    .start();
    let code = mm.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{}", mm.log());
    assert!(
        mm.log().contains("unexpected argument '--model' found"),
        "{}",
        mm.log()
    );
}

#[test]
fn single_model_params_drive_a_tgi_engine() {
    // OCI's single-model TGI contract: MODEL and PARAMS in TGI's vocabulary.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut s = setup(vec![]);
    s.env.insert("MODEL".into(), "org/m".into());
    s.env.insert(
        "PARAMS".into(),
        "--max-input-tokens 1024 --max-total-tokens 2048".into(),
    );
    s.env.insert("MODELMUX_ENGINE".into(), "tgi".into());
    s.env.insert("MOCK_DIALECT".into(), "tgi".into());
    s.env
        .insert("MOCK_REPORT_FILE".into(), report.to_string_lossy().into());
    // Setup::start always sets MULTI_MODEL_CONFIG, which would win over MODEL: start this
    // one by hand without it.
    let port = common::free_port();
    let mut child = s
        .command(dir.path(), port)
        .env_remove("MULTI_MODEL_CONFIG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(&mut child);
    let health = format!("http://127.0.0.1:{port}/health");
    common::wait_until(Duration::from_secs(30), "ready", || {
        common::blocking_get_status(&health) == Some(200)
    });
    let argv = common::report(&report)["argv"].clone();
    let argv: Vec<String> = serde_json::from_value(argv).unwrap();
    assert!(
        argv.ends_with(&[
            "--max-input-tokens".into(),
            "1024".into(),
            "--max-total-tokens".into(),
            "2048".into()
        ]),
        "{argv:?}"
    );
    common::run_async(Duration::from_secs(30), async {
        let c = common::client();
        let a = common::post(
            &c,
            &format!("http://127.0.0.1:{port}/v1/completions"),
            r#"{"model": "odsc-llm", "prompt": "x"}"#,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["x-mock-dialect"], "tgi");
    });
    drop(guard);
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
