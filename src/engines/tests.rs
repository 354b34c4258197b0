//! Profile tests: each server's mapping through the whole configuration path (params in,
//! engine command line out), the other-vocabulary check, and the planner's flags.

use crate::config::{self, Config, RawConfig};
use crate::engines::{Concept, Engine};
use crate::gpu::GpuOverride;
use crate::plan::{self, LaunchPlan};

fn load(models: &str, f: impl FnOnce(&mut RawConfig)) -> Result<Config, String> {
    let mut raw = RawConfig {
        multi_model_config: Some(models.to_string()),
        model_root: Some("/nonexistent-root".into()),
        ..Default::default()
    };
    f(&mut raw);
    config::load(&raw).map_err(|e| e.to_string())
}

/// One model `org/m` with this engine and params, planned on `gpus` with engine port 9000
/// (and 9001, 9002 for per-instance ports).
fn plan_one(engine: &str, params: &str, gpus: &str) -> LaunchPlan {
    let models = format!(
        r#"{{"models": [{{"model_path": "org/m", "engine": "{engine}", "params": {params:?}}}]}}"#
    );
    let c = load(&models, |_| ()).unwrap_or_else(|e| panic!("{e}"));
    let inv = GpuOverride::parse(gpus).unwrap().inventory();
    plan::build_with_ports(&c, &inv, &[9000, 9001, 9002]).unwrap_or_else(|e| panic!("{e}"))
}

fn argv(engine: &str, params: &str) -> String {
    plan_one(engine, params, "4").models[0].argv.join(" ")
}

fn params_error(engine: &str, params: &str) -> String {
    let models = format!(
        r#"{{"models": [{{"model_path": "org/m", "engine": "{engine}", "params": {params:?}}}]}}"#
    );
    load(&models, |_| ()).unwrap_err()
}

#[test]
fn each_profile_spells_the_launcher_flags_its_own_way() {
    assert_eq!(
        argv("vllm", "-tp 2"),
        "vllm serve org/m --host 127.0.0.1 --port 9000 --served-model-name org/m -tp 2"
    );
    assert_eq!(
        argv("sglang", "--tp-size 2 --served-model-name chat"),
        "python3 -m sglang.launch_server --model-path org/m --host 127.0.0.1 --port 9000 \
         --tp-size 2 --served-model-name chat --enable-metrics"
    );
    assert_eq!(
        argv("tgi", "--num-shard 2 --served-model-name chat"),
        "text-generation-launcher --model-id org/m --hostname 127.0.0.1 --port 9000 \
         --prometheus-port 9001 --shard-uds-path /tmp/modelmux-tgi-9000 --master-port 9002 \
         --num-shard 2"
    );
    assert_eq!(
        argv("llamacpp", "-c 4096 -a chat,chat2"),
        "llama-server --model org/m --host 127.0.0.1 --port 9000 -c 4096 -a chat,chat2 --metrics"
    );
    assert_eq!(
        argv("llamacpp-python", "--n_ctx 512"),
        "python3 -m llama_cpp.server --model org/m --host 127.0.0.1 --port 9000 \
         --model_alias org/m --n_ctx 512"
    );
}

#[test]
fn vllm_takes_the_model_after_serve_and_as_model_elsewhere() {
    let with_cmd = |cmd: &str| {
        let models = r#"{"models": [{"model_path": "org/m", "params": "--served-model-name m"}]}"#;
        let c = load(models, |raw| raw.engine_cmd = Some(cmd.into())).unwrap();
        let inv = GpuOverride::parse("1").unwrap().inventory();
        let p = plan::build_with_ports(&c, &inv, &[9000]).unwrap();
        p.models[0].argv.join(" ")
    };
    // `vllm serve MODEL`: positional right after `serve` (vLLM warns about --model there).
    assert_eq!(
        with_cmd("/opt/venv/bin/vllm serve"),
        "/opt/venv/bin/vllm serve org/m --host 127.0.0.1 --port 9000 --served-model-name m"
    );
    // The API server module (the real tier's command) takes --model.
    assert_eq!(
        with_cmd("/opt/venv/bin/python -m vllm.entrypoints.openai.api_server"),
        "/opt/venv/bin/python -m vllm.entrypoints.openai.api_server --model org/m --host \
         127.0.0.1 --port 9000 --served-model-name m"
    );
    // Only vLLM's profile has the rule: a wrapper named serve for another server still gets
    // that server's model flag.
    let models = r#"{"models": [{"model_path": "org/m", "engine": "sglang",
        "engine_cmd": "/opt/wrap serve"}]}"#;
    let c = load(models, |_| ()).unwrap();
    let inv = GpuOverride::parse("1").unwrap().inventory();
    let p = plan::build_with_ports(&c, &inv, &[9000]).unwrap();
    assert!(
        p.models[0]
            .argv
            .join(" ")
            .starts_with("/opt/wrap serve --model-path org/m "),
        "{:?}",
        p.models[0].argv
    );
}

