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

/// A directory of stand-ins for the engine programs that are not installed here (`vllm`,
/// `text-generation-launcher`, `llama-server`): `plan` and `serve` check that the engine
/// program exists.
fn fake_engines() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for name in ["vllm", "text-generation-launcher", "llama-server"] {
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
    // Deterministic ports: the engines' own from PORT+1 (8080 by default), then TGI's
    // Prometheus and torch master ports after them.
    let ports: Vec<u64> = (0..5).map(|i| m[i]["port"].as_u64().unwrap()).collect();
    assert_eq!(ports, [8081, 8082, 8083, 8084, 8085]);
    assert_eq!(m[2]["extra_ports"], json!([8086, 8087]));
    assert_eq!(m[0]["extra_ports"], json!([]));
    // `vllm serve MODEL`: the model right after `serve`.
    assert_eq!(
        argv_before_port(&m[0]),
        [
            "vllm",
            "serve",
            "org/v",
            "--host",
            "127.0.0.1",
            "--port",
            "8081"
        ]
    );
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
    assert_eq!(tgi[0..2], ["--prometheus-port", "8086"]);
    assert_eq!(
        tgi[2..4],
        [
            "--shard-uds-path".to_string(),
            format!("/tmp/modelmux-tgi-{}", port(2))
        ]
    );
    assert_eq!(tgi[4..6], ["--master-port", "8087"]);
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
        ["vllm", "serve", "org/b", "--host"]
    );
}

#[test]
fn bad_engine_input_exits_2_before_anything_starts() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
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
        (
            r#"{"models": [{"model_path": "org/a", "engine": "sglang", "load": "on_demand", "unload": "sleep"}]}"#,
            &[],
            "models[0].unload: \"sleep\" needs vLLM's sleep mode, which engine sglang does not have; use \"unload\": \"stop\"",
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
        model("l", "llamacpp", "--alias l,l2"),
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
        // `uuid_request_ids`); the front converts others (tested below), a UUID goes as is.
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
        // One scrape carries each engine's own series, under its own names, at its
        // profile's path; llama-cpp-python has no metrics and is not asked (no error).
        let text = common::get(&c, &mm.url("/metrics")).await.body;
        for (running, model) in [
            ("vllm:num_requests_running", "v"),
            ("sglang:num_running_reqs", "s"),
            ("tgi_batch_current_size", "t"),
            ("llamacpp:requests_processing", "l"),
        ] {
            let series = format!("{running}{{");
            let line = text
                .lines()
                .find(|l| l.starts_with(&series) && l.contains(&format!("model=\"{model}\"")));
            assert!(line.is_some(), "{series} of {model} missing:\n{text}");
        }
        for model in ["v", "s", "t", "l", "p"] {
            let zero = format!("modelmux_engine_scrape_errors_total{{model=\"{model}\"}} 0");
            assert!(text.contains(&zero), "{zero}:\n{text}");
        }
        // /v1/models: every name with the fields its own engine reports, also where the
        // engine's list lacks the name (TGI lists its model id, llama.cpp its first alias).
        let models = common::get(&c, &mm.url("/v1/models")).await.json();
        let data = models["data"].as_array().unwrap();
        let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["v", "s", "t", "sql", "l", "l2", "p"]);
        let entry = |id: &str| data.iter().find(|m| m["id"] == id).unwrap().clone();
        for (id, owned_by) in [
            ("v", "vllm"),
            ("s", "sglang"),
            ("t", "org/t"),
            ("l", "llamacpp"),
            ("l2", "llamacpp"),
            ("p", "me"),
            // An adapter TGI does not list: modelmux's own entry.
            ("sql", "modelmux"),
        ] {
            let e = entry(id);
            assert_eq!(e["owned_by"], owned_by, "{e}");
            assert_eq!(e["state"], "ready", "{e}");
        }
        assert_eq!(entry("s")["max_model_len"], 4096);
        assert_eq!(entry("l2")["meta"], entry("l")["meta"]);
        assert!(entry("l2")["meta"]["n_ctx_train"].is_u64());
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
    let port = common::port_block();
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

