//! The gpu module's own error type. Each variant renders as one line that names the variable
//! or the GPUs at fault and says what to do; `config` and `plan` wrap it.

use thiserror::Error;

/// Everything that goes wrong in GPU discovery, sharing and memory planning.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GpuError {
    /// `MODELMUX_GPUS` has a value of the wrong form.
    #[error("MODELMUX_GPUS={value:?}: {problem}")]
    Override {
        /// The value as given.
        value: String,
        /// What is wrong and the accepted forms.
        problem: String,
    },

    /// No GPU could be discovered and no override was given.
    #[error(
        "no GPU found ({note}) but the models need GPUs: {models}; set MODELMUX_GPUS to a \
         count, indices or UUIDs, or to none to start engines without GPUs"
    )]
    NoGpus {
        /// Why discovery found nothing.
        note: String,
        /// Every model's GPU count and estimate, e.g. `a on 1 GPU: 3.8 GiB (...)`.
        models: String,
    },

    /// More GPUs are needed than exist, and sharing cannot help (SPEC §3): nothing starts.
    #[error("{problem}; models: {models}; GPUs: {gpus}; fix: {fix}")]
    Exceeded {
        /// How many GPUs are needed and how many there are, e.g. `the models need 3 GPUs
        /// but 2 are available`.
        problem: String,
        /// Every model's GPU count and estimate, e.g. `llama on 2 GPUs (-tp 2): 24.5 GiB
        /// (...)`, `hf on 1 GPU: no estimate (...): whole GPUs`.
        models: String,
        /// Every GPU's size, e.g. `0 24.0 GiB, 1 24.0 GiB`.
        gpus: String,
        /// What to change, naming the model and its flag.
        fix: String,
    },

    /// The models' memory estimates do not fit the GPUs (SPEC §3.1): nothing starts.
    #[error(
        "the models do not fit in GPU memory: {problem}; models: {models}; GPUs: {gpus} \
         (MODELMUX_GPU_MEMORY_LIMIT={limit}); fix: {fix}"
    )]
    DoesNotFit {
        /// What does not fit where.
        problem: String,
        /// Every model's GPU count and estimate, e.g. `llama on 1 GPU: 17.5 GiB (weights ...)`.
        models: String,
        /// Every GPU's size, e.g. `0: 24.0 GiB, 1: 24.0 GiB`.
        gpus: String,
        /// The limit in force.
        limit: String,
        /// What to change.
        fix: String,
    },

    /// At start, NVML says memory the plan counts on is already taken.
    #[error(
        "GPU memory is already in use: {problem}; stop those processes or plan for less (MODELMUX_GPU_MEMORY_LIMIT, fewer models)"
    )]
    MemoryTaken {
        /// Per GPU: free vs planned, and who holds the rest.
        problem: String,
    },
}

impl GpuError {
    /// A shorthand for [`GpuError::Override`].
    pub fn bad_override(value: &str, problem: impl Into<String>) -> Self {
        GpuError::Override {
            value: value.to_string(),
            problem: problem.into(),
        }
    }
}

/// Bytes as GiB with one decimal, for messages and tables.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
