//! Engine profiles: one per inference server (vLLM, SGLang, TGI, llama.cpp and
//! llama-cpp-python), each plain data in its own file ([`Profile`]). This module is the only
//! place that knows engine flags: it turns a model's `params` into the arguments of its
//! engine ([`resolve()`]) and writes the launcher's own flags (`launch_args`, in [`argv`]).
//!
//! - `mod.rs`: [`Engine`] (which server runs a model) and [`resolve()`]'s input and output.
//! - `profile.rs`: what a profile is, as plain data; `vllm.rs`, `sglang.rs`, `tgi.rs`,
//!   `llamacpp.rs`: the profiles themselves.
//! - `resolve.rs`: `params` to engine arguments, served names and GPU count.
//! - `vocabulary.rs`: flags spelled for another server refused, launcher flags dropped.
//! - `adapters.rs`: LoRA adapters from `params` and `fine_tune_weights` into one flag.
//! - `concepts.rs`: a flag found or set by its meaning, for the planner.
//! - `launch.rs`: the full command line, the launcher's flags, environment and extra ports.
//! - `cpu_bind.rs`: the cores of CPU engines, as a variable or mask flags.
//! - `api.rs`: the API key a running engine requires, and its `/v1/models` entries.

mod adapters;
mod api;
mod concepts;
mod cpu_bind;
mod launch;
mod llamacpp;
mod profile;
mod resolve;
mod sglang;
mod tgi;
mod vllm;
mod vocabulary;

use serde::Serialize;

pub use api::{api_key, model_entries};
pub use concepts::{concept_arg, set_concept};
pub use cpu_bind::{bind_cpus, cpu_ranks, hex_mask};
pub use launch::{argv, extra_ports, launch_env};
pub use profile::{
    AdapterStyle, Concept, ContextRule, CpuBind, EnvValue, FlagStyle, GpuCount, Metrics,
    ModelsList, PerInstance, Profile, ProgressMetrics, ServedName, dashed,
};
pub use resolve::{gpu_flags, resolve};
pub use vllm::DEFAULT_CMD as VLLM_DEFAULT_CMD;

use crate::config::{Adapter, ConfigError, EngineArgs};

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

/// What [`resolve()`] needs to know about one model.
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

#[cfg(test)]
mod tests;