/// `modelmux plan --json` with the configuration `setup` runs with, on `port`.
fn plan_of(setup: &Setup, port: u16) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = setup
        .command(dir.path(), port)
        .args(["plan", "--json"])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn flag_after(argv: &[String], flag: &str) -> Option<String> {
    let at = argv.iter().position(|a| a == flag)?;
    argv.get(at + 1).cloned()
}

#[test]
fn tgi_extra_ports_come_from_the_port_block_and_serve_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("t.json");
    let models = vec![
        json!({"model_path": "org/v", "params": "--served-model-name v"}),
        json!({"model_path": "org/t", "engine": "tgi", "engine_cmd": mock_cmd("tgi"),
               "env": {"MOCK_REPORT_FILE": report}}),
        json!({"model_path": "org/w", "params": "--served-model-name w"}),
    ];
    let port = common::port_block();
    let base = u64::from(port);
    let planned = plan_of(&setup(models.clone()), port);
    let m = &planned["models"];
    // The engines' own ports first (model i gets PORT+1+i), then TGI's two after them.
    let own: Vec<u64> = (0..3).map(|i| m[i]["port"].as_u64().unwrap()).collect();
    assert_eq!(own, [base + 1, base + 2, base + 3]);
    assert_eq!(m[1]["extra_ports"], json!([base + 4, base + 5]));
    assert_eq!(
        plan_of(&setup(models.clone()), port),
        planned,
        "deterministic"
    );

    // serve gives TGI exactly the planned ports.
    let mm = setup(models.clone()).start_on(port);
    mm.wait_ready(Duration::from_secs(60));
    let argv: Vec<String> =
        serde_json::from_value(common::report(&report)["argv"].clone()).unwrap();
    assert_eq!(flag_after(&argv, "--port"), Some((base + 2).to_string()));
    assert_eq!(
        flag_after(&argv, "--prometheus-port"),
        Some((base + 4).to_string())
    );
    assert_eq!(
        flag_after(&argv, "--master-port"),
        Some((base + 5).to_string())
    );
    drop(mm);

    // A busy extra port is the same clear error as a busy engine port, before anything starts.
    let port = common::port_block();
    let squat = port + 5;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", squat)).unwrap();
    let mut mm = setup(models).start_on(port);
    assert_eq!(mm.wait_exit(Duration::from_secs(30)), Some(1));
    let log = mm.log();
    assert!(
        log.contains(&format!(
            "extra engine port 127.0.0.1:{squat} of model org/t is in use"
        )),
        "{log}"
    );
    assert!(
        !log.contains("engine started"),
        "nothing was started: {log}"
    );
}

