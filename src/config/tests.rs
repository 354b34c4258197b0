//! Configuration tests: every source, the params merge, and the text of every error.

use super::*;

fn raw_with(config: &str) -> RawConfig {
    RawConfig {
        multi_model_config: Some(config.to_string()),
        model_root: Some("/nonexistent-root".into()),
        ..Default::default()
    }
}

fn err(raw: RawConfig) -> String {
    load(&raw).unwrap_err().to_string()
}

fn ok(raw: RawConfig) -> Config {
    load(&raw).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn multi_model_config_with_merge_lora_and_env() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("llama/artifact")).unwrap();
    std::fs::create_dir_all(root.path().join("adapters/sql")).unwrap();
    let config = r#"{"models": [
        {"model_path": "llama/artifact/", "params": "--served-model-name llama -tp 2 --port 9999",
         "fine_tune_weights": [{"model_name": "llama-sql", "model_path": "adapters/sql"}],
         "env": {"VLLM_USE_V1": 1}},
        {"model_path": "BAAI/bge-m3", "model_task": "text_embedding", "params": "--max-model-len=512"}
    ]}"#;
    let mut raw = raw_with(config);
    raw.model_root = Some(root.path().to_string_lossy().into_owned());
    raw.vllm_params = Some("--tensor-parallel-size=4 --max-model-len 4096 --enforce-eager".into());
    let c = ok(raw);
    assert_eq!(c.source, ConfigSource::MultiModelConfig);
    let llama = &c.models[0];
    assert_eq!(llama.served_names, ["llama"]);
    assert_eq!(
        llama.resolved_path,
        root.path().join("llama/artifact").to_string_lossy()
    );
    assert_eq!(llama.gpu_demand, 2);
    let sql_path = root
        .path()
        .join("adapters/sql")
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        llama.args.tokens(),
        [
            "--max-model-len",
            "4096",
            "--enforce-eager",
            "--served-model-name",
            "llama",
            "-tp",
            "2",
            "--enable-lora",
            "--lora-modules",
            &format!("llama-sql={sql_path}"),
        ]
    );
    assert_eq!(llama.env["VLLM_USE_V1"], "1");
    assert!(
        c.warnings
            .iter()
            .any(|w| w == "models[0]: --port 9999 is ignored; modelmux sets --port itself")
    );

    let bge = &c.models[1];
    assert_eq!(bge.served_names, ["BAAI/bge-m3"]);
    assert_eq!(bge.resolved_path, "BAAI/bge-m3");
    assert_eq!(
        bge.gpu_demand, 4,
        "VLLM_PARAMS' tensor-parallel size applies where the model sets none"
    );
    assert_eq!(bge.args.get("--max-model-len").unwrap().values, ["512"]);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("Hugging Face repository id"))
    );
}

