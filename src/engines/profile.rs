//! What a profile is: one inference server's command-line vocabulary and HTTP surface, as
//! plain data. The functions here only read that data; they never name a flag themselves.

use serde::Serialize;

/// A thing the launcher or the planner needs to say to an engine, whatever the spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concept {
    /// The model's weights (a directory, a file, or a Hugging Face id).
    ModelPath,
    /// The address to listen on.
    Host,
    /// The port to listen on.
    Port,
    /// The name(s) the model answers to.
    ServedName,
    /// Tensor-parallel size (GPUs one copy of the model is split over).
    TensorParallel,
    /// Pipeline-parallel size.
    PipelineParallel,
    /// Data-parallel replicas.
    DataParallel,
    /// Turns LoRA support on.
    EnableLora,
    /// The LoRA adapters to load at start.
    Adapters,
    /// The fraction of GPU memory the engine may take.
    GpuMemoryFraction,
    /// The longest sequence (prompt + output) the engine plans for.
    MaxContext,
    /// How many layers go to the GPU (llama.cpp).
    GpuLayers,
    /// Which devices the engine uses (llama.cpp `--device`).
    Devices,
    /// How a model is split over several GPUs (llama.cpp `--tensor-split`).
    TensorSplit,
    /// Turns the Prometheus endpoint on.
    Metrics,
    /// The key the server requires of clients (its own `/v1/models` included).
    ApiKey,
}

/// How flags are spelled: vLLM takes `--max_model_len` and `--max-model-len`, most servers
/// only dashes, llama-cpp-python only underscores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagStyle {
    /// Either separator works.
    Either,
    /// `--max-model-len` only.
    Dashes,
    /// `--n_gpu_layers` only.
    Underscores,
}

/// How the served name reaches the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "flag")]
pub enum ServedName {
    /// One flag followed by every name (vLLM `--served-model-name a b`).
    Many(&'static str),
    /// One flag with one name; further names are modelmux's own (the front routes them).
    One(&'static str),
    /// One flag with the names joined by commas (llama.cpp `--alias a,b`).
    Comma(&'static str),
    /// The server has no such flag: every name is modelmux's own (TGI). A
    /// `--served-model-name` in `params` names the model for modelmux and is not passed on.
    Absent,
}

/// Where a model's GPU count comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GpuCount {
    /// The product of these parallel sizes (each defaults to 1). `unless` names a switch
    /// that folds the last factor into the others (SGLang's `--enable-dp-attention`).
    Product {
        /// Canonical flags whose values multiply.
        factors: &'static [&'static str],
        /// A switch under which the last factor takes no GPUs of its own.
        last_factor_unless: Option<&'static str>,
    },
    /// One flag's value, 1 when absent (TGI `--num-shard`).
    Shards {
        /// The flag.
        flag: &'static str,
    },
    /// llama.cpp: GPUs hold layers. 0 GPUs when the layer count is 0 (or, with
    /// `offloads_by_default` false, when it is not given) or the device list is `none`;
    /// otherwise one GPU per `tensor_split` entry, else 1.
    Layers {
        /// The layer-count flag.
        layers: &'static str,
        /// Whether layers go to the GPU when the flag is absent.
        offloads_by_default: bool,
        /// The per-GPU split flag.
        tensor_split: &'static str,
        /// The device-list flag, if the server has one.
        devices: Option<&'static str>,
    },
}

/// How LoRA adapters are given to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AdapterStyle {
    /// `enable` (if any), then `flag NAME=PATH NAME=PATH ...` (one flag, several values).
    NamedValues {
        /// The flag listing the adapters.
        flag: &'static str,
        /// A switch that must accompany them, if the server needs one.
        enable: Option<&'static str>,
    },
    /// `flag NAME=PATH,NAME=PATH` (one value, comma-separated; TGI).
    NamedComma {
        /// The flag listing the adapters.
        flag: &'static str,
    },
    /// The server loads adapters by path and applies them to every request: it cannot
    /// serve an adapter under its own name, so `fine_tune_weights` is refused and the flag
    /// is passed through from `params` as it is.
    Unnamed {
        /// The server's adapter flag.
        flag: &'static str,
    },
}

/// What the engine's `GET /v1/models` lists, so that the front can make an entry for a
/// served name the engine does not list (by copying the engine's first base-model entry
/// with its `id` set to the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelsList {
    /// Every served name and adapter (vLLM).
    AllNames,
    /// The first served name only, and loaded adapters (SGLang, llama.cpp, llama-cpp-python).
    FirstName,
    /// The model path as `id`, never the served name (TGI).
    ModelPath,
}

