//! Engine profiles: one per inference server (vLLM, SGLang, TGI, llama.cpp and
//! llama-cpp-python), each plain data in its own file ([`Profile`]). This module is the only
//! place that knows engine flags: it turns a model's `params` into the arguments of its
//! engine ([`resolve`]) and writes the launcher's own flags ([`launch_args`]).

mod llamacpp;
mod profile;
mod sglang;
mod tgi;
mod vllm;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

pub use profile::{
    AdapterStyle, Concept, ContextRule, CpuBind, EnvValue, FlagStyle, GpuCount, Metrics,
    ModelsList, PerInstance, Profile, ProgressMetrics, ServedName, dashed,
};
pub use vllm::DEFAULT_CMD as VLLM_DEFAULT_CMD;

use crate::config::{Adapter, Arg, ConfigError, EngineArgs};

/// Which server runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Engine {
    /// vLLM (the default).
    #[default]
    Vllm,
    /// SGLang.
    Sglang,
    /// Text Generation Inference.
    Tgi,
    /// llama.cpp's `llama-server`.
    Llamacpp,
    /// llama-cpp-python's OpenAI server.
    LlamacppPython,
}

impl Serialize for Engine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Engine {
    /// Every engine, in the order messages list them.
    pub const ALL: [Engine; 5] = [
        Engine::Vllm,
        Engine::Sglang,
        Engine::Tgi,
        Engine::Llamacpp,
        Engine::LlamacppPython,
    ];

    /// Its profile.
    pub fn profile(self) -> &'static Profile {
        match self {
            Engine::Vllm => &vllm::PROFILE,
            Engine::Sglang => &sglang::PROFILE,
            Engine::Tgi => &tgi::PROFILE,
            Engine::Llamacpp => &llamacpp::LLAMA_SERVER,
            Engine::LlamacppPython => &llamacpp::LLAMA_CPP_PYTHON,
        }
    }

    /// The name used in `engine` and `MODELMUX_ENGINE`.
    pub fn name(self) -> &'static str {
        self.profile().name
    }

    /// The engine of a name (`vllm`, `sglang`, `tgi`, `llamacpp`, `llamacpp-python`);
    /// case and surrounding blanks do not matter.
    pub fn parse(name: &str) -> Option<Engine> {
        let name = name.trim().to_ascii_lowercase();
        Engine::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The known names, for messages: `vllm, sglang, tgi, llamacpp, llamacpp-python`.
    pub fn known() -> String {
        Engine::ALL.map(Engine::name).join(", ")
    }
}

/// A model's engine arguments resolved against its profile.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The arguments the engine gets after the launcher's own flags: served name, adapters
    /// and the profile's default switches in place, launcher flags removed.
    pub args: EngineArgs,
    /// The names the model is served under; the first is the model's name.
    pub served_names: Vec<String>,
    /// LoRA adapters routed to this engine by name.
    pub adapters: Vec<Adapter>,
    /// GPUs the model needs.
    pub gpu_demand: u32,
}

/// What [`resolve`] needs to know about one model.
pub struct ModelInput<'a> {
    /// `models[0]` or `MODEL`, for warnings.
    pub origin: &'a str,
    /// `models[0].params`, `PARAMS`, for errors.
    pub params_origin: &'a str,
    /// The model's own arguments, parsed with this profile's aliases.
    pub own: EngineArgs,
    /// `VLLM_PARAMS` (vLLM models only).
    pub global: Option<&'a EngineArgs>,
    /// The served name when `params` gives none.
    pub default_name: &'a str,
    /// Adapters from `fine_tune_weights`, paths resolved.
    pub fine_tune: Vec<Adapter>,
}

fn params_err(origin: &str, problem: String) -> ConfigError {
    ConfigError::Params {
        origin: origin.to_string(),
        problem,
    }
}

