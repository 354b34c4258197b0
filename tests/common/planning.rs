//! Fake model directories and `plan --json` for the planner's tests (SPEC §3.1).

use std::path::Path;

use modelmux::weights::fixtures::Arch;
use serde_json::{Value, json};

use super::run_clean as run;

/// Writes fake models under one temporary root: (directory name, shape, shards).
pub fn models(list: &[(&str, Arch, usize)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (name, arch, shards) in list {
        arch.write(&root.path().join(name), *shards).unwrap();
    }
    root
}

/// `MULTI_MODEL_CONFIG` for these (model_path, params) pairs.
pub fn config(models: &[(&str, &str)]) -> String {
    let list: Vec<Value> = models
        .iter()
        .map(|(path, params)| json!({"model_path": path, "params": params}))
        .collect();
    json!({ "models": list }).to_string()
}

/// `modelmux plan --json` on `MODELMUX_GPUS=gpus` with models under `root`; it must succeed.
pub fn plan_json(root: &Path, cfg: &str, gpus: &str) -> Value {
    let root = root.to_string_lossy();
    let out = run(
        &["plan", "--json"],
        &[
            ("MULTI_MODEL_CONFIG", cfg),
            ("MODELMUX_GPUS", gpus),
            ("MODELMUX_MODEL_ROOT", &root),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

/// One planned model's engine command line.
pub fn argv(model: &Value) -> Vec<String> {
    serde_json::from_value(model["argv"].clone()).unwrap()
}