/// The engine's Prometheus endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Metrics {
    /// Its path on the engine's port.
    pub path: &'static str,
    /// The prefix of the engine's own series (`vllm:`), for the one-scrape `/metrics`.
    pub prefix: &'static str,
    /// The series that tell a working engine from a hung one (`MODELMUX_STALL_TIMEOUT`).
    pub progress: ProgressMetrics,
}

/// The metric names that tell whether an engine is working, for hung-engine detection
/// (`supervisor::stall`): requests in its running batch, and values that move while it
/// works on them. A hung engine has requests running and none of them moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProgressMetrics {
    /// Gauge: requests in the engine's running batch (summed over its label sets).
    pub running: &'static str,
    /// The counter of generated tokens when the server counts them as they come out (named
    /// in the restart reason); `None` where it counts them only when a request finishes.
    pub generated: Option<&'static str>,
    /// Other series that move while the engine works: counters of work done (prompt
    /// tokens, finished requests, forward passes), or gauges the server refreshes as it
    /// steps, so that a long prefill or an embedding model is not taken for a hang.
    pub progress: &'static [&'static str],
}

/// How the engine reads its context-length flag ([`Concept::MaxContext`]), for the memory
/// estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ContextRule {
    /// The length the engine plans for when the flag is absent; `None`: the model's own
    /// (`max_position_embeddings`, or the GGUF's training context).
    pub default: Option<u64>,
    /// Values of the flag that mean the model's own length (vLLM `auto`, `-1`; llama.cpp `0`).
    pub model_values: &'static [&'static str],
    /// Whether the value may carry vLLM's `k`/`K`/`m`/`M`/`g`/`G` suffixes (`32k`).
    pub suffixes: bool,
}

/// A flag the launcher adds with a value of its own unless `params` sets it: values the
/// server defaults to the same constant in every instance, which collide when several run
/// on one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "flag")]
pub enum PerInstance {
    /// A free loopback port the plan picks.
    Port(&'static str),
    /// A path unique to the engine: `/tmp/modelmux-{profile}-{engine port}`.
    TmpPath(&'static str),
}

/// How a CPU engine (`MODELMUX_GPUS=none`) is given its own cores (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CpuBind {
    /// The server has no way to be told its cores: it gets none of the split.
    None,
    /// A variable with the cores in the kernel's list syntax, one list per tensor- or
    /// pipeline-parallel rank separated by `|` (vLLM's `VLLM_CPU_OMP_THREADS_BIND`); a
    /// model's own `env` setting it keeps its value.
    Env {
        /// The variable.
        var: &'static str,
    },
    /// A hexadecimal affinity-mask flag and a thread-count flag (llama.cpp `--cpu-mask`,
    /// `--threads`: one thread per core); `params` that set any of `own` keep theirs.
    MaskFlags {
        /// The mask flag.
        mask: &'static str,
        /// The thread-count flag.
        threads: &'static str,
        /// Canonical flags with which `params` choose the cores or threads themselves.
        own: &'static [&'static str],
    },
}

/// A value the launcher puts in an engine's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    /// The engine's loopback address, `127.0.0.1`.
    Host,
    /// The engine's port.
    Port,
}

