//! Configuration: turns raw inputs (flags, environment, OCI metadata, a file) into validated
//! [`Settings`] and [`ModelSpec`]s. It knows nothing about GPUs or processes; every error is a
//! [`ConfigError`] that names the variable or field.

mod error;
pub mod params;
pub mod paths;
mod raw;
mod settings;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use error::ConfigError;
pub use params::{Arg, EngineArgs};
pub use paths::{is_plain_path, route_path};
pub use raw::RawConfig;
pub use settings::{
    DEFAULT_ENGINE_CMD, DEFAULT_MODEL_ROOT, LogFormat, OnFailure, Settings, log_format,
};
pub use source::{ConfigSource, RawModel, parse_models};

/// Flags the launcher sets itself; a user-given one is dropped with a warning.
pub const LAUNCHER_FLAGS: &[&str] = &["--model", "--host", "--port"];

/// A LoRA adapter served by its base model's engine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Adapter {
    /// The name requests use.
    pub name: String,
    /// The resolved path (or Hugging Face id).
    pub path: String,
}

/// One model, validated and resolved, ready for GPU planning.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Where it was configured (`models[0]`, `MODEL`), for messages.
    pub origin: String,
    /// `model_path` as written.
    pub model_path: String,
    /// The path the engine gets: under the model root, absolute, or a Hugging Face id.
    pub resolved_path: String,
    /// Engine arguments: `VLLM_PARAMS` merged under the model's own, launcher flags removed,
    /// `--served-model-name` and LoRA flags in place.
    pub args: EngineArgs,
    /// Names the engine serves the base model under; the first is the model's name.
    pub served_names: Vec<String>,
    /// LoRA adapters, from `fine_tune_weights` and any `--lora-modules` in params.
    pub adapters: Vec<Adapter>,
    /// `model_id`, if given.
    pub model_id: Option<String>,
    /// `model_task`, if given (`text_embedding` changes the `/predict` default).
    pub model_task: Option<String>,
    /// Extra environment for this model's engine.
    pub env: BTreeMap<String, String>,
    /// GPUs needed: tensor × pipeline × data parallel size.
    pub gpu_demand: u32,
    /// Requests in flight to this engine at once; `None`: no limit, no queue.
    pub max_concurrency: Option<u32>,
    /// Requests that may wait for a slot (with `max_concurrency`; default 4 × it).
    pub max_queue: u32,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Process-wide settings.
    pub settings: Settings,
    /// Which input supplied the models.
    pub source: ConfigSource,
    /// The models, in configuration order.
    pub models: Vec<ModelSpec>,
    /// Things worth a warning that are not errors (Hugging Face ids, overridden flags, ...).
    pub warnings: Vec<String>,
}

/// Reads and validates everything. Touches the file system only to read `--config` and to
/// check that model paths exist.
pub fn load(raw: &RawConfig) -> Result<Config, ConfigError> {
    let settings = Settings::from_raw(raw)?;
    let (source, raw_models) = source::read_models(raw)?;
    let global = match &raw.vllm_params {
        Some(text) => EngineArgs::parse(text, "VLLM_PARAMS")?,
        None => EngineArgs::default(),
    };
    let mut warnings = Vec::new();
    let models = raw_models
        .iter()
        .map(|m| resolve_model(m, &global, &settings.model_root, &mut warnings))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_names(&models)?;
    Ok(Config {
        settings,
        source,
        models,
        warnings,
    })
}

fn check_unique_names(models: &[ModelSpec]) -> Result<(), ConfigError> {
    let mut owners: HashMap<&str, String> = HashMap::new();
    for m in models {
        let names = m.served_names.iter().map(|n| (n, m.origin.clone()));
        let adapters = m
            .adapters
            .iter()
            .map(|a| (&a.name, format!("{} (adapter)", m.origin)));
        for (name, owner) in names.chain(adapters) {
            if let Some(first) = owners.get(name.as_str()) {
                return Err(ConfigError::DuplicateName {
                    name: name.clone(),
                    first: first.clone(),
                    second: owner,
                });
            }
            owners.insert(name, owner);
        }
    }
    Ok(())
}

/// Whether a path has the `org/name` form of a Hugging Face repository id.
pub fn looks_like_hf_id(path: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(path.split_once('/'), Some((org, name)) if ok(org) && ok(name))
}