/// Refuses flags spelled for another server: a wrong separator, or a flag of another
/// profile's vocabulary that this one does not know.
fn check_vocabulary(p: &Profile, args: &EngineArgs, origin: &str) -> Result<(), ConfigError> {
    for arg in &args.args {
        let respelled = || {
            let fixed = match (p.flag_style, arg.spelling.strip_prefix("--")) {
                (FlagStyle::Underscores, Some(rest)) => format!("--{}", rest.replace('-', "_")),
                _ => dashed(&arg.spelling),
            };
            params_err(
                origin,
                format!(
                    "{} is not how {} spells it: use {fixed}",
                    arg.spelling, p.name
                ),
            )
        };
        // `--served-model-name` names the model for modelmux where the server has no flag.
        let modelmux_own = p.served_name == ServedName::Absent && arg.name == "--served-model-name";
        if p.knows(&arg.name) || modelmux_own {
            if !p.spelled_right(&arg.spelling) && !modelmux_own {
                return Err(respelled());
            }
            continue;
        }
        for other in Engine::ALL.map(Engine::profile) {
            if std::ptr::eq(other, p) {
                continue;
            }
            let Some(concept) = other.concept_of(&other.canonical(&arg.spelling)) else {
                continue;
            };
            // Short launcher aliases mean other things elsewhere (`-p`: TGI's port,
            // llama.cpp's prompt); the launcher's own flags win anyway.
            let short = !arg.spelling.starts_with("--");
            if short && matches!(concept, Concept::ModelPath | Concept::Host | Concept::Port) {
                continue;
            }
            let advice = match p.flag(concept) {
                Some(own) => format!("{} spells it {own}", p.name),
                None => format!("{} has no such flag", p.name),
            };
            return Err(params_err(
                origin,
                format!(
                    "{} is a flag of {}, not of {} (this model's engine): {advice}",
                    arg.spelling, other.name, p.name
                ),
            ));
        }
        if !p.spelled_right(&arg.spelling) {
            return Err(respelled());
        }
    }
    Ok(())
}

/// Removes the flags the launcher sets itself (model path, host, port) in any server's
/// spelling, with a warning each.
fn drop_launcher_flags(
    p: &Profile,
    args: &mut EngineArgs,
    origin: &str,
    warnings: &mut Vec<String>,
) {
    let launcher = [Concept::ModelPath, Concept::Host, Concept::Port];
    let own = |c: Concept| match c {
        Concept::ModelPath => p.model_flag,
        Concept::Host => p.host_flag,
        _ => p.port_flag,
    };
    args.args.retain(|arg| {
        // This server's spellings, short ones included, and other servers' long ones (a
        // short flag means something else elsewhere: `-p` is TGI's port, llama.cpp's prompt).
        let concept = Engine::ALL
            .map(Engine::profile)
            .into_iter()
            .filter(|q| std::ptr::eq(*q, p) || arg.spelling.starts_with("--"))
            .find_map(|q| q.concept_of(&q.canonical(&arg.spelling)))
            .filter(|c| launcher.contains(c));
        match concept {
            Some(c) => {
                warnings.push(format!(
                    "{origin}: {} {} is ignored; modelmux sets {} itself",
                    arg.spelling,
                    arg.values.join(" "),
                    own(c)
                ));
                false
            }
            None => true,
        }
    });
}

/// The name in an adapter value: `NAME=PATH`, JSON (`name` or `lora_name`), or a bare path
/// (SGLang names it by its path).
fn adapter_value(value: &str) -> Option<Adapter> {
    let value = value.trim();
    if value.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        let name = v.get("name").or_else(|| v.get("lora_name"))?.as_str()?;
        let path = v.get("path").or_else(|| v.get("lora_path"));
        return Some(Adapter {
            name: name.to_string(),
            path: path.and_then(|p| p.as_str()).unwrap_or("").to_string(),
        });
    }
    match value.split_once('=') {
        Some((name, path)) if !name.is_empty() => Some(Adapter {
            name: name.to_string(),
            path: path.to_string(),
        }),
        _ => None,
    }
}

