//! Where the model list comes from (`--config FILE`, `MULTI_MODEL_CONFIG`, OCI metadata or
//! single-model `MODEL` + `PARAMS`) and how the JSON is checked field by field, so that an
//! error names `models[1].model_path` rather than a serde type.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{ConfigError, RawConfig, checks};
use crate::engines::Engine;

/// Which input supplied the models.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum ConfigSource {
    /// `--config FILE`.
    File(String),
    /// The `MULTI_MODEL_CONFIG` variable.
    MultiModelConfig,
    /// The `MULTI_MODEL_CONFIG` entry of `OCI_MODEL_GROUP_CUSTOM_METADATA`.
    OciMetadata,
    /// Single-model mode: `MODEL` and `PARAMS`.
    SingleModel,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "--config {p}"),
            ConfigSource::MultiModelConfig => f.write_str("MULTI_MODEL_CONFIG"),
            ConfigSource::OciMetadata => {
                f.write_str("OCI_MODEL_GROUP_CUSTOM_METADATA (key MULTI_MODEL_CONFIG)")
            }
            ConfigSource::SingleModel => f.write_str("MODEL and PARAMS (single-model mode)"),
        }
    }
}

/// A LoRA adapter as written in `fine_tune_weights`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAdapter {
    /// The name the adapter is served under.
    pub name: String,
    /// Its path, unresolved.
    pub path: String,
}

/// One model entry as written, shape-checked but not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawModel {
    /// Where it was written, e.g. `models[0]` or `MODEL`; used in every error.
    pub origin: String,
    /// `model_path` as written.
    pub model_path: String,
    /// `params` as written.
    pub params: String,
    /// `model_id`, if any.
    pub model_id: Option<String>,
    /// `model_task`, if any.
    pub model_task: Option<String>,
    /// `fine_tune_weights`.
    pub adapters: Vec<RawAdapter>,
    /// `env`.
    pub env: BTreeMap<String, String>,
    /// Served name when `params` has no `--served-model-name`.
    pub default_name: String,
    /// `max_concurrency`, if given.
    pub max_concurrency: Option<u32>,
    /// `max_queue`, if given.
    pub max_queue: Option<u32>,
    /// `engine`, if given.
    pub engine: Option<Engine>,
    /// `engine_cmd`: this model's engine command, as written.
    pub engine_cmd: Option<String>,
    /// Worth a warning but not an error: unknown keys or values, with the nearest known.
    pub warnings: Vec<String>,
    /// `load`, `unload` and `idle_unload`.
    pub loading: super::loading::Loading,
}

/// Picks the source by precedence (`--config`, `MULTI_MODEL_CONFIG`, OCI metadata,
/// `MODEL`) and returns its models.
pub fn read_models(raw: &RawConfig) -> Result<(ConfigSource, Vec<RawModel>), ConfigError> {
    if let Some(path) = &raw.config_file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let name = format!("--config {path}");
        return Ok((
            ConfigSource::File(path.clone()),
            parse_models(&name, &text)?,
        ));
    }
    // Empty counts as not given: deployment templates often set the variable to "".
    if let Some(text) = raw
        .multi_model_config
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        let models = parse_models("MULTI_MODEL_CONFIG", text)?;
        return Ok((ConfigSource::MultiModelConfig, models));
    }
    if let Some(text) = &raw.oci_metadata
        && let Some(config) = oci_entry(text)?
    {
        let models = match config {
            Value::String(s) => parse_models("OCI_MODEL_GROUP_CUSTOM_METADATA", &s)?,
            other => models_from_value("OCI_MODEL_GROUP_CUSTOM_METADATA", &other)?,
        };
        return Ok((ConfigSource::OciMetadata, models));
    }
    if let Some(model) = &raw.model {
        let params = raw.params.clone().unwrap_or_default();
        let single = RawModel {
            origin: "MODEL".into(),
            model_path: non_empty_path("MODEL", model)?,
            params,
            model_id: None,
            model_task: None,
            adapters: Vec::new(),
            env: BTreeMap::new(),
            default_name: "odsc-llm".into(),
            max_concurrency: None,
            max_queue: None,
            engine: None,
            engine_cmd: None,
            warnings: Vec::new(),
            loading: Default::default(),
        };
        return Ok((ConfigSource::SingleModel, vec![single]));
    }
    Err(ConfigError::NoSource)
}