/// Resolves a model or adapter path against the model root. `field` names it in errors.
pub fn resolve_path(
    written: &str,
    root: &Path,
    field: &str,
    warnings: &mut Vec<String>,
) -> Result<String, ConfigError> {
    let trimmed = match written.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let path = if trimmed.starts_with('/') {
        Path::new(trimmed).to_path_buf()
    } else {
        root.join(trimmed)
    };
    if path.exists() {
        return Ok(path.to_string_lossy().into_owned());
    }
    if looks_like_hf_id(trimmed) {
        warnings.push(format!(
            "{field}: {trimmed:?} is not under {root:?}; passing it to the engine as a \
             Hugging Face repository id"
        ));
        return Ok(trimmed.to_string());
    }
    Err(ConfigError::MissingPath {
        field: field.to_string(),
        path: path.to_string_lossy().into_owned(),
        root: root.to_string_lossy().into_owned(),
    })
}

/// The adapter name in a `--lora-modules` value: `NAME=PATH` or vLLM's JSON form.
fn lora_value_name(value: &str) -> Option<String> {
    if value.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        return v.get("name")?.as_str().map(str::to_string);
    }
    value.split_once('=').map(|(name, _)| name.to_string())
}

fn resolve_model(
    m: &RawModel,
    global: &EngineArgs,
    root: &Path,
    warnings: &mut Vec<String>,
) -> Result<ModelSpec, ConfigError> {
    let params_origin = if m.origin == "MODEL" {
        "PARAMS".to_string()
    } else {
        format!("{}.params", m.origin)
    };
    let own = EngineArgs::parse(&m.params, &params_origin)?;
    let mut args = EngineArgs::merged(global, &own);
    for flag in LAUNCHER_FLAGS {
        for dropped in args.take(flag) {
            warnings.push(format!(
                "{}: {} {} is ignored; modelmux sets {flag} itself",
                m.origin,
                dropped.spelling,
                dropped.values.join(" ")
            ));
        }
    }
    let resolved_path = resolve_path(
        &m.model_path,
        root,
        &format!("{}.model_path", m.origin),
        warnings,
    )?;

    let served_names = match args.get("--served-model-name") {
        Some(arg) if !arg.values.is_empty() => arg.values.clone(),
        Some(_) => {
            return Err(ConfigError::Params {
                origin: params_origin,
                problem: "--served-model-name needs at least one name".into(),
            });
        }
        None => {
            args.args
                .insert(0, Arg::new("--served-model-name", &[&m.default_name]));
            vec![m.default_name.clone()]
        }
    };

    let mut adapters = Vec::new();
    let mut lora_values = Vec::new();
    for arg in args.take("--lora-modules") {
        for value in arg.values {
            let name = lora_value_name(&value).ok_or_else(|| ConfigError::Params {
                origin: params_origin.clone(),
                problem: format!("--lora-modules value {value:?} is not NAME=PATH"),
            })?;
            let path = value
                .split_once('=')
                .map(|(_, p)| p)
                .unwrap_or("")
                .to_string();
            adapters.push(Adapter { name, path });
            lora_values.push(value);
        }
    }
    for (j, a) in m.adapters.iter().enumerate() {
        let field = format!("{}.fine_tune_weights[{j}].model_path", m.origin);
        let path = resolve_path(&a.path, root, &field, warnings)?;
        lora_values.push(format!("{}={}", a.name, path));
        adapters.push(Adapter {
            name: a.name.clone(),
            path,
        });
    }
    if !lora_values.is_empty() {
        if !args.has("--enable-lora") {
            args.args.push(Arg::new("--enable-lora", &[]));
        }
        let values: Vec<&str> = lora_values.iter().map(String::as_str).collect();
        args.args.push(Arg::new("--lora-modules", &values));
    }

    let mut gpu_demand = 1u32;
    for flag in [
        "--tensor-parallel-size",
        "--pipeline-parallel-size",
        "--data-parallel-size",
    ] {
        let n = args.positive_int(flag, &params_origin)?;
        if flag == "--tensor-parallel-size" && !n.is_power_of_two() {
            warnings.push(format!(
                "{}: tensor-parallel size {n} is not a power of two; most models need the \
                 attention head count to divide by it",
                m.origin
            ));
        }
        gpu_demand = gpu_demand.saturating_mul(n);
    }

    if m.max_queue.is_some() && m.max_concurrency.is_none() {
        warnings.push(format!(
            "{}: max_queue is ignored without max_concurrency (no limit, no queue)",
            m.origin
        ));
    }
    let max_queue = match m.max_concurrency {
        Some(c) => m.max_queue.unwrap_or(c.saturating_mul(4)),
        None => 0,
    };

    Ok(ModelSpec {
        origin: m.origin.clone(),
        model_path: m.model_path.clone(),
        resolved_path,
        args,
        served_names,
        adapters,
        model_id: m.model_id.clone(),
        model_task: m.model_task.clone(),
        env: m.env.clone(),
        gpu_demand,
        max_concurrency: m.max_concurrency,
        max_queue,
    })
}

#[cfg(test)]
mod tests;