#[test]
fn a_hung_engine_is_found_by_its_own_servers_metrics() {
    // SGLang, TGI and llama.cpp name their running gauge and progress counters their own
    // way; each hangs mid-stream and each is restarted. llama-cpp-python has no metrics:
    // it is never judged, however long its request hangs.
    let models: Vec<Value> = ["sglang", "tgi", "llamacpp", "llamacpp-python"]
        .iter()
        .map(|engine| {
            let name = format!("{}-m", engine.replace('-', ""));
            let params = match *engine {
                "sglang" => format!("--served-model-name {name}"),
                "tgi" => format!("--served-model-name {name}"),
                "llamacpp" => format!("--alias {name}"),
                _ => format!("--model_alias {name}"),
            };
            json!({"model_path": format!("org/{name}"), "engine": engine,
                   "params": params, "engine_cmd": mock_cmd(engine)})
        })
        .collect();
    let mm = setup(models)
        .env("MODELMUX_STALL_TIMEOUT", "1")
        .env("MODELMUX_HEALTH_INTERVAL", "0.1")
        .start();
    mm.wait_ready(Duration::from_secs(60));
    let names = ["sglang-m", "tgi-m", "llamacpp-m", "llamacpppython-m"];
    common::run_async(Duration::from_secs(60), async {
        let c = common::client();
        let mut streams = Vec::new();
        for name in names {
            let body = json!({"model": name, "prompt": "x", "stream": true, "mock_chunks": 10,
                              "mock_stall_after_chunks": 2});
            let url = mm.url("/v1/completions");
            let c = c.clone();
            streams.push(tokio::spawn(async move {
                let headers = [
                    ("content-type", "application/json"),
                    ("x-request-id", "0c6c52f3-a1b3-4cbf-8bd4-b4a4b7f1a0a1"),
                ];
                let body = body.to_string();
                let req = common::request(&c, "POST", &url, &headers, &body);
                tokio::time::timeout(Duration::from_secs(20), req).await
            }));
        }
        // The three with metrics: their streams end once the hung engine is stopped.
        for (name, s) in names.iter().zip(streams.iter_mut()).take(3) {
            let answer = s.await.unwrap();
            assert!(answer.is_ok(), "{name}: the stream did not end");
        }
        // llama-cpp-python's is still hanging: nobody judged its engine.
        let last = streams.pop().unwrap();
        assert!(!last.is_finished());
        last.abort();
    });
    let mut health = Value::Null;
    common::run_async(Duration::from_secs(10), async {
        health = common::get(&common::client(), &mm.url("/health"))
            .await
            .json();
    });
    for (i, name) in names.iter().enumerate() {
        let m = &health["models"][i];
        assert_eq!(m["name"], *name);
        let restarts = m["restarts"].as_u64().unwrap();
        if i < 3 {
            assert_eq!(restarts, 1, "{name}: {m}");
            let exit = m["last_exit"].as_str().unwrap_or_default();
            assert!(
                exit.starts_with("hung: 1 request running"),
                "{name}: {exit}"
            );
        } else {
            assert_eq!(restarts, 0, "{name} has no metrics to judge: {m}");
        }
    }
    // An engine without metrics is not even asked for them.
    let log = mm.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("llamacpppython-m") && l.contains("cannot check")),
        "{log}"
    );
}

#[test]
fn cpu_cores_reach_vllm_and_llama_server_each_their_way() {
    let dir = tempfile::tempdir().unwrap();
    let report = |n: &str| dir.path().join(format!("{n}.json"));
    let models = vec![
        json!({"model_path": "org/v", "params": "--served-model-name v",
               "env": {"MOCK_REPORT_FILE": report("v")}}),
        json!({"model_path": "org/l", "engine": "llamacpp", "params": "--alias l",
               "engine_cmd": mock_cmd("llamacpp"), "env": {"MOCK_REPORT_FILE": report("l")}}),
        json!({"model_path": "org/p", "engine": "llamacpp-python", "params": "--model_alias p",
               "engine_cmd": mock_cmd("llamacpp-python")}),
    ];
    let port = common::port_block();
    let planned = plan_of(&setup(models.clone()), port);
    let m = &planned["models"];
    let vcores = m[0]["env"]["VLLM_CPU_OMP_THREADS_BIND"]
        .as_str()
        .expect("vLLM's cores")
        .to_string();
    let largv: Vec<String> = serde_json::from_value(m[1]["argv"].clone()).unwrap();
    let mask = flag_after(&largv, "--cpu-mask").expect("llama-server's mask");
    let threads = flag_after(&largv, "--threads").expect("llama-server's threads");
    let lcores: Vec<u32> = {
        let bits = u128::from_str_radix(mask.trim_start_matches("0x"), 16).unwrap();
        (0..128).filter(|c| bits & (1 << c) != 0).collect()
    };
    assert_eq!(threads, lcores.len().to_string(), "one thread per core");
    assert!(m[1]["env"].get("VLLM_CPU_OMP_THREADS_BIND").is_none());
    // llama-cpp-python cannot be given cores: it takes none of the split.
    assert!(m[2]["env"].get("VLLM_CPU_OMP_THREADS_BIND").is_none());
    let pargv: Vec<String> = serde_json::from_value(m[2]["argv"].clone()).unwrap();
    assert!(!pargv.iter().any(|a| a.contains("cpu")), "{pargv:?}");
    let v = modelmux::cpus::parse_list(&vcores);
    let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
    if allowed >= 2 {
        assert!(
            v.iter().all(|c| !lcores.contains(c)),
            "disjoint: {v:?} {lcores:?}"
        );
    }
    // serve gives them exactly the plan's.
    let mm = setup(models).start_on(port);
    mm.wait_ready(Duration::from_secs(60));
    assert_eq!(common::report(&report("v"))["omp_threads_bind"], vcores);
    let l = common::report(&report("l"));
    assert_eq!(
        (l["cpu_mask"].as_str(), l["threads"].as_str()),
        (Some(mask.as_str()), Some(threads.as_str()))
    );
}