fn non_empty_path(origin: &str, path: &str) -> Result<String, ConfigError> {
    if path.trim().is_empty() {
        return Err(ConfigError::var(
            origin,
            path,
            "is empty; give the model's path",
        ));
    }
    Ok(path.trim().to_string())
}

/// The value of key `MULTI_MODEL_CONFIG` in OCI's `[{"key", "value"}]` metadata list.
fn oci_entry(text: &str) -> Result<Option<Value>, ConfigError> {
    const VAR: &str = "OCI_MODEL_GROUP_CUSTOM_METADATA";
    let doc: Value = serde_json::from_str(text).map_err(|e| ConfigError::json(VAR, &e))?;
    let Value::Array(entries) = doc else {
        return Err(ConfigError::field(
            VAR,
            "(top level)",
            "must be a JSON list of {\"key\", \"value\"}",
        ));
    };
    // Every entry is looked at: two MULTI_MODEL_CONFIG entries would leave it to chance
    // (the console's order) which model list runs.
    let mut found: Option<(usize, Option<Value>)> = None;
    for (i, entry) in entries.into_iter().enumerate() {
        let Value::Object(mut obj) = entry else {
            return Err(ConfigError::field(
                VAR,
                format!("[{i}]"),
                "must be an object {\"key\", \"value\"}",
            ));
        };
        if obj.get("key").and_then(Value::as_str) != Some("MULTI_MODEL_CONFIG") {
            continue;
        }
        if let Some((first, _)) = found {
            return Err(ConfigError::field(
                VAR,
                format!("[{i}]"),
                format!("is a second MULTI_MODEL_CONFIG entry (the first is [{first}]); keep one"),
            ));
        }
        found = Some((i, obj.remove("value")));
    }
    Ok(found.and_then(|(_, value)| value))
}

/// Parses a `{"models": [...]}` document.
pub fn parse_models(source: &str, text: &str) -> Result<Vec<RawModel>, ConfigError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| ConfigError::json(source, &e))?;
    models_from_value(source, &doc)
}

fn models_from_value(source: &str, doc: &Value) -> Result<Vec<RawModel>, ConfigError> {
    let Some(obj) = doc.as_object() else {
        return Err(ConfigError::field(
            source,
            "(top level)",
            "must be a JSON object {\"models\": [...]}",
        ));
    };
    let models = match obj.get("models") {
        Some(Value::Array(models)) if !models.is_empty() => models,
        Some(Value::Array(_)) => {
            return Err(ConfigError::field(
                source,
                "models",
                "is empty; list at least one model",
            ));
        }
        Some(_) => {
            return Err(ConfigError::field(
                source,
                "models",
                "must be a list of model objects",
            ));
        }
        None => {
            return Err(ConfigError::field(
                source,
                "models",
                "is missing; expected {\"models\": [...]}",
            ));
        }
    };
    models
        .iter()
        .enumerate()
        .map(|(i, m)| model_from_value(source, i, m))
        .collect()
}

fn string_field(
    source: &str,
    obj: &Map<String, Value>,
    origin: &str,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ConfigError::field(
            source,
            format!("{origin}.{key}"),
            "must be a string",
        )),
    }
}

fn engine_field(
    source: &str,
    obj: &Map<String, Value>,
    origin: &str,
) -> Result<Option<Engine>, ConfigError> {
    let Some(name) = string_field(source, obj, origin, "engine")? else {
        return Ok(None);
    };
    match Engine::parse(&name) {
        Some(e) => Ok(Some(e)),
        None => Err(ConfigError::field(
            source,
            format!("{origin}.engine"),
            format!("unknown engine {name:?}; use one of {}", Engine::known()),
        )),
    }
}