/// Collects adapters from `params` and `fine_tune_weights` into the profile's one flag.
fn place_adapters(
    p: &Profile,
    args: &mut EngineArgs,
    fine_tune: Vec<Adapter>,
    origin: &str,
) -> Result<Vec<Adapter>, ConfigError> {
    let mut adapters = Vec::new();
    let mut values = Vec::new();
    match p.adapters {
        AdapterStyle::Unnamed { flag } => {
            if let Some(a) = fine_tune.first() {
                return Err(params_err(
                    origin,
                    format!(
                        "{} applies {flag} adapters to every request and cannot serve adapter \
                         {:?} under its own name; remove fine_tune_weights and put {flag} PATH \
                         in params to merge it into the model",
                        p.name, a.name
                    ),
                ));
            }
            return Ok(adapters);
        }
        AdapterStyle::NamedValues { flag, .. } => {
            for arg in args.take(&dashed(flag)) {
                for value in arg.values {
                    let adapter = adapter_value(&value).or_else(|| {
                        // SGLang also takes a bare PATH, named by the path.
                        (p.name == "sglang").then(|| Adapter {
                            name: value.clone(),
                            path: value.clone(),
                        })
                    });
                    let adapter = adapter.ok_or_else(|| {
                        params_err(origin, format!("{flag} value {value:?} is not NAME=PATH"))
                    })?;
                    adapters.push(adapter);
                    values.push(value);
                }
            }
        }
        AdapterStyle::NamedComma { flag } => {
            for arg in args.take(&dashed(flag)) {
                for value in arg.values.iter().flat_map(|v| v.split(',')) {
                    let value = value.trim();
                    // TGI: `id[=path][@revision]`; the id is the name requests use.
                    let name = value.split(['=', '@']).next().unwrap_or("");
                    if name.is_empty() {
                        return Err(params_err(
                            origin,
                            format!("{flag} entry {value:?} is not NAME=PATH"),
                        ));
                    }
                    let path = value.split_once('=').map_or(name, |(_, p)| p);
                    adapters.push(Adapter {
                        name: name.to_string(),
                        path: path.to_string(),
                    });
                    values.push(value.to_string());
                }
            }
        }
    }
    for a in fine_tune {
        values.push(format!("{}={}", a.name, a.path));
        adapters.push(a);
    }
    if values.is_empty() {
        return Ok(adapters);
    }
    match p.adapters {
        AdapterStyle::NamedValues { flag, enable } => {
            if let Some(enable) = enable
                && !args.has(&dashed(enable))
            {
                args.args.push(Arg::new(enable, &[]));
            }
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            args.args.push(Arg::new(flag, &values));
        }
        AdapterStyle::NamedComma { flag } => {
            args.args.push(Arg::new(flag, &[&values.join(",")]));
        }
        AdapterStyle::Unnamed { .. } => {}
    }
    Ok(adapters)
}

/// Reads the served names from `params` (or puts the default in), as the profile says.
fn place_served_names(
    p: &Profile,
    args: &mut EngineArgs,
    default_name: &str,
    origin: &str,
) -> Result<Vec<String>, ConfigError> {
    let flag = match p.served_name {
        ServedName::Many(f) | ServedName::One(f) | ServedName::Comma(f) => f,
        ServedName::Absent => {
            let given: Vec<String> = args
                .take("--served-model-name")
                .into_iter()
                .flat_map(|a| a.values)
                .collect();
            return Ok(if given.is_empty() {
                vec![default_name.to_string()]
            } else {
                given
            });
        }
    };
    let canonical = dashed(flag);
    let given: Vec<Arg> = args
        .args
        .iter()
        .filter(|a| a.name == canonical)
        .cloned()
        .collect();
    let Some(arg) = given.last() else {
        args.args.insert(0, Arg::new(flag, &[default_name]));
        return Ok(vec![default_name.to_string()]);
    };
    let names: Vec<String> = match p.served_name {
        ServedName::Comma(_) => arg
            .values
            .iter()
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        _ => arg.values.clone(),
    };
    match (p.served_name, names.len()) {
        (_, 0) => Err(params_err(
            origin,
            format!("{} needs at least one name", arg.spelling),
        )),
        (ServedName::One(_), n) if n > 1 => Err(params_err(
            origin,
            format!(
                "{} takes one name on {}; got {n}: {}",
                arg.spelling,
                p.name,
                names.join(" ")
            ),
        )),
        _ => Ok(names),
    }
}