#[test]
fn served_names_come_from_each_profiles_flag() {
    let names = |engine: &str, params: &str| {
        plan_one(engine, params, "none").models[0]
            .served_names
            .clone()
    };
    assert_eq!(names("vllm", "--served-model-name a b"), ["a", "b"]);
    assert_eq!(names("sglang", "--served-model-name a"), ["a"]);
    assert_eq!(names("llamacpp", "--alias a,b"), ["a", "b"]);
    assert_eq!(names("llamacpp", "-a a"), ["a"]);
    assert_eq!(names("llamacpp-python", "--model_alias a"), ["a"]);
    // TGI has no such flag: modelmux takes vLLM's spelling for its own and passes nothing.
    let tgi = plan_one("tgi", "--served-model-name a b", "none");
    assert_eq!(tgi.models[0].served_names, ["a", "b"]);
    assert!(
        !tgi.models[0].argv.join(" ").contains("served"),
        "{:?}",
        tgi.models[0].argv
    );
    assert_eq!(tgi.models[0].request_model.as_deref(), Some("tgi"));
    let e = params_error("sglang", "--served-model-name a b");
    assert!(
        e.contains("--served-model-name takes one name on sglang"),
        "{e}"
    );
}

#[test]
fn gpu_counts_follow_each_server() {
    let demand = |engine: &str, params: &str| {
        let models = format!(
            r#"{{"models": [{{"model_path": "org/m", "engine": "{engine}", "params": {params:?}}}]}}"#
        );
        load(&models, |_| ())
            .unwrap_or_else(|e| panic!("{e}"))
            .models[0]
            .gpu_demand
    };
    assert_eq!(demand("vllm", "-tp 2 -pp 2"), 4);
    assert_eq!(demand("sglang", "--tp-size 2 --dp-size 2"), 4);
    assert_eq!(demand("sglang", "--tensor-parallel-size 4"), 4);
    assert_eq!(
        demand("sglang", "--tp-size 2 --dp-size 2 --enable-dp-attention"),
        2
    );
    assert_eq!(demand("tgi", ""), 1);
    assert_eq!(demand("tgi", "--num-shard 4"), 4);
    assert_eq!(demand("llamacpp", ""), 1);
    assert_eq!(demand("llamacpp", "-ngl 0"), 0);
    assert_eq!(
        demand("llamacpp", "--n-gpu-layers 99 --tensor-split 3,1"),
        2
    );
    assert_eq!(demand("llamacpp", "--device none"), 0);
    assert_eq!(demand("llamacpp-python", ""), 0);
    assert_eq!(demand("llamacpp-python", "--n_gpu_layers -1"), 1);
    // The plan gives a CPU-only llama.cpp no GPU, and the others theirs.
    let p = plan_one("llamacpp", "-ngl 0", "2");
    assert_eq!(p.models[0].env["CUDA_VISIBLE_DEVICES"], "");
    let p = plan_one("tgi", "--num-shard 2", "2");
    assert_eq!(p.models[0].gpus, ["0", "1"]);
}