#[test]
fn several_lora_modules_end_up_in_one_flag() {
    let c = ok(raw_with(
        r#"{"models": [{"model_path": "org/base", "params": "--lora-modules a=org/a b=org/b",
            "fine_tune_weights": [{"model_name": "c", "model_path": "org/c"}]}]}"#,
    ));
    let m = &c.models[0];
    assert_eq!(
        m.args.take_clone("--lora-modules"),
        vec![vec!["a=org/a", "b=org/b", "c=org/c"]]
    );
    let names: Vec<_> = m.adapters.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn oci_metadata_single_model_and_file_sources() {
    let inner = serde_json::to_string(r#"{"models": [{"model_path": "org/m"}]}"#).unwrap();
    let raw = RawConfig {
        oci_metadata: Some(format!(
            r#"[{{"key": "other", "value": "x"}}, {{"key": "MULTI_MODEL_CONFIG", "value": {inner}}}]"#
        )),
        ..Default::default()
    };
    let c = ok(raw);
    assert_eq!(c.source, ConfigSource::OciMetadata);
    assert_eq!(c.models[0].served_names, ["org/m"]);

    let single = ok(RawConfig {
        model: Some("org/m".into()),
        params: Some("--max-model-len 100".into()),
        ..Default::default()
    });
    assert_eq!(single.source, ConfigSource::SingleModel);
    assert_eq!(single.models[0].served_names, ["odsc-llm"]);
    let named = ok(RawConfig {
        model: Some("org/m".into()),
        params: Some("--served-model-name mine".into()),
        ..Default::default()
    });
    assert_eq!(named.models[0].served_names, ["mine"]);
    // A template that sets MULTI_MODEL_CONFIG to "" still means single-model mode.
    let empty_multi = ok(RawConfig {
        multi_model_config: Some(" ".into()),
        model: Some("org/m".into()),
        ..Default::default()
    });
    assert_eq!(empty_multi.source, ConfigSource::SingleModel);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.json");
    std::fs::write(&file, r#"{"models": [{"model_path": "org/f"}]}"#).unwrap();
    let from_file = ok(RawConfig {
        config_file: Some(file.to_string_lossy().into_owned()),
        multi_model_config: Some("ignored: the file wins".into()),
        ..Default::default()
    });
    assert!(matches!(from_file.source, ConfigSource::File(_)));
}

#[test]
fn every_bad_input_has_its_own_clear_message() {
    let cases: &[(&str, &str)] = &[
        (
            "{\"models\": [\n  {\"model_path\": }]}",
            "MULTI_MODEL_CONFIG: malformed JSON at line 2, column 18: expected value",
        ),
        (
            "{}",
            "MULTI_MODEL_CONFIG: models: is missing; expected {\"models\": [...]}",
        ),
        (
            "{\"models\": []}",
            "MULTI_MODEL_CONFIG: models: is empty; list at least one model",
        ),
        (
            "{\"models\": [{\"params\": \"\"}]}",
            "MULTI_MODEL_CONFIG: models[0].model_path: is missing; every model needs the path of its weights",
        ),
        (
            "{\"models\": [{\"model_path\": 7}]}",
            "MULTI_MODEL_CONFIG: models[0].model_path: must be a string",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"params\": [\"-tp\", \"2\"]}]}",
            "MULTI_MODEL_CONFIG: models[0].params: must be a string",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"params\": \"--chat-template 'x\"}]}",
            "MULTI_MODEL_CONFIG: models[0].params: unterminated quote or trailing backslash; close every ' and \"",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"params\": \"-tp two\"}]}",
            "MULTI_MODEL_CONFIG: models[0].params: -tp must be a positive integer, got \"two\"",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"params\": \"--tensor-parallel-size 0\"}]}",
            "MULTI_MODEL_CONFIG: models[0].params: --tensor-parallel-size must be a positive integer, got \"0\"",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/a\", \"params\": \"--served-model-name x\"}, {\"model_path\": \"o/b\", \"params\": \"--served-model-name x\"}]}",
            "MULTI_MODEL_CONFIG: served name \"x\" is used by both models[0] and models[1]: give each model a unique --served-model-name and each adapter a unique model_name",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/a\"}, {\"model_path\": \"o/b\", \"fine_tune_weights\": [{\"model_name\": \"o/a\", \"model_path\": \"o/l\"}]}]}",
            "MULTI_MODEL_CONFIG: served name \"o/a\" is used by both models[0] and models[1] (adapter): give each model a unique --served-model-name and each adapter a unique model_name",
        ),
        (
            "{\"models\": [{\"model_path\": \"llama/7b/weights\"}]}",
            "MULTI_MODEL_CONFIG: models[0].model_path: model path \"/nonexistent-root/llama/7b/weights\" does not exist (relative paths resolve against MODELMUX_MODEL_ROOT=\"/nonexistent-root\"); fix the path or mount the model there",
        ),
        (
            "{\"models\": [{\"model_path\": \"/abs/missing\"}]}",
            "MULTI_MODEL_CONFIG: models[0].model_path: model path \"/abs/missing\" does not exist; fix the path or mount the model there",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"params\": \"--served-model-name a\\u0000b\"}]}",
            "MULTI_MODEL_CONFIG: models[0].params: contains a NUL byte (\\u0000), which no command line, path or environment variable can hold; remove it",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"env\": {\"A=B\": \"1\"}}]}",
            "MULTI_MODEL_CONFIG: models[0].env.A=B: is not a valid environment variable name (empty or with '=')",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"fine_tune_weights\": [{\"model_name\": \"a\"}]}]}",
            "MULTI_MODEL_CONFIG: models[0].fine_tune_weights[0].model_path: is missing or empty",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"env\": {\"A\": [1]}}]}",
            "MULTI_MODEL_CONFIG: models[0].env.A: must be a string, number or boolean",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"params\": \"--served-model-name a ''\"}]}",
            "MULTI_MODEL_CONFIG: models[0].params: --served-model-name has an empty name; give every served name some characters",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"fine_tune_weights\": [{\"model_name\": \" \", \"model_path\": \"o/a\"}]}]}",
            "MULTI_MODEL_CONFIG: models[0].fine_tune_weights[0].model_name: is missing or empty",
        ),
        (
            "[1]",
            "MULTI_MODEL_CONFIG: (top level): must be a JSON object {\"models\": [...]}",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"max_concurrency\": 0}]}",
            "MULTI_MODEL_CONFIG: models[0].max_concurrency: must be a whole number of at least 1",
        ),
        (
            "{\"models\": [{\"model_path\": \"o/m\", \"max_queue\": -1}]}",
            "MULTI_MODEL_CONFIG: models[0].max_queue: must be a whole number of at least 0",
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(err(raw_with(config)), *expected, "config: {config}");
    }
    assert!(
        err(RawConfig::default()).starts_with("no model is configured: set MULTI_MODEL_CONFIG")
    );
    let bad_global = RawConfig {
        vllm_params: Some("--x \"y".into()),
        ..raw_with("{\"models\": [{\"model_path\": \"o/m\"}]}")
    };
    assert!(err(bad_global).starts_with("VLLM_PARAMS: unterminated quote"));
    let blank_global_name = RawConfig {
        vllm_params: Some("--served-model-name ''".into()),
        ..raw_with("{\"models\": [{\"model_path\": \"o/m\"}]}")
    };
    assert_eq!(
        err(blank_global_name),
        "VLLM_PARAMS: --served-model-name has an empty name; give every served name some characters"
    );
    let bad_oci = RawConfig {
        oci_metadata: Some("{\"key\": 1}".into()),
        ..Default::default()
    };
    assert_eq!(
        err(bad_oci),
        "OCI_MODEL_GROUP_CUSTOM_METADATA: (top level): must be a JSON list of {\"key\", \"value\"}"
    );
    let twice = r#"{"models": [{"model_path": "o/m"}]}"#;
    let twice = RawConfig {
        oci_metadata: Some(
            serde_json::json!([
                {"key": "MULTI_MODEL_CONFIG", "value": twice},
                {"key": "OTHER", "value": "x"},
                {"key": "MULTI_MODEL_CONFIG", "value": twice},
            ])
            .to_string(),
        ),
        ..Default::default()
    };
    assert_eq!(
        err(twice),
        "OCI_MODEL_GROUP_CUSTOM_METADATA: [2]: is a second MULTI_MODEL_CONFIG entry (the first is [0]); keep one"
    );
    let missing_file = RawConfig {
        config_file: Some("/no/such/file.json".into()),
        ..Default::default()
    };
    assert!(err(missing_file).starts_with("--config /no/such/file.json: cannot read the file: "));
}

#[test]
fn hugging_face_ids_are_recognised() {
    assert!(looks_like_hf_id("meta-llama/Llama-3.1-8B-Instruct"));
    assert!(!looks_like_hf_id("a/b/c"));
    assert!(!looks_like_hf_id("../x"));
    assert!(!looks_like_hf_id("plain"));
}

#[test]
fn concurrency_limits_and_their_queue() {
    let c = ok(raw_with(
        r#"{"models": [
            {"model_path": "o/a", "max_concurrency": 2},
            {"model_path": "o/b", "max_concurrency": "3", "max_queue": 0},
            {"model_path": "o/c", "max_queue": 5}
        ]}"#,
    ));
    let limits: Vec<_> = c
        .models
        .iter()
        .map(|m| (m.max_concurrency, m.max_queue))
        .collect();
    assert_eq!(limits, [(Some(2), 8), (Some(3), 0), (None, 0)]);
    assert!(
        c.warnings
            .iter()
            .any(|w| w
                == "models[2]: max_queue is ignored without max_concurrency (no limit, no queue)"),
        "{:?}",
        c.warnings
    );
}
