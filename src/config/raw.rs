//! The raw inputs: every setting of SPEC §2 as it arrives, from a flag or its environment
//! variable, still unvalidated. Everything is a string here so that a bad value is reported
//! by [`super::Settings`] in one line that names the variable.

use clap::Args;

/// Every configuration input. Each field reads its flag, else its environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct RawConfig {
    /// Read the model configuration (same schema as MULTI_MODEL_CONFIG) from a JSON file.
    #[arg(long = "config", value_name = "FILE", global = true)]
    pub config_file: Option<String>,

    /// JSON {"models": [ModelSpec, ...]}.
    #[arg(
        long,
        env = "MULTI_MODEL_CONFIG",
        global = true,
        hide_env_values = true
    )]
    pub multi_model_config: Option<String>,

    /// OCI model-group metadata: a JSON list of {"key", "value"}; key MULTI_MODEL_CONFIG is used.
    #[arg(
        long,
        env = "OCI_MODEL_GROUP_CUSTOM_METADATA",
        global = true,
        hide_env_values = true
    )]
    pub oci_metadata: Option<String>,

    /// Single-model mode: the model path.
    #[arg(long, env = "MODEL", global = true)]
    pub model: Option<String>,

    /// Single-model mode: the engine arguments.
    #[arg(long, env = "PARAMS", global = true, allow_hyphen_values = true)]
    pub params: Option<String>,

    /// Engine arguments added to every model (a model's own params win).
    #[arg(long, env = "VLLM_PARAMS", global = true, allow_hyphen_values = true)]
    pub vllm_params: Option<String>,

    /// Base directory for relative model paths (default /opt/ds/model/deployed_model).
    #[arg(long, env = "MODELMUX_MODEL_ROOT", global = true)]
    pub model_root: Option<String>,

    /// Where /predict goes without a `route` header (default /v1/completions).
    #[arg(long, env = "MODEL_DEPLOY_PREDICT_ENDPOINT", global = true)]
    pub predict_endpoint: Option<String>,

    /// An extra path that answers like /health (default /health).
    #[arg(long, env = "MODEL_DEPLOY_HEALTH_ENDPOINT", global = true)]
    pub health_endpoint: Option<String>,

    /// Accepted for OCI compatibility; streaming always works.
    #[arg(
        long,
        env = "MODEL_DEPLOY_ENABLE_STREAMING",
        global = true,
        hide = true
    )]
    pub enable_streaming: Option<String>,

    /// Port of the routing front (default 8080).
    #[arg(long, env = "PORT", global = true)]
    pub port: Option<String>,

    /// Port of the health listener (defaults to PORT: one listener serves both).
    #[arg(long, env = "HEALTH_CHECK_PORT", global = true)]
    pub health_check_port: Option<String>,

    /// The engine command, split like a shell line, for models of the MODELMUX_ENGINE
    /// profile without an engine_cmd of their own (default: the profile's own, for vLLM
    /// `vllm serve`).
    #[arg(
        long,
        env = "MODELMUX_ENGINE_CMD",
        global = true,
        allow_hyphen_values = true
    )]
    pub engine_cmd: Option<String>,

    /// GPU override: a count N, a comma list of indices or UUIDs, or `none` (default: the
    /// GPUs NVML finds).
    #[arg(long, env = "MODELMUX_GPUS", global = true)]
    pub gpus: Option<String>,

    /// Require `Authorization: Bearer <key>` on the front (default: no key).
    #[arg(long, env = "MODELMUX_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,

    /// Serve the admin API (/admin/...) and require `Authorization: Bearer <key>` for it
    /// (default: no admin API; every /admin/ path is 404).
    #[arg(
        long,
        env = "MODELMUX_ADMIN_KEY",
        global = true,
        hide_env_values = true
    )]
    pub admin_key: Option<String>,

    /// Log format: text (default) or json.
    #[arg(long, env = "MODELMUX_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,

    /// Seconds an engine may take to become ready (default 1800).
    #[arg(long, env = "MODELMUX_STARTUP_TIMEOUT", global = true)]
    pub startup_timeout: Option<String>,

    /// Seconds between SIGTERM and SIGKILL at shutdown (default 30).
    #[arg(long, env = "MODELMUX_SHUTDOWN_GRACE", global = true)]
    pub shutdown_grace: Option<String>,

    /// Restarts of one model within 10 minutes before it counts as failed (default 5).
    #[arg(long, env = "MODELMUX_MAX_RESTARTS", global = true)]
    pub max_restarts: Option<String>,

    /// What a failed model does: exit (default) or degrade.
    #[arg(long, env = "MODELMUX_ON_FAILURE", global = true)]
    pub on_failure: Option<String>,

    /// Largest request body the front accepts, in bytes (default 33554432).
    #[arg(long, env = "MODELMUX_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<String>,

    /// Seconds between health probes of a ready engine (default 10).
    #[arg(long, env = "MODELMUX_HEALTH_INTERVAL", global = true)]
    pub health_interval: Option<String>,

    /// Seconds one health probe of a ready engine may take (default 10).
    #[arg(long, env = "MODELMUX_HEALTH_TIMEOUT", global = true)]
    pub health_timeout: Option<String>,

    /// First restart delay in seconds; doubles per restart up to 60 (default 1).
    #[arg(long, env = "MODELMUX_RESTART_DELAY", global = true)]
    pub restart_delay: Option<String>,

    /// Address the front and health listeners bind (default 0.0.0.0).
    #[arg(long, env = "MODELMUX_HOST", global = true)]
    pub host: Option<String>,

    /// Seconds a client may take to send a request's head (default 30).
    #[arg(long, env = "MODELMUX_HEADER_TIMEOUT", global = true)]
    pub header_timeout: Option<String>,

    /// Seconds an idle keep-alive client connection is kept (default 120).
    #[arg(long, env = "MODELMUX_IDLE_TIMEOUT", global = true)]
    pub idle_timeout: Option<String>,

    /// Client connections held at once; past it new ones get 503 (default 10000).
    #[arg(long, env = "MODELMUX_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<String>,

    /// Seconds a request may wait for a model's concurrency slot before 429, or for an
    /// on-demand model to load before 503 (default 60).
    #[arg(long, env = "MODELMUX_QUEUE_TIMEOUT", global = true)]
    pub queue_timeout: Option<String>,

    /// Seconds of silence in a stream before an SSE comment is sent; 0 turns it off (default 15).
    #[arg(long, env = "MODELMUX_SSE_KEEPALIVE", global = true)]
    pub sse_keepalive: Option<String>,

    /// Seconds a client may pause while sending a request body (default 30).
    #[arg(long, env = "MODELMUX_BODY_TIMEOUT", global = true)]
    pub body_timeout: Option<String>,

    /// Seconds a client may take no bytes of a response that has bytes waiting for it;
    /// then its connection (and its engine request) is closed (default 60).
    #[arg(long, env = "MODELMUX_SEND_TIMEOUT", global = true)]
    pub send_timeout: Option<String>,
    /// The engine profile of models that name none: vllm (default), sglang, tgi, llamacpp
    /// or llamacpp-python.
    #[arg(long, env = "MODELMUX_ENGINE", global = true)]
    pub engine: Option<String>,

    /// First engine port; engines get consecutive ports from it, skipping PORT and
    /// HEALTH_CHECK_PORT (default PORT + 1).
    #[arg(long, env = "MODELMUX_ENGINE_BASE_PORT", global = true)]
    pub engine_base_port: Option<String>,

    /// Seconds a ready engine may have requests running without generating a token before
    /// it counts as hung and is restarted; 0 turns the check off (default 120).
    #[arg(long, env = "MODELMUX_STALL_TIMEOUT", global = true)]
    pub stall_timeout: Option<String>,

    /// Seconds between the "still loading" log lines while models load (default 10).
    #[arg(long, env = "MODELMUX_PROGRESS_INTERVAL", global = true)]
    pub progress_interval: Option<String>,

    /// The fraction of each GPU's memory all engines on it may use together (default 0.92).
    #[arg(long, env = "MODELMUX_GPU_MEMORY_LIMIT", global = true)]
    pub gpu_memory_limit: Option<String>,
}