#[test]
fn adapters_go_in_each_servers_one_flag() {
    let root = tempfile::tempdir().unwrap();
    for d in ["sql", "chat"] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    let r = root.path().to_string_lossy().into_owned();
    let models = |engine: &str, params: &str| {
        format!(
            r#"{{"models": [{{"model_path": "org/m", "engine": "{engine}", "params": {params:?},
                "fine_tune_weights": [{{"model_name": "sql", "model_path": "sql"}}]}}]}}"#
        )
    };
    let args = |engine: &str, params: &str| {
        let c = load(&models(engine, params), |raw| {
            raw.model_root = Some(r.clone())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = c.models[0]
            .adapters
            .iter()
            .map(|a| a.name.clone())
            .collect();
        (c.models[0].args.tokens().join(" "), names)
    };
    let (vllm, names) = args("vllm", "--lora-modules chat=/x/chat");
    assert_eq!(names, ["chat", "sql"]);
    assert!(
        vllm.ends_with(&format!(
            "--enable-lora --lora-modules chat=/x/chat sql={r}/sql"
        )),
        "{vllm}"
    );
    let (sglang, names) = args("sglang", "--lora-paths chat=/x/chat");
    assert_eq!(names, ["chat", "sql"]);
    assert!(
        sglang.contains(&format!("--lora-paths chat=/x/chat sql={r}/sql")),
        "{sglang}"
    );
    assert!(!sglang.contains("--enable-lora"), "{sglang}");
    let (tgi, names) = args("tgi", "--lora-adapters chat=/x/chat,org/other@main");
    assert_eq!(names, ["chat", "org/other", "sql"]);
    assert!(
        tgi.ends_with(&format!(
            "--lora-adapters chat=/x/chat,org/other@main,sql={r}/sql"
        )),
        "{tgi}"
    );
    // llama.cpp applies its adapters to every request: a named adapter is refused.
    let e = load(&models("llamacpp", ""), |raw| {
        raw.model_root = Some(r.clone())
    })
    .unwrap_err();
    assert!(e.starts_with("MULTI_MODEL_CONFIG: models[0].params: llamacpp applies --lora adapters to every request and cannot serve adapter \"sql\""), "{e}");
    let plain = plan_one("llamacpp", "--lora /x/a.gguf", "none");
    assert!(plain.models[0].argv.join(" ").contains("--lora /x/a.gguf"));
    assert!(plain.models[0].adapters.is_empty());
}

#[test]
fn another_servers_flags_are_refused_with_this_servers_spelling() {
    let cases = [
        (
            "tgi",
            "--tensor-parallel-size 2",
            "--tensor-parallel-size is a flag of vllm, not of tgi (this model's engine): tgi spells it --num-shard",
        ),
        (
            "tgi",
            "-tp 2",
            "-tp is a flag of vllm, not of tgi (this model's engine): tgi spells it --num-shard",
        ),
        (
            "tgi",
            "--gpu-memory-utilization 0.5",
            "tgi spells it --cuda-memory-fraction",
        ),
        (
            "vllm",
            "--num-shard 2",
            "--num-shard is a flag of tgi, not of vllm (this model's engine): vllm spells it --tensor-parallel-size",
        ),
        (
            "vllm",
            "--mem-fraction-static 0.5",
            "vllm spells it --gpu-memory-utilization",
        ),
        (
            "vllm",
            "-ngl 99",
            "-ngl is a flag of llamacpp, not of vllm (this model's engine): vllm has no such flag",
        ),
        (
            "sglang",
            "--max-model-len 4096",
            "sglang spells it --context-length",
        ),
        ("sglang", "-tp 2", "sglang spells it --tp-size"),
        (
            "llamacpp",
            "--max-model-len 4096",
            "llamacpp spells it --ctx-size",
        ),
        (
            "llamacpp",
            "--served-model-name x",
            "llamacpp spells it --alias",
        ),
        (
            "llamacpp",
            "--lora-modules a=b",
            "llamacpp spells it --lora",
        ),
        (
            "llamacpp-python",
            "--ctx-size 512",
            "llamacpp-python spells it --n_ctx",
        ),
        (
            "llamacpp-python",
            "--model-alias x",
            "--model-alias is not how llamacpp-python spells it: use --model_alias",
        ),
        (
            "tgi",
            "--max_total_tokens 10",
            "--max_total_tokens is not how tgi spells it: use --max-total-tokens",
        ),
        ("llamacpp", "--n_gpu_layers 1", "use --n-gpu-layers"),
    ];
    for (engine, params, expected) in cases {
        let e = params_error(engine, params);
        assert!(
            e.starts_with("MULTI_MODEL_CONFIG: models[0].params: "),
            "{engine} {params}: {e}"
        );
        assert!(e.contains(expected), "{engine} {params}: {e}");
    }
    // Accepted spellings of one's own server pass, aliases included; unknown flags pass on
    // to the engine (it knows its own flags better than a list here would).
    for (engine, params) in [
        (
            "sglang",
            "--tensor-parallel-size 2 --model-loader-extra-config {} --device cpu",
        ),
        ("llamacpp", "-p hello"),
        ("vllm", "--max_model_len 4096 -tp 1 --enforce-eager"),
        ("llamacpp", "--gpu-layers 10 -c 128 --flash-attn on"),
        ("tgi", "--max-input-tokens 10 --sharded false"),
    ] {
        let models = format!(
            r#"{{"models": [{{"model_path": "org/m", "engine": "{engine}", "params": {params:?}}}]}}"#
        );
        load(&models, |_| ()).unwrap_or_else(|e| panic!("{engine} {params}: {e}"));
    }
}

#[test]
fn launcher_flags_in_any_spelling_are_dropped_with_a_warning() {
    let models = r#"{"models": [
        {"model_path": "org/a", "engine": "tgi", "params": "--host 0.0.0.0 -p 1 --model-id x"},
        {"model_path": "org/b", "engine": "llamacpp", "params": "-m x --port=1"}]}"#;
    let c = load(models, |_| ()).unwrap();
    assert!(c.models[0].args.args.is_empty(), "{:?}", c.models[0].args);
    assert_eq!(c.models[1].args.tokens(), ["--alias", "org/b", "--metrics"]);
    let w = c.warnings.join("\n");
    assert!(
        w.contains("models[0]: --host 0.0.0.0 is ignored; modelmux sets --hostname itself"),
        "{w}"
    );
    assert!(
        w.contains("models[0]: -p 1 is ignored; modelmux sets --port itself"),
        "{w}"
    );
    assert!(
        w.contains("models[1]: -m x is ignored; modelmux sets --model itself"),
        "{w}"
    );
}

