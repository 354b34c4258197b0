//! One model's published state: what `/health` and the admin API show of it, and what the
//! front and the supervisor read (its names, limits, usage and load statistics). Apart
//! because the entry is long, and most of it is copied from the model's launch.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::phase::Phase;
use super::timestamps::serialize_rfc3339;
use crate::config::{LoadMode, UnloadMode};
use crate::observability::metrics::LoadStats;
use crate::plan::ModelLaunch;
use crate::usage::Usage;

/// A LoRA adapter loaded into an engine at run time (`POST /admin/models/{name}/adapters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeAdapter {
    /// The name requests use.
    pub name: String,
    /// Its path, resolved like `model_path`.
    pub path: String,
}

/// One model's published state.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// The model's name.
    pub name: String,
    /// Its phase.
    pub state: Phase,
    /// The engine's pid while it runs.
    pub pid: Option<u32>,
    /// The engine's loopback port.
    pub port: u16,
    /// Its GPUs (`CUDA_VISIBLE_DEVICES` ids).
    pub gpus: Vec<String>,
    /// Restarts so far.
    pub restarts: u32,
    /// Why the engine last stopped (exit code, signal, hung, startup timeout).
    pub last_exit: Option<String>,
    /// When the model entered its phase; JSON gives it as an RFC 3339 time.
    #[serde(serialize_with = "serialize_rfc3339")]
    pub since: SystemTime,
    /// While the engine starts: its last line of output (without vLLM's prefix), a
    /// progress bar's latest state included; `None` in every other phase.
    pub last_log: Option<String>,
    /// The engine's own `/v1/models` entries (vLLM's `root`, `parent`, `max_model_len`,
    /// `owned_by`, ...), fetched each time it turns ready; `None` until then.
    #[serde(skip)]
    pub engine_models: Option<Arc<Vec<serde_json::Value>>>,
    /// Its `--gpu-memory-utilization` when it gets one (a shared GPU, or the user's own).
    pub gpu_share: Option<f64>,
    /// Models that must be ready before it starts (they share its GPU).
    pub start_after: Vec<String>,
    /// `always` or `on_demand`.
    pub load: LoadMode,
    /// How it is unloaded when idle (on-demand models).
    pub unload: UnloadMode,
    /// True for an on-demand model that takes turns with others on its GPUs.
    pub takes_turns: bool,
    /// Every name the engine serves the base model under.
    #[serde(skip)]
    pub served_names: Vec<String>,
    /// Adapters from the configuration (`fine_tune_weights`, `--lora-modules`).
    #[serde(skip)]
    pub adapters: Vec<String>,
    /// Adapters loaded at run time; loaded again after the engine restarts.
    #[serde(skip)]
    pub runtime_adapters: Vec<RuntimeAdapter>,
    /// The engine's default `/predict` path.
    #[serde(skip)]
    pub predict_route: String,
    /// The engine's Prometheus path (its profile's), `None` when it has none.
    #[serde(skip)]
    pub metrics_path: Option<String>,
    /// The `"model"` the engine wants for its base model, when not the served name (TGI).
    #[serde(skip)]
    pub request_model: Option<String>,
    /// The engine takes only UUIDs as `X-Request-Id` (llama-cpp-python).
    #[serde(skip)]
    pub uuid_request_ids: bool,
    /// `Authorization` value for the engine's own API key (`Bearer KEY`), when it has one
    /// (vLLM `--api-key` or `VLLM_API_KEY`, and each engine's counterpart).
    #[serde(skip)]
    pub engine_authorization: Option<String>,
    /// Requests in flight to this engine at once (`max_concurrency`); `None`: no limit.
    #[serde(skip)]
    pub max_concurrency: Option<u32>,
    /// Requests that may wait for a slot (`max_queue`).
    #[serde(skip)]
    pub max_queue: u32,
    /// True once a reload removed or replaced it: it is no longer served, listed or
    /// counted, and its index is never used again.
    #[serde(skip)]
    pub retired: bool,
    /// Its requests in flight and last use.
    #[serde(skip)]
    pub usage: Arc<Usage>,
    /// Its loads, unloads and load times, for `/metrics`.
    #[serde(skip)]
    pub loads: Arc<LoadStats>,
}

impl ModelStatus {
    /// A model as its launch describes it, in `phase` (not yet started).
    pub fn from_launch(m: &ModelLaunch, phase: Phase) -> Self {
        ModelStatus {
            name: m.name.clone(),
            state: phase,
            pid: None,
            port: m.port,
            gpus: m.gpus.clone(),
            restarts: 0,
            last_exit: None,
            since: SystemTime::now(),
            last_log: None,
            engine_models: None,
            gpu_share: m.gpu_share,
            start_after: m.start_after.clone(),
            load: m.load,
            unload: m.unload,
            takes_turns: m.takes_turns,
            served_names: m.served_names.clone(),
            adapters: m.adapters.clone(),
            runtime_adapters: Vec::new(),
            predict_route: m.predict_route.clone(),
            metrics_path: m.metrics_path.clone(),
            request_model: m.request_model.clone(),
            uuid_request_ids: m.uuid_request_ids,
            engine_authorization: engine_authorization(
                crate::engines::api_key(m.engine, &m.argv, &m.env).as_deref(),
            ),
            max_concurrency: m.max_concurrency,
            max_queue: m.max_queue,
            retired: false,
            usage: Usage::new(),
            loads: Arc::default(),
        }
    }

    /// The phase a model is in before anything happened to it: `unloaded` on demand,
    /// `waiting` after others on a shared GPU, else `starting`.
    pub fn first_phase(m: &ModelLaunch) -> Phase {
        if m.load == LoadMode::OnDemand {
            Phase::Unloaded
        } else if m.start_after.is_empty() {
            Phase::Starting
        } else {
            Phase::Waiting
        }
    }

    /// Whether it counts as ready for `/health`: a ready model, or an on-demand model that
    /// a request can load (SPEC §9).
    pub fn counts_as_ready(&self) -> bool {
        match self.load {
            LoadMode::Always => self.state == Phase::Ready,
            LoadMode::OnDemand => !matches!(
                self.state,
                Phase::Failed | Phase::Stopped | Phase::Restarting
            ),
        }
    }
}

/// `Bearer KEY` for the engine's own API key, when it has one that a header can carry
/// (ASCII without control characters, as the supervisor's own calls send it; a key with
/// anything else could not be sent by any client either).
pub fn engine_authorization(key: Option<&str>) -> Option<String> {
    let key = key?;
    key.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| format!("Bearer {key}"))
}
