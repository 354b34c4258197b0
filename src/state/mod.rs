//! The one thing the supervisor and the front share: a snapshot of every model's state
//! (published through a `tokio::sync::watch`) and the routing table built from the plan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use tokio::sync::watch;

use crate::config::{LoadMode, UnloadMode};
use crate::observability::metrics::LoadStats;
use crate::plan::{LaunchPlan, ModelLaunch};
use crate::usage::Usage;

/// A model's life cycle. Phases change only through the supervisor's state machine
/// ([`crate::supervisor::machine`]), which holds the table of allowed transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not started yet: it waits for room on its GPU, or for the models that start before it
    /// on a shared GPU to be ready (SPEC §3.1); requests get 503 (or wait, on demand).
    Waiting,
    /// The engine is loading; requests get 503 (or wait, on demand).
    Starting,
    /// `/health` answered 200; requests are routed.
    Ready,
    /// The engine died or hung and will be started again after a back-off.
    Restarting,
    /// It kept failing; it will not be started again (unless an operator starts it).
    Failed,
    /// Its engine is being stopped (shutdown, an operator's stop or restart, an unload);
    /// requests in flight finish first.
    Stopping,
    /// Stopped by an operator (`POST /admin/models/{name}/stop`); requests get 503.
    Stopped,
    /// An on-demand model without an engine: its next request starts one.
    Unloaded,
    /// An on-demand model whose engine sleeps (vLLM's sleep mode): its next request wakes it.
    Sleeping,
    /// Waking from sleep.
    Waking,
}

impl Phase {
    /// Every phase, for metrics.
    pub const ALL: [Phase; 10] = [
        Phase::Waiting,
        Phase::Starting,
        Phase::Ready,
        Phase::Restarting,
        Phase::Failed,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Unloaded,
        Phase::Sleeping,
        Phase::Waking,
    ];

    /// The lowercase name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Restarting => "restarting",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Unloaded => "unloaded",
            Phase::Sleeping => "sleeping",
            Phase::Waking => "waking",
        }
    }
}

/// Seconds since the Unix epoch, for timestamps in JSON.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `time` as an RFC 3339 UTC timestamp with milliseconds: `2025-01-15T10:23:45.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn serialize_rfc3339<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*time))
}

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

/// Every model's state, in plan order, and the routing table built from it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// True once shutdown began: the front refuses new work.
    pub stopping: bool,
    /// One entry per model, by index: the plan's models first, then those a reload added.
    /// Entries are never removed (a removed model is marked `retired`), so an index names
    /// one model for the whole run.
    pub models: Vec<ModelStatus>,
    /// Every served name and adapter, mapped to its model; rebuilt when names change.
    #[serde(skip)]
    pub table: Arc<RoutingTable>,
}

/// Most models (plan and reloads together) one run can hold; a reload that would pass it is
/// refused.
pub const MAX_MODELS: usize = 1024;

impl Snapshot {
    /// Every model in its first phase (see [`ModelStatus::first_phase`]).
    pub fn initial(plan: &LaunchPlan) -> Self {
        let models: Vec<ModelStatus> = plan
            .models
            .iter()
            .map(|m| ModelStatus::from_launch(m, ModelStatus::first_phase(m)))
            .collect();
        let table = Arc::new(RoutingTable::build(&models));
        Snapshot {
            stopping: false,
            models,
            table,
        }
    }

    /// True when every model counts as ready and shutdown has not begun.
    pub fn all_ready(&self) -> bool {
        !self.stopping && self.live().all(|(_, m)| m.counts_as_ready())
    }

    /// The models that are served (not retired), with their indices.
    pub fn live(&self) -> impl Iterator<Item = (usize, &ModelStatus)> {
        self.models.iter().enumerate().filter(|(_, m)| !m.retired)
    }

    /// The index of the served model with this name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.live().find(|(_, m)| m.name == name).map(|(i, _)| i)
    }

    /// Rebuilds the routing table after names changed.
    pub fn rebuild_table(&mut self) {
        self.table = Arc::new(RoutingTable::build(&self.models));
    }
}

/// The supervisor's side: publishes changes.
pub type StateTx = watch::Sender<Snapshot>;
/// The front's side: reads the latest snapshot.
pub type StateRx = watch::Receiver<Snapshot>;

/// Updates one model's entry (everything but its phase, which only
/// [`crate::supervisor::machine`] changes).
pub fn update(tx: &StateTx, index: usize, f: impl FnOnce(&mut ModelStatus)) {
    tx.send_modify(|s| {
        let m = &mut s.models[index];
        let before = m.state;
        f(m);
        debug_assert_eq!(
            before, m.state,
            "a phase changes only through supervisor::machine"
        );
        m.state = before;
    });
}

/// Sets a model's phase and updates the rest of its entry in one publication, stamping
/// `since` when the phase changes and dropping `last_log` when it leaves `starting`. Only the
/// state machine calls this.
pub(crate) fn set_phase(
    tx: &StateTx,
    index: usize,
    phase: Phase,
    f: impl FnOnce(&mut ModelStatus),
) {
    tx.send_modify(|s| {
        let m = &mut s.models[index];
        let before = m.state;
        f(m);
        m.state = phase;
        if phase != before {
            m.since = SystemTime::now();
            if phase != Phase::Starting {
                m.last_log = None;
            }
        }
    });
}

