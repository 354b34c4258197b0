//! Configuration: turns raw inputs (flags, environment, OCI metadata, a file) into validated
//! [`Settings`] and [`ModelSpec`]s. It knows nothing about GPUs or processes; every error is a
//! [`ConfigError`] that names the variable or field.

mod checks;
mod error;
pub mod loading;
pub mod memory_args;
pub mod params;
pub mod paths;
mod raw;
mod settings;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use error::ConfigError;
pub(crate) use error::names_an_entry;
pub use loading::{LoadMode, Loading, UnloadMode};
pub use memory_args::MemoryArgs;
pub use params::{Arg, EngineArgs};
pub use paths::{is_plain_path, route_path};
pub use raw::RawConfig;
pub use settings::{
    DEFAULT_ENGINE_CMD, DEFAULT_GPU_MEMORY_LIMIT, DEFAULT_MODEL_ROOT, LogFormat, OnFailure,
    Settings, command_line, log_format,
};

use crate::engines::{self, Engine, ModelInput};
pub use source::{ConfigSource, RawModel, parse_models};

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
    /// GPUs needed, as the engine's profile counts them (vLLM: tensor × pipeline × data
    /// parallel size).
    pub gpu_demand: u32,
    /// Requests in flight to this engine at once; `None`: no limit, no queue.
    pub max_concurrency: Option<u32>,
    /// Requests that may wait for a slot (with `max_concurrency`; default 4 × it).
    pub max_queue: u32,
    /// The engine profile (`engine`, else `MODELMUX_ENGINE`, else vLLM).
    pub engine: Engine,
    /// The engine command before the launcher's flags: `engine_cmd`, else
    /// `MODELMUX_ENGINE_CMD` for models of the `MODELMUX_ENGINE` profile, else the
    /// profile's default.
    pub engine_cmd: Vec<String>,
    /// Where `engine_cmd` came from (`models[0].engine_cmd`, `MODELMUX_ENGINE_CMD`, or
    /// `engine tgi (default command)`), for messages.
    pub engine_cmd_origin: String,
    /// The engine flags that size its GPU memory (the context length, the GPU-memory
    /// fraction in the engine's own spelling; vLLM's `--kv-cache-dtype`, ...), checked.
    pub memory: MemoryArgs,
    /// When the engine runs: `load`, `unload`, `idle_unload` (SPEC §9).
    pub loading: Loading,
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
    let mut warnings: Vec<String> = checks::shadowed_sources(raw).into_iter().collect();
    warnings.extend(raw_models.iter().flat_map(|m| m.warnings.iter().cloned()));
    let models = raw_models
        .iter()
        .map(|m| resolve_model(m, &global, &settings, &mut warnings))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.in_source(&source))?;
    check_unique_names(&models).map_err(|e| e.in_source(&source))?;
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

/// A model's engine and command: its own `engine` / `engine_cmd`, else the process-wide
/// ones (SPEC §2: `MODELMUX_ENGINE_CMD` belongs to the `MODELMUX_ENGINE` profile).
fn engine_of(
    m: &RawModel,
    settings: &Settings,
) -> Result<(Engine, Vec<String>, String), ConfigError> {
    let engine = m.engine.unwrap_or(settings.engine);
    if let Some(text) = &m.engine_cmd {
        let field = format!("{}.engine_cmd", m.origin);
        return Ok((engine, command_line(&field, text)?, field));
    }
    if engine == settings.engine
        && let Some(cmd) = &settings.engine_cmd
    {
        return Ok((engine, cmd.clone(), "MODELMUX_ENGINE_CMD".to_string()));
    }
    let p = engine.profile();
    let cmd = p.default_cmd.iter().map(|w| w.to_string()).collect();
    Ok((engine, cmd, format!("engine {} (default command)", p.name)))
}

fn resolve_model(
    m: &RawModel,
    global: &EngineArgs,
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Result<ModelSpec, ConfigError> {
    let root = settings.model_root.as_path();
    let (engine, engine_cmd, engine_cmd_origin) = engine_of(m, settings)?;
    let params_origin = if m.origin == "MODEL" {
        "PARAMS".to_string()
    } else {
        format!("{}.params", m.origin)
    };
    let own = EngineArgs::parse_for(&m.params, &params_origin, engine.profile())?;
    let resolved_path = resolve_path(
        &m.model_path,
        root,
        &format!("{}.model_path", m.origin),
        warnings,
    )?;
    let mut fine_tune = Vec::new();
    for (j, a) in m.adapters.iter().enumerate() {
        let field = format!("{}.fine_tune_weights[{j}].model_path", m.origin);
        fine_tune.push(Adapter {
            name: a.name.clone(),
            path: resolve_path(&a.path, root, &field, warnings)?,
        });
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

    // VLLM_PARAMS speaks vLLM's vocabulary: it applies to vLLM models only.
    let input = ModelInput {
        origin: &m.origin,
        params_origin: &params_origin,
        own,
        global: (engine == Engine::Vllm).then_some(global),
        default_name: &m.default_name,
        fine_tune,
    };
    let mut r = engines::resolve(engine, input, warnings)?;
    // Sleep mode is vLLM's, and needs the engine to start with it (its memory then goes
    // through vLLM's cumem allocator, so that sleep can move the weights to CPU memory).
    if m.loading.load == LoadMode::OnDemand && m.loading.unload == UnloadMode::Sleep {
        if engine != Engine::Vllm {
            return Err(ConfigError::Params {
                origin: format!("{}.unload", m.origin),
                problem: format!(
                    "\"sleep\" needs vLLM's sleep mode, which engine {} does not have; use \"unload\": \"stop\"",
                    engine.profile().name
                ),
            });
        }
        if !r.args.has("--enable-sleep-mode") {
            r.args.args.push(Arg::new("--enable-sleep-mode", &[]));
        }
    }
    let memory = MemoryArgs::from_args(engine, &r.args, &params_origin, r.gpu_demand)?;
    Ok(ModelSpec {
        origin: m.origin.clone(),
        model_path: m.model_path.clone(),
        resolved_path,
        args: r.args,
        served_names: r.served_names,
        adapters: r.adapters,
        model_id: m.model_id.clone(),
        model_task: m.model_task.clone(),
        env: m.env.clone(),
        max_concurrency: m.max_concurrency,
        max_queue,
        gpu_demand: r.gpu_demand,
        engine,
        engine_cmd,
        engine_cmd_origin,
        memory,
        loading: m.loading,
    })
}

#[cfg(test)]
mod tests;