#[test]
fn engine_and_command_come_from_the_model_then_the_environment() {
    let models = r#"{"models": [
        {"model_path": "org/a"},
        {"model_path": "org/b", "engine": "tgi"},
        {"model_path": "org/c", "engine": "sglang", "engine_cmd": "/opt/sgl/bin/python -m sglang.launch_server"},
        {"model_path": "org/d", "engine": "vllm"}]}"#;
    let c = load(models, |raw| {
        raw.engine = Some("tgi".into());
        raw.engine_cmd = Some("/usr/local/bin/tgi-launcher --json-output".into());
        raw.vllm_params = Some("--enforce-eager".into());
    })
    .unwrap();
    let engines: Vec<Engine> = c.models.iter().map(|m| m.engine).collect();
    assert_eq!(
        engines,
        [Engine::Tgi, Engine::Tgi, Engine::Sglang, Engine::Vllm]
    );
    let cmds: Vec<String> = c.models.iter().map(|m| m.engine_cmd.join(" ")).collect();
    assert_eq!(
        cmds,
        [
            "/usr/local/bin/tgi-launcher --json-output",
            "/usr/local/bin/tgi-launcher --json-output",
            "/opt/sgl/bin/python -m sglang.launch_server",
            "vllm serve",
        ]
    );
    assert_eq!(
        c.models[3].engine_cmd_origin,
        "engine vllm (default command)"
    );
    // VLLM_PARAMS reaches the vLLM model only.
    assert_eq!(
        c.models[3].args.tokens(),
        ["--served-model-name", "org/d", "--enforce-eager"]
    );
    assert!(c.models[..3].iter().all(|m| !m.args.has("--enforce-eager")));
    let e = load(
        r#"{"models": [{"model_path": "org/a", "engine": "ollama"}]}"#,
        |_| (),
    )
    .unwrap_err();
    assert_eq!(
        e,
        "MULTI_MODEL_CONFIG: models[0].engine: unknown engine \"ollama\"; use one of vllm, sglang, \
         tgi, llamacpp, llamacpp-python"
    );
    let e = load(
        r#"{"models": [{"model_path": "org/a", "engine_cmd": "'x"}]}"#,
        |_| (),
    )
    .unwrap_err();
    assert!(
        e.starts_with("MULTI_MODEL_CONFIG: models[0].engine_cmd=\"'x\": not a command line"),
        "{e}"
    );
}

#[test]
fn single_model_params_speak_the_engines_vocabulary() {
    let raw = RawConfig {
        model: Some("org/m".into()),
        params: Some("--max-input-tokens 1024 --max-total-tokens 2048".into()),
        engine: Some("tgi".into()),
        ..Default::default()
    };
    let c = config::load(&raw).unwrap();
    assert_eq!(c.models[0].served_names, ["odsc-llm"]);
    assert_eq!(
        c.models[0].args.tokens().join(" "),
        "--max-input-tokens 1024 --max-total-tokens 2048"
    );
    let raw = RawConfig {
        params: Some("--max-model-len 2048".into()),
        ..raw
    };
    let e = config::load(&raw).unwrap_err().to_string();
    assert!(
        e.starts_with("PARAMS: --max-model-len is a flag of vllm, not of tgi"),
        "{e}"
    );
}

#[test]
fn planner_flags_per_profile() {
    let fraction: Vec<_> = Engine::ALL
        .map(|e| e.profile().memory_fraction_flag())
        .into();
    assert_eq!(
        fraction,
        [
            Some("--gpu-memory-utilization"),
            Some("--mem-fraction-static"),
            Some("--cuda-memory-fraction"),
            None,
            None
        ]
    );
    let context: Vec<_> = Engine::ALL.map(|e| e.profile().max_context_flag()).into();
    assert_eq!(
        context,
        [
            Some("--max-model-len"),
            Some("--context-length"),
            Some("--max-total-tokens"),
            Some("--ctx-size"),
            Some("--n_ctx")
        ]
    );
    // The planner writes its share in each engine's spelling, and keeps a user's own.
    let mut args =
        crate::config::EngineArgs::parse_for("-c 512", "p", Engine::Llamacpp.profile()).unwrap();
    let ctx = crate::engines::concept_arg(Engine::Llamacpp, &args, Concept::MaxContext).unwrap();
    assert_eq!(ctx.values, ["512"]);
    assert!(!crate::engines::set_concept(
        Engine::Llamacpp,
        &mut args,
        Concept::GpuMemoryFraction,
        "0.4"
    ));
    let mut args = crate::config::EngineArgs::default();
    assert!(crate::engines::set_concept(
        Engine::Sglang,
        &mut args,
        Concept::GpuMemoryFraction,
        "0.4"
    ));
    assert_eq!(args.tokens(), ["--mem-fraction-static", "0.4"]);
    assert!(!crate::engines::set_concept(
        Engine::Sglang,
        &mut args,
        Concept::GpuMemoryFraction,
        "0.5"
    ));
    // The flag the planner reads back from params, whatever alias the user wrote.
    let p = Engine::Llamacpp.profile();
    assert_eq!(p.canonical("-c"), "--ctx-size");
    assert_eq!(p.concept_of(&p.canonical("-c")), Some(Concept::MaxContext));
}