/// Where a request for a name goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index of the model in the plan and the snapshot.
    pub index: usize,
    /// The model's name.
    pub model: Arc<str>,
    /// `127.0.0.1:PORT` of its engine.
    pub authority: Arc<str>,
    /// The engine's default `/predict` path.
    pub predict_route: Arc<str>,
    /// The engine's Prometheus path (its profile's), `None` when it has none.
    pub metrics_path: Option<Arc<str>>,
    /// The `"model"` the engine wants for its base model, when not the served name (TGI).
    pub request_model: Option<Arc<str>>,
    /// The engine takes only UUIDs as `X-Request-Id` (llama-cpp-python).
    pub uuid_request_ids: bool,
}

/// Every served name and adapter name, mapped to its engine.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    routes: HashMap<String, Route>,
    /// Model entries in index order (one per engine), for the single-model default.
    pub models: Vec<Route>,
    /// Every served name and adapter name, in plan order, for `/v1/models`.
    pub names: Vec<ServedName>,
    /// Routes by model index (`None` for a retired model).
    by_index: Vec<Option<Route>>,
}

/// One name requests can use.
#[derive(Debug, Clone)]
pub struct ServedName {
    /// The name.
    pub name: String,
    /// Index of the model whose engine serves it.
    pub model: usize,
    /// True for a LoRA adapter.
    pub adapter: bool,
}

impl RoutingTable {
    /// Builds the table from the plan.
    pub fn from_plan(plan: &LaunchPlan) -> Self {
        let models: Vec<ModelStatus> = plan
            .models
            .iter()
            .map(|m| ModelStatus::from_launch(m, Phase::Starting))
            .collect();
        RoutingTable::build(&models)
    }

    /// Builds the table from the models' entries: served names, configured and run-time
    /// adapters of every model that is not retired.
    pub fn build(models: &[ModelStatus]) -> Self {
        let mut table = RoutingTable::default();
        for (index, m) in models.iter().enumerate().filter(|(_, m)| !m.retired) {
            let route = Route {
                index,
                model: m.name.as_str().into(),
                authority: format!("127.0.0.1:{}", m.port).into(),
                predict_route: m.predict_route.as_str().into(),
                metrics_path: m.metrics_path.as_deref().map(Into::into),
                request_model: m.request_model.as_deref().map(Into::into),
                uuid_request_ids: m.uuid_request_ids,
            };
            table.models.push(route.clone());
            if table.by_index.len() <= index {
                table.by_index.resize(index + 1, None);
            }
            table.by_index[index] = Some(route.clone());
            let names = m.served_names.iter().map(|n| (n, false));
            let adapters = m
                .adapters
                .iter()
                .chain(m.runtime_adapters.iter().map(|a| &a.name))
                .map(|n| (n, true));
            for (name, adapter) in names.chain(adapters) {
                table.routes.insert(name.clone(), route.clone());
                table.names.push(ServedName {
                    name: name.clone(),
                    model: index,
                    adapter,
                });
            }
        }
        table
    }

    /// The route of the model at `index`, unless it is retired.
    pub fn route(&self, index: usize) -> Option<&Route> {
        self.by_index.get(index).and_then(Option::as_ref)
    }

    /// True when a name is served (a model's or an adapter's).
    pub fn contains(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// The route for a request's `"model"`; `None` with several models is resolved by the
    /// caller (400), with exactly one model it is that model.
    pub fn lookup(&self, name: Option<&str>) -> Lookup<'_> {
        match name {
            Some(n) => self.routes.get(n).map_or(Lookup::Unknown, Lookup::Found),
            None if self.models.len() == 1 => Lookup::Found(&self.models[0]),
            None => Lookup::Missing,
        }
    }

    /// True when `name` is a LoRA adapter's name.
    pub fn is_adapter(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.adapter && n.name == name)
    }

    /// Every name, comma-separated, for "unknown model" messages.
    pub fn available(&self) -> String {
        self.names
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The result of [`RoutingTable::lookup`].
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Route to this engine.
    Found(&'a Route),
    /// No such name.
    Unknown,
    /// No `"model"` and several models.
    Missing,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> String {
        rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
    }

    #[test]
    fn rfc3339_times_are_utc_with_milliseconds() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_736_936_625, 123), "2025-01-15T10:23:45.123Z");
        assert_eq!(at(1_767_225_599, 999), "2025-12-31T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_agrees_with_day_arithmetic_across_four_centuries() {
        // Every 1st of March from 1970 to 2370: the day count must land on it.
        let mut days = 59; // 1970-03-01
        for year in 1970..2370u64 {
            let text = rfc3339(UNIX_EPOCH + Duration::from_secs(days * 86_400));
            assert_eq!(text, format!("{year:04}-03-01T00:00:00.000Z"));
            let leap = (year + 1) % 4 == 0 && ((year + 1) % 100 != 0 || (year + 1) % 400 == 0);
            days += if leap { 366 } else { 365 };
        }
    }
}