#[test]
fn vllms_run_time_switches_go_to_vllm_engines_only() {
    // Run-time LoRA and sleep mode are vLLM's: its engine gets the variables that open
    // those endpoints (and --enable-sleep-mode for an on-demand model that sleeps); another
    // engine with --enable-lora and an on-demand stop gets neither.
    let plan = plan_json(
        &json!({"models": [
            {"model_path": "org/v", "params": "--served-model-name v --enable-lora",
             "load": "on_demand", "unload": "sleep"},
            {"model_path": "org/s", "engine": "sglang",
             "params": "--served-model-name s --enable-lora", "load": "on_demand"},
        ]}),
        &[("MODELMUX_GPUS", "none")],
    );
    let m = plan["models"].as_array().unwrap();
    assert_eq!(m[0]["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"], "True");
    assert_eq!(m[0]["env"]["VLLM_SERVER_DEV_MODE"], "1");
    assert!(argv_after_port(&m[0]).contains(&"--enable-sleep-mode".to_string()));
    assert_eq!(
        (m[0]["runtime_lora"].as_bool(), m[0]["unload"].as_str()),
        (Some(true), Some("sleep"))
    );
    assert_eq!(m[1]["env"].get("VLLM_ALLOW_RUNTIME_LORA_UPDATING"), None);
    assert_eq!(m[1]["env"].get("VLLM_SERVER_DEV_MODE"), None);
    assert!(!argv_after_port(&m[1]).contains(&"--enable-sleep-mode".to_string()));
    assert_eq!(
        (m[1]["runtime_lora"].as_bool(), m[1]["unload"].as_str()),
        (Some(false), Some("stop"))
    );
}

/// What the engine saw of one request sent down one wire.
fn sent(port: u16, general: bool, model: &str, id: Option<&str>) -> common::raw::Answer {
    let mut w = if general {
        common::raw::Wire::connect_general(port)
    } else {
        common::raw::Wire::connect(port)
    };
    let id = id.map_or(String::new(), |id| format!("X-Request-Id: {id}\r\n"));
    let body = json!({"model": model, "messages": [], "n": 1}).to_string();
    w.send(&common::raw::post("/v1/chat/completions", &id, &body));
    w.answer()
}