/// One inference server, as plain data.
#[derive(Debug, Serialize)]
pub struct Profile {
    /// The name used in `engine` and `MODELMUX_ENGINE`.
    pub name: &'static str,
    /// The server in words.
    pub server: &'static str,
    /// The upstream source these spellings were read from.
    pub source: &'static str,
    /// The default command (before the launcher's flags).
    pub default_cmd: &'static [&'static str],
    /// The launcher's flags for model path, host and port, in the server's spelling.
    pub model_flag: &'static str,
    /// A subcommand after which the model path is positional instead of `model_flag`: when
    /// the engine command ends with it (vLLM's `vllm serve MODEL`), the path goes right
    /// after it; other commands of the profile (vLLM's API server module) take `model_flag`.
    pub model_positional_after: Option<&'static str>,
    /// See `model_flag`.
    pub host_flag: &'static str,
    /// See `model_flag`.
    pub port_flag: &'static str,
    /// How served names are passed.
    pub served_name: ServedName,
    /// Separator rule for long flags.
    pub flag_style: FlagStyle,
    /// Other spellings the server accepts, mapped to the canonical one (after the style's
    /// separator is normalised to dashes).
    pub aliases: &'static [(&'static str, &'static str)],
    /// Each concept's flag as the server spells it, for the launcher, the other-vocabulary
    /// check and the planner. A concept may appear more than once when the server has two flags for it.
    pub vocabulary: &'static [(Concept, &'static str)],
    /// Where the GPU count comes from.
    pub gpu_count: GpuCount,
    /// How adapters are passed.
    pub adapters: AdapterStyle,
    /// How the context-length flag reads, for the memory estimate.
    pub context: ContextRule,
    /// The readiness and liveness path (200 when ready).
    pub health_path: &'static str,
    /// The Prometheus endpoint, if the server has one.
    pub metrics: Option<Metrics>,
    /// Switches the launcher adds unless `params` has them (say, the one that turns the
    /// metrics endpoint on).
    pub default_flags: &'static [&'static str],
    /// Flags that need a value unique to each engine.
    pub per_instance: &'static [PerInstance],
    /// Variables the launcher sets in the engine's environment, over modelmux's own and the
    /// model's `env`: servers that read their address from the environment ahead of their
    /// flags would otherwise take the front's `PORT`.
    pub env: &'static [(&'static str, EnvValue)],
    /// How a CPU engine is given its cores.
    pub cpu_bind: CpuBind,
    /// The variable the server reads its API key from when no flag gives one.
    pub api_key_env: Option<&'static str>,
    /// What `GET /v1/models` lists.
    pub models_list: ModelsList,
    /// The `"model"` value the engine expects in requests for the base model, when it is
    /// not the served name (TGI reads any other value as a LoRA adapter id).
    pub request_model: Option<&'static str>,
    /// The engine answers 400 (empty body) to an `X-Request-Id` that is not a UUID
    /// (llama-cpp-python: starlette-context's `RequestIdPlugin(validate=True)`): the front must
    /// send it a UUID (the client still gets its own id back).
    pub uuid_request_ids: bool,
}

impl Profile {
    /// The server's spelling of a concept, if it has one.
    pub fn flag(&self, concept: Concept) -> Option<&'static str> {
        self.vocabulary
            .iter()
            .find(|(c, _)| *c == concept)
            .map(|(_, f)| *f)
    }

    /// Every spelling of a concept the server has.
    pub fn flags(&self, concept: Concept) -> impl Iterator<Item = &'static str> + '_ {
        self.vocabulary
            .iter()
            .filter(move |(c, _)| *c == concept)
            .map(|(_, f)| *f)
    }

    /// The concept a canonical (dashed, alias-expanded) flag stands for here.
    pub fn concept_of(&self, canonical: &str) -> Option<Concept> {
        self.vocabulary
            .iter()
            .find(|(_, f)| dashed(f) == canonical)
            .map(|(c, _)| *c)
    }

    /// The flag that sets the engine's GPU-memory fraction (vLLM
    /// `--gpu-memory-utilization`), for the GPU memory planner. `None`: the server has none.
    pub fn memory_fraction_flag(&self) -> Option<&'static str> {
        self.flag(Concept::GpuMemoryFraction)
    }

    /// The flag that caps the context length (vLLM `--max-model-len`), for the planner.
    pub fn max_context_flag(&self) -> Option<&'static str> {
        self.flag(Concept::MaxContext)
    }

    /// The canonical name of a flag token as this server reads it: the style's separator
    /// normalised to dashes, then the server's aliases expanded.
    pub fn canonical(&self, token: &str) -> String {
        let dashed = dashed(token);
        match self.aliases.iter().find(|(alias, _)| *alias == dashed) {
            Some((_, long)) => long.to_string(),
            None => dashed,
        }
    }

    /// Whether the server reads this token's separators (`--n_ctx` on llama.cpp: no).
    pub fn spelled_right(&self, token: &str) -> bool {
        let Some(rest) = token.strip_prefix("--") else {
            return true;
        };
        match self.flag_style {
            FlagStyle::Either => true,
            FlagStyle::Dashes => !rest.contains('_'),
            FlagStyle::Underscores => !rest.contains('-'),
        }
    }

    /// Whether a canonical flag (or an alias of it) is in this server's vocabulary.
    pub fn knows(&self, canonical: &str) -> bool {
        self.concept_of(canonical).is_some() || self.aliases.iter().any(|(a, _)| *a == canonical)
    }
}

/// `--max_model_len` → `--max-model-len` (only long flags change).
pub fn dashed(token: &str) -> String {
    match token.strip_prefix("--") {
        Some(rest) => format!("--{}", rest.replace('_', "-")),
        None => token.to_string(),
    }
}