#[test]
fn plan_shows_engine_health_and_metrics() {
    let p = plan_one("llamacpp-python", "", "none");
    let m = &p.models[0];
    assert_eq!(
        (m.health_path.as_str(), m.metrics_path.as_deref()),
        ("/v1/models", None)
    );
    let text = p.to_string();
    assert!(
        text.contains("  engine:       llamacpp-python (llama-cpp-python"),
        "{text}"
    );
    assert!(text.contains("  health:       /v1/models"), "{text}");
    let json = serde_json::to_value(plan_one("tgi", "", "none")).unwrap();
    let m = &json["models"][0];
    assert_eq!(m["engine"], "tgi");
    assert_eq!(m["metrics_prefix"], "tgi_");
    assert_eq!(m["models_list"], "model_path");
    assert_eq!(m["request_model"], "tgi");
}

/// A model root with a small safetensors model (`qwen`, Qwen2-0.5B's shape) and a GGUF file
/// (`tiny.gguf`, 4.9 GB, 8k context), sparse.
fn model_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    crate::weights::fixtures::QWEN2_0_5B
        .write(&root.path().join("qwen"), 1)
        .unwrap();
    crate::weights::write_minimal_gguf(
        &root.path().join("tiny.gguf"),
        "llama",
        &[
            ("block_count", 32),
            ("attention.head_count", 32),
            ("attention.head_count_kv", 8),
            ("embedding_length", 4096),
            ("context_length", 8192),
        ],
        4_920_000_000,
    )
    .unwrap();
    root
}

/// Plans these models (JSON list) from `root` on `gpus`, with engine ports from 9000.
fn plan_files(root: &tempfile::TempDir, models: serde_json::Value, gpus: &str) -> LaunchPlan {
    let c = load_files(root, models).unwrap_or_else(|e| panic!("{e}"));
    let inv = GpuOverride::parse(gpus).unwrap().inventory();
    let ports: Vec<u16> = (9000..9020).collect();
    plan::build_with_ports(&c, &inv, &ports).unwrap_or_else(|e| panic!("{e}"))
}

fn load_files(root: &tempfile::TempDir, models: serde_json::Value) -> Result<Config, String> {
    let text = serde_json::json!({ "models": models }).to_string();
    load(&text, |raw| {
        raw.model_root = Some(root.path().to_string_lossy().into_owned())
    })
}

/// The value after `flag` in a model's command line.
fn flag_value(m: &plan::ModelLaunch, flag: &str) -> Option<String> {
    let at = m.argv.iter().position(|a| a == flag)?;
    m.argv.get(at + 1).cloned()
}

#[test]
fn each_engine_gets_its_share_of_a_shared_gpu_in_its_own_flag() {
    let root = model_root();
    let p = plan_files(
        &root,
        serde_json::json!([
            {"model_path": "qwen", "params": "--served-model-name v"},
            {"model_path": "qwen", "engine": "sglang", "params": "--served-model-name s"},
            {"model_path": "qwen", "engine": "tgi", "params": "--served-model-name t"},
        ]),
        "1x24GiB",
    );
    let mut total = 0.0;
    for (m, flag) in p.models.iter().zip([
        "--gpu-memory-utilization",
        "--mem-fraction-static",
        "--cuda-memory-fraction",
    ]) {
        let share = m.gpu_share.expect("a share on a shared GPU");
        assert_eq!(
            flag_value(m, flag),
            Some(crate::placement::share_text(share)),
            "{}: {:?}",
            m.name,
            m.argv
        );
        // Only its own engine's spelling.
        for other in [
            "--gpu-memory-utilization",
            "--mem-fraction-static",
            "--cuda-memory-fraction",
        ] {
            if other != flag {
                assert!(!m.argv.iter().any(|a| a == other), "{:?}", m.argv);
            }
        }
        total += share;
    }
    assert!(total <= 0.92, "{total}");
    // Engines on one GPU start one after another.
    assert_eq!(p.models[2].start_after, ["v", "s"]);

    // A user's own value, in the engine's spelling, is kept and counted against the GPU.
    let p = plan_files(
        &root,
        serde_json::json!([
            {"model_path": "qwen", "engine": "sglang",
             "params": "--served-model-name s --mem-fraction-static 0.3"},
            {"model_path": "qwen", "engine": "tgi",
             "params": "--served-model-name t --cuda-memory-fraction=0.25"},
            {"model_path": "qwen", "params": "--served-model-name v"},
        ]),
        "1x24GiB",
    );
    assert_eq!(p.models[0].gpu_share, Some(0.3));
    assert_eq!(p.models[1].gpu_share, Some(0.25));
    let own: Vec<&String> = p.models[0]
        .argv
        .iter()
        .filter(|a| a.starts_with("--mem-fraction-static"))
        .collect();
    assert_eq!(own.len(), 1, "{:?}", p.models[0].argv);
    assert!(
        p.models[1]
            .argv
            .contains(&"--cuda-memory-fraction=0.25".to_string())
    );
    let rest = p.models[2].gpu_share.unwrap();
    assert!(rest <= 0.92 - 0.55 + 1e-9, "{rest}");
}