/// The model's GPU count, as the profile says.
fn gpu_demand(p: &Profile, args: &EngineArgs, origin: &str) -> Result<u32, ConfigError> {
    match p.gpu_count {
        GpuCount::Product {
            factors,
            last_factor_unless,
        } => {
            let skip_last = last_factor_unless.is_some_and(|s| args.has(s));
            let mut n = 1u32;
            for (i, flag) in factors.iter().enumerate() {
                let v = args.positive_int(flag, origin)?;
                if !(skip_last && i + 1 == factors.len()) {
                    n = n.saturating_mul(v);
                }
            }
            Ok(n)
        }
        GpuCount::Shards { flag } => args.positive_int(flag, origin),
        GpuCount::Layers {
            layers,
            offloads_by_default,
            tensor_split,
            devices,
        } => {
            let value = |flag: &str| args.args.iter().rev().find(|a| a.name == flag);
            let offload = match value(layers).and_then(|a| a.values.first()) {
                Some(v) => v.trim() != "0",
                None => offloads_by_default,
            };
            let no_device = devices
                .and_then(value)
                .and_then(|a| a.values.first())
                .is_some_and(|v| v.trim() == "none");
            if !offload || no_device {
                return Ok(0);
            }
            let split = value(tensor_split).map_or(0, |a| {
                a.values
                    .iter()
                    .flat_map(|v| v.split([',', '/']))
                    .filter(|s| !s.trim().is_empty())
                    .count() as u32
            });
            Ok(split.max(1))
        }
    }
}

/// Turns a model's parsed `params` into its engine's arguments, served names, adapters and
/// GPU count: the other-vocabulary check, launcher flags dropped, `VLLM_PARAMS` merged under
/// a vLLM model's own, adapters in the profile's one flag, the profile's default switches.
pub fn resolve(
    engine: Engine,
    input: ModelInput<'_>,
    warnings: &mut Vec<String>,
) -> Result<Resolved, ConfigError> {
    let p = engine.profile();
    let origin = input.params_origin;
    let mut own = input.own;
    drop_launcher_flags(p, &mut own, input.origin, warnings);
    check_vocabulary(p, &own, origin)?;
    let mut args = match input.global {
        Some(global) => {
            let mut global = global.clone();
            drop_launcher_flags(p, &mut global, input.origin, warnings);
            check_vocabulary(p, &global, "VLLM_PARAMS")?;
            EngineArgs::merged(&global, &own)
        }
        None => own,
    };
    let served_names = place_served_names(p, &mut args, input.default_name, origin)?;
    let adapters = place_adapters(p, &mut args, input.fine_tune, origin)?;
    let gpu_demand = gpu_demand(p, &args, origin)?;
    if let Some(tp) = p.flag(Concept::TensorParallel) {
        let n = args.positive_int(&dashed(tp), origin)?;
        if n > 1 && !n.is_power_of_two() {
            warnings.push(format!(
                "{}: tensor-parallel size {n} is not a power of two; most models need the \
                 attention head count to divide by it",
                input.origin
            ));
        }
    }
    for flag in p.default_flags {
        if !args.has(&dashed(flag)) {
            args.args.push(Arg::new(flag, &[]));
        }
    }
    Ok(Resolved {
        args,
        served_names,
        adapters,
        gpu_demand,
    })
}

/// The last flag in `args` that sets `concept` for this engine, in any spelling it accepts
/// (say the user's own `--gpu-memory-utilization`, or `-c` for llama.cpp's context), for
/// the planner.
pub fn concept_arg(engine: Engine, args: &EngineArgs, concept: Concept) -> Option<&Arg> {
    let p = engine.profile();
    args.args
        .iter()
        .rev()
        .find(|a| p.concept_of(&a.name) == Some(concept))
}

