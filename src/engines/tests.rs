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
        "python3 -m vllm.entrypoints.openai.api_server --model org/m --host 127.0.0.1 --port 9000 \
         --served-model-name org/m -tp 2"
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
    assert!(e.starts_with("models[0].params: llamacpp applies --lora adapters to every request and cannot serve adapter \"sql\""), "{e}");
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
            e.starts_with("models[0].params: "),
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
            "python3 -m vllm.entrypoints.openai.api_server",
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
        e.starts_with("models[0].engine_cmd=\"'x\": not a command line"),
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