#[test]
fn a_llamacpp_model_on_a_shared_gpu_reserves_its_estimate_without_a_flag() {
    let root = model_root();
    let p = plan_files(
        &root,
        serde_json::json!([
            {"model_path": "qwen", "params": "--served-model-name v"},
            {"model_path": "tiny.gguf", "engine": "llamacpp", "params": "-a g -c 4096"},
        ]),
        "1x24GiB",
    );
    let (v, g) = (&p.models[0], &p.models[1]);
    assert_eq!(g.gpus, ["0"]);
    let e = g
        .memory_estimate
        .as_ref()
        .expect("a GGUF on disk has an estimate");
    assert_eq!(e.max_model_len, 4096, "-c is llama.cpp's context");
    // Reserved: its need, rounded up to the share step, not a proportional part.
    let size = 24.0 * (1u64 << 30) as f64;
    let reserved = g.gpu_share.unwrap();
    let need = e.need.inside as f64 / size;
    assert!(
        reserved >= need && reserved < need + 0.0011,
        "{reserved} for {need}"
    );
    // ... and never passed to llama-server, which has no such flag.
    for flag in [
        "--gpu-memory-utilization",
        "--mem-fraction-static",
        "--cuda-memory-fraction",
    ] {
        assert!(!g.argv.iter().any(|a| a == flag), "{:?}", g.argv);
    }
    // vLLM gets the rest of the GPU's allowance.
    let outside = (v.memory_estimate.as_ref().unwrap().need.outside + e.need.outside) as f64;
    let rest = 0.92 - reserved - outside / size;
    let vshare = v.gpu_share.unwrap();
    assert!(
        vshare <= rest + 1e-9 && vshare > rest - 0.002,
        "{vshare} of {rest}"
    );
    assert_eq!(
        flag_value(v, "--gpu-memory-utilization"),
        Some(crate::placement::share_text(vshare))
    );
    let text = p.to_string();
    assert!(
        text.contains("(reserved; llamacpp has no memory-fraction flag)"),
        "{text}"
    );
    assert!(text.contains("(--gpu-memory-utilization)"), "{text}");

    // Alone on a GPU it gets no share at all; with no layers on the GPU it needs none.
    let p = plan_files(
        &root,
        serde_json::json!([{"model_path": "tiny.gguf", "engine": "llamacpp"}]),
        "1x24GiB",
    );
    assert_eq!((p.models[0].gpu_share, p.models[0].gpus.len()), (None, 1));
    let p = plan_files(
        &root,
        serde_json::json!([
            {"model_path": "qwen", "params": "--served-model-name v"},
            {"model_path": "tiny.gguf", "engine": "llamacpp", "params": "-ngl 0"},
        ]),
        "1x24GiB",
    );
    assert!(p.models[1].gpus.is_empty() && p.models[1].memory_estimate.is_none());
    assert_eq!(p.models[0].gpu_share, None, "vLLM alone on its GPU");
}

#[test]
fn estimates_read_the_context_in_each_engines_spelling() {
    let root = model_root();
    let len = |engine: &str, path: &str, params: &str| {
        let p = plan_files(
            &root,
            serde_json::json!([{"model_path": path, "engine": engine, "params": params}]),
            "1x80GiB",
        );
        let e = p.models[0].memory_estimate.clone().expect("an estimate");
        (e.max_model_len, e.kv_cache_bytes)
    };
    let vllm = len("vllm", "qwen", "--max-model-len 1024");
    assert_eq!(vllm.0, 1024);
    assert_eq!(
        len("vllm", "qwen", "--max_model_len 1k"),
        (1000, len("vllm", "qwen", "--max-model-len 1000").1)
    );
    assert_eq!(len("sglang", "qwen", "--context-length 1024"), vllm);
    assert_eq!(len("tgi", "qwen", "--max-total-tokens 1024"), vllm);
    // The model's own length where the flag is absent (or says so).
    assert_eq!(len("sglang", "qwen", "").0, 32_768);
    assert_eq!(len("vllm", "qwen", "--max-model-len auto").0, 32_768);
    assert_eq!(len("llamacpp", "tiny.gguf", "").0, 8192);
    assert_eq!(len("llamacpp", "tiny.gguf", "-c 0").0, 8192);
    assert_eq!(len("llamacpp", "tiny.gguf", "--ctx-size 2048").0, 2048);
    // llama-cpp-python's own default is 2048 tokens, not the model's.
    assert_eq!(
        len("llamacpp-python", "tiny.gguf", "--n_gpu_layers -1").0,
        2048
    );
    assert_eq!(
        len(
            "llamacpp-python",
            "tiny.gguf",
            "--n_gpu_layers -1 --n_ctx 4096"
        )
        .0,
        4096
    );

    // GPU counts from the profile spread the estimate: SGLang's --tp-size, TGI's shards.
    let spread = |engine: &str, params: &str| {
        let p = plan_files(
            &root,
            serde_json::json!([{"model_path": "qwen", "engine": engine, "params": params}]),
            "2x80GiB",
        );
        (
            p.models[0].gpus.len(),
            p.models[0].memory_estimate.as_ref().unwrap().gpus,
        )
    };
    assert_eq!(spread("sglang", "--tp-size 2"), (2, 2));
    assert_eq!(spread("tgi", "--num-shard 2"), (2, 2));
    assert_eq!(spread("vllm", "-tp 2"), (2, 2));
}