/// Sets `concept` to `value` in the engine's own spelling, unless `args` already sets it;
/// `false` when the engine has no such flag (llama.cpp has no GPU-memory fraction) or the
/// user's value stays. The planner writes its GPU share with this.
pub fn set_concept(engine: Engine, args: &mut EngineArgs, concept: Concept, value: &str) -> bool {
    let Some(flag) = engine.profile().flag(concept) else {
        return false;
    };
    if concept_arg(engine, args, concept).is_some() {
        return false;
    }
    args.args.push(Arg::new(flag, &[value]));
    true
}

/// How many loopback ports an engine of this profile needs besides its own.
pub fn extra_ports(engine: Engine, args: &EngineArgs) -> usize {
    let p = engine.profile();
    p.per_instance
        .iter()
        .filter(|f| matches!(f, PerInstance::Port(flag) if !args.has(&dashed(flag))))
        .count()
}

/// The variables the launcher sets in the engine's environment (over every other).
pub fn launch_env(engine: Engine, port: u16) -> Vec<(String, String)> {
    engine
        .profile()
        .env
        .iter()
        .map(|(name, value)| {
            let value = match value {
                EnvValue::Host => "127.0.0.1".to_string(),
                EnvValue::Port => port.to_string(),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// The engine's full command line: its command, the model path (positional right after
/// the profile's subcommand when the command ends with it, as `vllm serve MODEL`; else the
/// profile's model flag), the launcher's host and port, the per-instance flags `params` did
/// not set (`extra` holds their ports, in order), then `args`.
pub fn argv(
    engine: Engine,
    cmd: &[String],
    model_path: &str,
    port: u16,
    extra: &[u16],
    args: &EngineArgs,
) -> Vec<String> {
    let p = engine.profile();
    let positional = p
        .model_positional_after
        .is_some_and(|sub| cmd.last().is_some_and(|w| w == sub));
    let mut out = cmd.to_vec();
    if positional {
        out.push(model_path.to_string());
    } else {
        out.extend(Arg::new(p.model_flag, &[model_path]).tokens());
    }
    let own = launch_args(engine, port, extra, args);
    out.extend(own.iter().flat_map(Arg::tokens));
    out.extend(args.tokens());
    out
}

/// The launcher's own flags after the model path, in the profile's spelling: host, port,
/// then the per-instance flags `params` did not set (`extra` holds their ports, in order).
fn launch_args(engine: Engine, port: u16, extra: &[u16], args: &EngineArgs) -> Vec<Arg> {
    let p = engine.profile();
    let mut out = vec![
        Arg::new(p.host_flag, &["127.0.0.1"]),
        Arg::new(p.port_flag, &[&port.to_string()]),
    ];
    let mut extra = extra.iter();
    for item in p.per_instance {
        match *item {
            PerInstance::Port(flag) if !args.has(&dashed(flag)) => {
                if let Some(port) = extra.next() {
                    out.push(Arg::new(flag, &[&port.to_string()]));
                }
            }
            PerInstance::TmpPath(flag) if !args.has(&dashed(flag)) => {
                let path = format!("/tmp/modelmux-{}-{port}", p.name);
                out.push(Arg::new(flag, &[&path]));
            }
            _ => {}
        }
    }
    out
}

/// With `MODELMUX_GPUS=none`: the number of core sets (one per rank) this model's engine
/// takes from the split, or `None` when its profile cannot be told its cores or the model
/// chose its own (its `env` sets the variable, its `params` the flags).
pub fn cpu_ranks(
    engine: Engine,
    args: &EngineArgs,
    env: &BTreeMap<String, String>,
    gpu_demand: u32,
) -> Option<usize> {
    match engine.profile().cpu_bind {
        CpuBind::None => None,
        CpuBind::Env { var } => (!env.contains_key(var)).then(|| gpu_demand.max(1) as usize),
        CpuBind::MaskFlags { own, .. } => own.iter().all(|f| !args.has(f)).then_some(1),
    }
}

/// Gives an engine its cores (`cores`: a kernel CPU list per rank, ranks separated by `|`,
/// as [`crate::cpus::Topology::split`] writes them) the profile's way: the variable in
/// `env`, or the mask and thread-count flags in `args`.
pub fn bind_cpus(
    engine: Engine,
    cores: &str,
    args: &mut EngineArgs,
    env: &mut BTreeMap<String, String>,
) {
    match engine.profile().cpu_bind {
        CpuBind::None => {}
        CpuBind::Env { var } => {
            env.insert(var.to_string(), cores.to_string());
        }
        CpuBind::MaskFlags { mask, threads, .. } => {
            let cpus = crate::cpus::parse_list(&cores.replace('|', ","));
            if cpus.is_empty() {
                return;
            }
            args.args.push(Arg::new(mask, &[&hex_mask(&cpus)]));
            args.args
                .push(Arg::new(threads, &[&cpus.len().to_string()]));
        }
    }
}

/// CPU ids as a hexadecimal affinity mask, `0x` first (CPU 0 is the lowest bit).
pub fn hex_mask(cpus: &[u32]) -> String {
    let top = cpus.iter().copied().max().unwrap_or(0);
    let mut nibbles = vec![0u8; top as usize / 4 + 1];
    for &c in cpus {
        nibbles[c as usize / 4] |= 1 << (c % 4);
    }
    let digits: String = nibbles
        .iter()
        .rev()
        .map(|n| char::from_digit(u32::from(*n), 16).expect("a nibble"))
        .collect();
    format!("0x{digits}")
}

/// The API key the engine requires of its clients (modelmux's own probe of its
/// `/v1/models` included): its flag in the engine's command line, else the profile's
/// variable in the engine's environment or modelmux's. llama.cpp takes a comma list; the
/// first key is used.
pub fn api_key(engine: Engine, argv: &[String], env: &BTreeMap<String, String>) -> Option<String> {
    let p = engine.profile();
    let from_flag = p.flag(Concept::ApiKey).and_then(|flag| {
        let inline = format!("{flag}=");
        argv.iter().enumerate().rev().find_map(|(i, a)| {
            a.strip_prefix(&inline)
                .map(str::to_string)
                .or_else(|| (a == flag).then(|| argv.get(i + 1).cloned()).flatten())
        })
    });
    let from_env = || {
        let var = p.api_key_env?;
        env.get(var).cloned().or_else(|| std::env::var(var).ok())
    };
    from_flag
        .or_else(from_env)
        .map(|k| match engine {
            Engine::Llamacpp => k.split(',').next().unwrap_or("").trim().to_string(),
            _ => k,
        })
        .filter(|k| !k.is_empty())
}

/// The engine's own `/v1/models` entries completed for modelmux's list: every served name
/// the engine does not list itself (SGLang and llama.cpp list only the first, TGI only its
/// model id: [`ModelsList`]) gets a copy of the engine's base-model entry with its `id`
/// set to the name, so that the engine's fields (`max_model_len`, `owned_by`, `meta`, ...)
/// reach the front's list for every name. Adapters the engine does not list are left to
/// the front's own entries.
pub fn model_entries(
    served_names: &[String],
    model_path: &str,
    adapters: &[String],
    mut list: Vec<Value>,
) -> Vec<Value> {
    let id_is = |e: &Value, id: &str| e.get("id").and_then(Value::as_str) == Some(id);
    let base = served_names
        .iter()
        .find_map(|n| list.iter().find(|e| id_is(e, n)))
        .or_else(|| list.iter().find(|e| id_is(e, model_path)))
        .or_else(|| {
            list.iter()
                .find(|e| !adapters.iter().any(|a| id_is(e, a)) && e.is_object())
        })
        .filter(|e| e.is_object())
        .cloned();
    let Some(base) = base else {
        return list;
    };
    for name in served_names {
        if !list.iter().any(|e| id_is(e, name)) {
            let mut entry = base.clone();
            entry["id"] = Value::String(name.clone());
            list.push(entry);
        }
    }
    list
}

#[cfg(test)]
mod tests;