#[test]
fn each_engine_gets_the_model_name_and_request_id_it_takes_on_both_wires() {
    let mm = setup(vec![
        json!({"model_path": "org/v", "params": "--served-model-name v", "engine_cmd": mock_cmd("vllm")}),
        json!({"model_path": "org/t", "engine": "tgi", "params": "--served-model-name t --lora-adapters sql=/x/sql",
               "engine_cmd": mock_cmd("tgi")}),
        json!({"model_path": "org/p", "engine": "llamacpp-python", "params": "--model_alias p",
               "engine_cmd": mock_cmd("llamacpp-python")}),
    ])
    .start();
    mm.wait_ready(Duration::from_secs(60));
    let body_len = |model: &str| {
        json!({"model": model, "messages": [], "n": 1})
            .to_string()
            .len()
    };
    let mut uuids = Vec::new();
    for (general, wire) in [(false, "pass"), (true, "general")] {
        // TGI's base model: TGI reads any "model" but "tgi" as an adapter id, so the front
        // sends "tgi" (the body two bytes longer, framed as such) and no adapter applies.
        let a = sent(mm.port, general, "t", Some(&format!("t-{wire}")));
        assert_eq!(a.status, 200, "{wire}: {}", a.text());
        assert_eq!(a.header("x-mock-dialect"), Some("tgi"));
        assert_eq!(a.header("x-mock-adapter-id"), None, "{wire}: {}", a.text());
        let expected = (body_len("t") + 2).to_string();
        assert_eq!(a.header("x-mock-body-bytes"), Some(expected.as_str()));
        let answer: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            answer["model"], "tgi",
            "{wire}: what the engine was asked for"
        );
        assert_eq!(a.header("x-request-id"), Some(format!("t-{wire}").as_str()));
        // A TGI adapter keeps its name: that is its adapter id.
        let a = sent(mm.port, general, "sql", None);
        assert_eq!(a.status, 200, "{wire}: {}", a.text());
        assert_eq!(a.header("x-mock-adapter-id"), Some("sql"));
        let expected = body_len("sql").to_string();
        assert_eq!(a.header("x-mock-body-bytes"), Some(expected.as_str()));

        // llama-cpp-python refuses ids that are not UUIDs: it gets one made from the
        // client's id, and the client gets its own back.
        let client_id = format!("trace-7-{wire}");
        let a = sent(mm.port, general, "p", Some(&client_id));
        assert_eq!(a.status, 200, "{wire}: {}", a.text());
        assert_eq!(a.header("x-request-id"), Some(client_id.as_str()));
        let engine_id = a.header("x-mock-request-id").unwrap().to_string();
        assert_eq!(engine_id.len(), 36, "{engine_id}");
        assert_eq!(
            engine_id.split('-').map(str::len).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        uuids.push(engine_id);
        let same = sent(mm.port, general, "p", Some(&client_id));
        assert_eq!(
            same.header("x-mock-request-id"),
            Some(uuids[uuids.len() - 1].as_str())
        );
        // A made-up id is converted too; a UUID goes as it is.
        let a = sent(mm.port, general, "p", None);
        assert_eq!(a.status, 200, "{wire}: {}", a.text());
        let made = a.header("x-request-id").unwrap();
        assert!(made.starts_with("mmx-"), "{made}");
        assert_ne!(a.header("x-mock-request-id"), Some(made));
        let uuid = "0c6c52f3-a1b3-4cbf-8bd4-b4a4b7f1a0a1";
        let a = sent(mm.port, general, "p", Some(uuid));
        assert_eq!(a.header("x-mock-request-id"), Some(uuid));
        assert_eq!(a.header("x-request-id"), Some(uuid));

        // vLLM gets the client's name and id untouched.
        let a = sent(mm.port, general, "v", Some(&client_id));
        assert_eq!(a.status, 200, "{wire}: {}", a.text());
        assert_eq!(a.header("x-mock-request-id"), Some(client_id.as_str()));
        let expected = body_len("v").to_string();
        assert_eq!(a.header("x-mock-body-bytes"), Some(expected.as_str()));
        let answer: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(answer["model"], "v");
    }
    assert_ne!(uuids[0], uuids[1], "different client ids, different UUIDs");
    // The access log keeps the client's id.
    common::wait_until(Duration::from_secs(5), "access lines", || {
        let log = mm.log();
        log.contains("request_id=trace-7-pass wire=pass")
            && log.contains("request_id=trace-7-general wire=general")
    });
}