#[test]
fn memory_flags_are_checked_in_each_engines_spelling() {
    let root = model_root();
    let err = |engine: &str, params: &str| {
        load_files(
            &root,
            serde_json::json!([{"model_path": "qwen", "engine": engine, "params": params}]),
        )
        .unwrap_err()
    };
    assert_eq!(
        err("sglang", "--mem-fraction-static 1.5"),
        "MULTI_MODEL_CONFIG: models[0].params: --mem-fraction-static must be a fraction above 0 and at most 1, got \"1.5\""
    );
    assert_eq!(
        err("tgi", "--cuda-memory-fraction=0"),
        "MULTI_MODEL_CONFIG: models[0].params: --cuda-memory-fraction must be a fraction above 0 and at most 1, got \"0\""
    );
    // Suffixes are vLLM's own; the others take a plain number.
    assert_eq!(
        err("sglang", "--context-length 32k"),
        "MULTI_MODEL_CONFIG: models[0].params: --context-length must be a positive whole number, got \"32k\""
    );
    assert!(err("llamacpp", "-c lots").contains("-c must be a positive whole number"));
    // vLLM's finer flags are vLLM's: another engine's own --kv-cache-dtype values pass.
    assert!(
        load_files(
            &root,
            serde_json::json!([{"model_path": "qwen", "engine": "sglang", "params": "--kv-cache-dtype fp8_e5m2"}]),
        )
        .is_ok()
    );
}

#[test]
fn cpu_engines_are_given_cores_the_way_their_server_takes_them() {
    use crate::config::EngineArgs;
    use std::collections::BTreeMap;
    assert_eq!(crate::engines::hex_mask(&[0]), "0x1");
    assert_eq!(crate::engines::hex_mask(&[0, 1, 2, 3]), "0xf");
    assert_eq!(crate::engines::hex_mask(&[1, 4, 9]), "0x212");
    let none = BTreeMap::new();
    let args =
        |engine: Engine, text: &str| EngineArgs::parse_for(text, "p", engine.profile()).unwrap();
    // Who takes part in the split, with how many core sets.
    let ranks = |engine: Engine, text: &str, gpus: u32| {
        crate::engines::cpu_ranks(engine, &args(engine, text), &none, gpus)
    };
    assert_eq!(ranks(Engine::Vllm, "", 2), Some(2));
    assert_eq!(ranks(Engine::Llamacpp, "", 1), Some(1));
    assert_eq!(ranks(Engine::Llamacpp, "-t 3", 1), None, "its own threads");
    assert_eq!(ranks(Engine::Llamacpp, "-Cr 0-1", 1), None, "its own cores");
    for engine in [Engine::Sglang, Engine::Tgi, Engine::LlamacppPython] {
        assert_eq!(ranks(engine, "", 1), None, "{engine}");
    }
    let own: BTreeMap<String, String> =
        [("VLLM_CPU_OMP_THREADS_BIND".to_string(), "0".to_string())].into();
    assert_eq!(
        crate::engines::cpu_ranks(Engine::Vllm, &args(Engine::Vllm, ""), &own, 1),
        None
    );

    // vLLM: the variable; llama.cpp: --cpu-mask and one thread per core.
    let (mut a, mut env) = (args(Engine::Vllm, ""), BTreeMap::new());
    crate::engines::bind_cpus(Engine::Vllm, "0-1|2-3", &mut a, &mut env);
    assert_eq!(env["VLLM_CPU_OMP_THREADS_BIND"], "0-1|2-3");
    assert!(a.args.is_empty());
    let (mut a, mut env) = (args(Engine::Llamacpp, "-c 512"), BTreeMap::new());
    crate::engines::bind_cpus(Engine::Llamacpp, "2-3,6", &mut a, &mut env);
    assert!(env.is_empty());
    assert_eq!(
        a.tokens(),
        ["-c", "512", "--cpu-mask", "0x4c", "--threads", "3"]
    );
}

