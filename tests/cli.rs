//! `modelmux plan`, `modelmux gpus` and configuration errors, through the real binary.

mod common;

use common::run_clean as run;

const CONFIG: &str = r#"{"models": [
  {"model_path": "meta-llama/Llama-3.1-8B-Instruct", "params": "--served-model-name llama -tp 2",
   "fine_tune_weights": [{"model_name": "llama-sql", "model_path": "org/sql-lora"}]},
  {"model_path": "BAAI/bge-m3", "model_task": "text_embedding", "params": "--served-model-name bge"}
]}"#;

#[test]
fn plan_json_describes_every_model() {
    let out = run(
        &["plan", "--json"],
        &[
            ("MULTI_MODEL_CONFIG", CONFIG),
            ("MODELMUX_GPUS", "4"),
            ("VLLM_PARAMS", "--max-model-len 4096"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let llama = &plan["models"][0];
    assert_eq!(llama["served_names"], serde_json::json!(["llama"]));
    assert_eq!(llama["adapters"], serde_json::json!(["llama-sql"]));
    assert_eq!(llama["gpus"], serde_json::json!(["0", "1"]));
    assert_eq!(llama["env"]["CUDA_VISIBLE_DEVICES"], "0,1");
    assert_eq!(llama["env"]["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
    let argv: Vec<String> = serde_json::from_value(llama["argv"].clone()).unwrap();
    // Engine ports follow PORT (8080 by default): the plan is the contract.
    assert_eq!(llama["port"], 8081);
    assert_eq!(
        argv,
        [
            "vllm",
            "serve",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--host",
            "127.0.0.1",
            "--port",
            "8081",
            "--max-model-len",
            "4096",
            "--served-model-name",
            "llama",
            "-tp",
            "2",
            "--enable-lora",
            "--lora-modules",
            "llama-sql=org/sql-lora",
        ]
    );
    let bge = &plan["models"][1];
    assert_eq!(bge["gpus"], serde_json::json!(["2"]));
    assert_eq!(bge["predict_route"], "/v1/embeddings");
    assert_eq!(bge["port"], 8082);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configuration read") && stderr.contains("MULTI_MODEL_CONFIG"),
        "source is logged: {stderr}"
    );
}

#[test]
fn plan_text_shows_the_command_line_and_uuids_pass_through() {
    let out = run(
        &["plan"],
        &[
            ("MULTI_MODEL_CONFIG", CONFIG),
            ("MODELMUX_GPUS", "GPU-a,GPU-b,GPU-c"),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("model llama"), "{text}");
    assert!(text.contains("GPUs:         GPU-a,GPU-b"), "{text}");
    assert!(
        text.contains("env:          CUDA_VISIBLE_DEVICES=GPU-c"),
        "{text}"
    );
    assert!(
        text.contains("--lora-modules 'llama-sql=org/sql-lora'"),
        "{text}"
    );
}

#[test]
fn gpus_none_gives_engines_no_gpu() {
    let out = run(
        &["plan", "--json"],
        &[("MULTI_MODEL_CONFIG", CONFIG), ("MODELMUX_GPUS", "none")],
    );
    assert_eq!(out.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["models"][0]["env"]["CUDA_VISIBLE_DEVICES"], "");
}

/// Each invalid input: exit 2, and the error line names what is wrong.
#[test]
fn invalid_configuration_exits_2_with_one_clear_line() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("MULTI_MODEL_CONFIG", "{\"models\": [}")],
            "MULTI_MODEL_CONFIG: malformed JSON at line 1, column 13",
        ),
        (
            &[("MULTI_MODEL_CONFIG", CONFIG), ("MODELMUX_GPUS", "2")],
            "the models need 3 GPUs but 2 are available; models: llama on 2 GPUs (-tp 2): no \
             estimate (not on disk): whole GPUs, bge on 1 GPU: no estimate (not on disk): whole \
             GPUs; GPUs: 0 (size unknown), 1 (size unknown); fix: lower llama's -tp 2, bge's \
             files on disk so that it has an estimate and can share a GPU, serve fewer models or \
             a shape with more GPUs",
        ),
        (
            &[("MULTI_MODEL_CONFIG", CONFIG)],
            "no GPU found (NVML is not available",
        ),
        (
            &[("MULTI_MODEL_CONFIG", CONFIG), ("MODELMUX_GPUS", "x")],
            "MODELMUX_GPUS=\"x\"",
        ),
        (
            &[
                ("MULTI_MODEL_CONFIG", CONFIG),
                ("MODELMUX_GPUS", "4"),
                ("MODELMUX_ON_FAILURE", "never"),
            ],
            "MODELMUX_ON_FAILURE=\"never\": use exit or degrade",
        ),
        (
            &[
                ("MULTI_MODEL_CONFIG", CONFIG),
                ("MODELMUX_GPUS", "4"),
                ("PORT", "99999"),
            ],
            "PORT=\"99999\": not a port number",
        ),
        (&[], "no model is configured"),
    ];
    for (env, expected) in cases {
        for cmd in ["plan", "serve"] {
            let out = run(&[cmd], env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {env:?}: {stderr}");
            let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
            assert_eq!(errors.len(), 1, "{cmd} {env:?}: one error line: {stderr}");
            assert!(
                errors[0].contains(expected),
                "{cmd} {env:?}: {:?} should contain {expected:?}",
                errors[0]
            );
        }
    }
}

#[test]
fn gpus_without_nvml_says_so_in_one_line() {
    let out = run(&["gpus"], &[("LD_LIBRARY_PATH", "/nonexistent")]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("from NVML") {
        eprintln!("skipped: this machine has NVML ({text})");
        return;
    }
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("no GPUs: NVML is not available"), "{text}");
    assert!(text.contains("MODELMUX_GPUS"), "{text}");
}

#[test]
fn gpus_reports_the_override() {
    let out = run(&["gpus", "--json"], &[("MODELMUX_GPUS", "0,2")]);
    assert_eq!(out.status.code(), Some(0));
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inv["source"], "override");
    assert_eq!(inv["gpus"][1]["index"], 2);
    let text = run(&["gpus"], &[("MODELMUX_GPUS", "3")]);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("3 GPU(s) from MODELMUX_GPUS"));
}

#[test]
fn flags_mirror_the_variables() {
    let out = run(
        &[
            "plan",
            "--json",
            "--gpus",
            "1",
            "--engine-cmd",
            // `plan` checks the engine program like `serve`: one that exists everywhere.
            "sh serve",
            "--model",
            "org/m",
            "--params",
            "--dtype half",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["models"][0]["name"], "odsc-llm");
    assert_eq!(plan["models"][0]["argv"][0], "sh");
    assert_eq!(plan["models"][0]["gpus"], serde_json::json!(["0"]));
    assert_eq!(plan["source"]["kind"], "single_model");
}

#[test]
fn serve_refuses_a_missing_engine_program_before_starting_anything() {
    let out = run(
        &["serve"],
        &[
            ("MULTI_MODEL_CONFIG", CONFIG),
            ("MODELMUX_GPUS", "4"),
            ("MODELMUX_ENGINE_CMD", "/nonexistent/vllm serve"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MODELMUX_ENGINE_CMD=\"/nonexistent/vllm\": the engine program is not an executable file nor found in PATH"),
        "{stderr}"
    );
    assert!(!stderr.contains("engine started"), "{stderr}");
}