fn model_from_value(source: &str, i: usize, value: &Value) -> Result<RawModel, ConfigError> {
    let origin = format!("models[{i}]");
    let Some(obj) = value.as_object() else {
        return Err(ConfigError::field(
            source,
            &origin,
            "must be an object with model_path",
        ));
    };
    checks::reject_nul(source, &origin, value)?;
    let model_path = match string_field(source, obj, &origin, "model_path")? {
        Some(p) if !p.trim().is_empty() => p.trim().to_string(),
        Some(_) => {
            return Err(ConfigError::field(
                source,
                format!("{origin}.model_path"),
                "is empty",
            ));
        }
        None => {
            return Err(ConfigError::field(
                source,
                format!("{origin}.model_path"),
                "is missing; every model needs the path of its weights",
            ));
        }
    };
    let adapters = match obj.get("fine_tune_weights") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(j, a)| {
                adapter_from_value(source, &format!("{origin}.fine_tune_weights[{j}]"), a)
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ConfigError::field(
                source,
                format!("{origin}.fine_tune_weights"),
                "must be a list of {\"model_name\", \"model_path\"}",
            ));
        }
    };
    let env = match obj.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(vars)) => vars
            .iter()
            .map(|(k, v)| {
                checks::env_name(source, &origin, k)?;
                match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(n) => Ok((k.clone(), n.to_string())),
                    Value::Bool(b) => Ok((k.clone(), b.to_string())),
                    _ => Err(ConfigError::field(
                        source,
                        format!("{origin}.env.{k}"),
                        "must be a string, number or boolean",
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ConfigError::field(
                source,
                format!("{origin}.env"),
                "must be an object of variables",
            ));
        }
    };
    let default_name = model_path.trim_end_matches('/').to_string();
    let mut warnings = checks::model_warnings(&origin, obj);
    let loading = super::loading::read(source, obj, &origin, &mut warnings)?;
    let max_concurrency = count_field(source, obj, &origin, "max_concurrency", 1)?;
    let max_queue = count_field(source, obj, &origin, "max_queue", 0)?;
    Ok(RawModel {
        params: string_field(source, obj, &origin, "params")?.unwrap_or_default(),
        model_id: string_field(source, obj, &origin, "model_id")?,
        model_task: string_field(source, obj, &origin, "model_task")?,
        engine: engine_field(source, obj, &origin)?,
        engine_cmd: string_field(source, obj, &origin, "engine_cmd")?,
        warnings,
        loading,
        origin,
        model_path,
        adapters,
        env,
        default_name: if default_name.is_empty() {
            "/".into()
        } else {
            default_name
        },
        max_concurrency,
        max_queue,
    })
}

/// A whole number of at least `min`, written as a JSON number or a string of digits (OCI's
/// metadata carries every value as a string).
fn count_field(
    source: &str,
    obj: &Map<String, Value>,
    origin: &str,
    key: &str,
    min: u32,
) -> Result<Option<u32>, ConfigError> {
    let n = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n.and_then(|n| u32::try_from(n).ok()) {
        Some(n) if n >= min => Ok(Some(n)),
        _ => Err(ConfigError::field(
            source,
            format!("{origin}.{key}"),
            format!("must be a whole number of at least {min}"),
        )),
    }
}

fn adapter_from_value(
    source: &str,
    origin: &str,
    value: &Value,
) -> Result<RawAdapter, ConfigError> {
    let Some(obj) = value.as_object() else {
        return Err(ConfigError::field(
            source,
            origin,
            "must be an object {\"model_name\", \"model_path\"}",
        ));
    };
    let need = |key: &str| match string_field(source, obj, origin, key)? {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(ConfigError::field(
            source,
            format!("{origin}.{key}"),
            "is missing or empty",
        )),
    };
    Ok(RawAdapter {
        name: need("model_name")?,
        path: need("model_path")?,
    })
}