#[test]
fn cpu_cores_reach_llama_server_in_the_plan() {
    let p = plan_one("llamacpp", "-c 512", "none");
    let argv = &p.models[0].argv;
    let mask = argv
        .iter()
        .position(|a| a == "--cpu-mask")
        .map(|i| &argv[i + 1]);
    let threads = argv
        .iter()
        .position(|a| a == "--threads")
        .map(|i| &argv[i + 1]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match (mask, threads) {
        (Some(mask), Some(threads)) => {
            assert!(mask.starts_with("0x"), "{argv:?}");
            let n: usize = threads.parse().unwrap();
            assert!(n >= 1 && n <= cpus, "{argv:?}");
        }
        _ => panic!("no cores for a CPU llama-server: {argv:?}"),
    }
    assert!(!p.models[0].env.contains_key("VLLM_CPU_OMP_THREADS_BIND"));
    // Not with GPUs, and not for servers that cannot take them.
    assert!(
        !plan_one("llamacpp", "", "1").models[0]
            .argv
            .contains(&"--cpu-mask".to_string())
    );
    let p = plan_one("llamacpp-python", "", "none");
    assert!(
        !p.models[0].argv.iter().any(|a| a.contains("cpu")),
        "{:?}",
        p.models[0].argv
    );
    assert!(!p.models[0].env.contains_key("VLLM_CPU_OMP_THREADS_BIND"));
}

#[test]
fn the_engines_api_key_is_read_in_its_own_spelling() {
    use std::collections::BTreeMap;
    let argv = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let none = BTreeMap::new();
    let key = |engine: Engine, line: &str| crate::engines::api_key(engine, &argv(line), &none);
    assert_eq!(
        key(Engine::Vllm, "vllm serve m --api-key k1").as_deref(),
        Some("k1")
    );
    assert_eq!(key(Engine::Sglang, "x --api-key=k2").as_deref(), Some("k2"));
    assert_eq!(
        key(Engine::Llamacpp, "llama-server --api-key a,b").as_deref(),
        Some("a")
    );
    assert_eq!(
        key(Engine::LlamacppPython, "x --api_key k3").as_deref(),
        Some("k3")
    );
    assert_eq!(key(Engine::LlamacppPython, "x --api-key k3"), None);
    let env: BTreeMap<String, String> = [("LLAMA_API_KEY".to_string(), "k4".to_string())].into();
    assert_eq!(
        crate::engines::api_key(Engine::Llamacpp, &argv("llama-server"), &env).as_deref(),
        Some("k4")
    );
    // llama.cpp's key file: the first line that is neither empty nor a comment; a key on
    // the command line comes first.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "# rotated monthly\n\nfile k5\nk6\n").unwrap();
    let line = format!("llama-server --api-key-file {}", file.display());
    assert_eq!(key(Engine::Llamacpp, &line).as_deref(), Some("file k5"));
    let line = format!(
        "llama-server --api-key-file={} --api-key k7",
        file.display()
    );
    assert_eq!(key(Engine::Llamacpp, &line).as_deref(), Some("k7"));
    let env: BTreeMap<String, String> = [(
        "LLAMA_ARG_API_KEY_FILE".to_string(),
        file.display().to_string(),
    )]
    .into();
    assert_eq!(
        crate::engines::api_key(Engine::Llamacpp, &argv("llama-server"), &env).as_deref(),
        Some("file k5")
    );
    assert_eq!(
        key(Engine::Llamacpp, "llama-server --api-key-file /nonexistent"),
        None
    );
    assert_eq!(
        key(
            Engine::Vllm,
            &format!("vllm --api-key-file {}", file.display())
        ),
        None
    );
    // The other-vocabulary check knows the spelling too.
    assert!(params_error("llamacpp-python", "--api-key k").contains("use --api_key"));
}

#[test]
fn v1_models_entries_cover_every_served_name() {
    use serde_json::json;
    let names = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let served = ["chat".to_string(), "chat2".to_string()];
    // SGLang, llama.cpp, llama-cpp-python: the first name only; the second is copied from it.
    let list = vec![json!({"id": "chat", "object": "model", "max_model_len": 512})];
    let out = crate::engines::model_entries(&served, "/m", &[], list);
    assert_eq!(names(&out), ["chat", "chat2"]);
    assert_eq!(out[1]["max_model_len"], 512);
    // TGI: its model id only.
    let list = vec![json!({"id": "/m", "object": "model", "owned_by": "/m"})];
    let out = crate::engines::model_entries(&served, "/m", &[], list);
    assert_eq!(names(&out), ["/m", "chat", "chat2"]);
    assert_eq!(out[2]["owned_by"], "/m");
    // An adapter the engine lists is not taken for the base model; vLLM lists everything.
    let list = vec![
        json!({"id": "sql", "parent": "chat"}),
        json!({"id": "chat", "max_model_len": 4096}),
        json!({"id": "chat2", "max_model_len": 4096}),
    ];
    let out = crate::engines::model_entries(&served, "/m", &["sql".to_string()], list.clone());
    assert_eq!(out, list);
    let list = vec![json!({"id": "sql", "parent": "x"}), json!({"id": "other"})];
    let out = crate::engines::model_entries(&served, "/m", &["sql".to_string()], list);
    assert_eq!(out[2], json!({"id": "chat"}));
    // Nothing to copy from: left as it is (the front makes its own entries).
    assert!(crate::engines::model_entries(&served, "/m", &[], vec![]).is_empty());
}
