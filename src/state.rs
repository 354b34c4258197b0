//! The one thing the supervisor and the front share: a snapshot of every model's state
//! (published through a `tokio::sync::watch`) and the routing table built from the plan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use tokio::sync::watch;

use crate::plan::LaunchPlan;

/// A model's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not started yet: it shares a GPU with models that start before it (SPEC §3.1), and
    /// waits until they are ready; requests get 503.
    Waiting,
    /// The engine is loading; requests get 503.
    Starting,
    /// `/health` answered 200; requests are routed.
    Ready,
    /// The engine died or hung and will be started again after a back-off.
    Restarting,
    /// It kept failing; it will not be started again.
    Failed,
    /// modelmux is shutting down.
    Stopping,
}

impl Phase {
    /// Every phase, for metrics.
    pub const ALL: [Phase; 6] = [
        Phase::Waiting,
        Phase::Starting,
        Phase::Ready,
        Phase::Restarting,
        Phase::Failed,
        Phase::Stopping,
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
}

/// Every model's state, in plan order.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// True once shutdown began: the front refuses new work.
    pub stopping: bool,
    /// One entry per model, in plan order.
    pub models: Vec<ModelStatus>,
}

impl Snapshot {
    /// Every model `starting`, or `waiting` when it starts after others on a shared GPU.
    pub fn initial(plan: &LaunchPlan) -> Self {
        let now = SystemTime::now();
        Snapshot {
            stopping: false,
            models: plan
                .models
                .iter()
                .map(|m| ModelStatus {
                    name: m.name.clone(),
                    state: if m.start_after.is_empty() {
                        Phase::Starting
                    } else {
                        Phase::Waiting
                    },
                    pid: None,
                    port: m.port,
                    gpus: m.gpus.clone(),
                    restarts: 0,
                    last_exit: None,
                    since: now,
                    last_log: None,
                    engine_models: None,
                    gpu_share: m.gpu_share,
                    start_after: m.start_after.clone(),
                })
                .collect(),
        }
    }

    /// True when every model is ready and shutdown has not begun.
    pub fn all_ready(&self) -> bool {
        !self.stopping && self.models.iter().all(|m| m.state == Phase::Ready)
    }
}

/// The supervisor's side: publishes changes.
pub type StateTx = watch::Sender<Snapshot>;
/// The front's side: reads the latest snapshot.
pub type StateRx = watch::Receiver<Snapshot>;

/// Updates one model's entry, stamping `since` when its phase changes; `last_log` is
/// dropped when the model leaves `starting`.
pub fn update(tx: &StateTx, index: usize, f: impl FnOnce(&mut ModelStatus)) {
    tx.send_modify(|s| {
        let m = &mut s.models[index];
        let before = m.state;
        f(m);
        if m.state != before {
            m.since = SystemTime::now();
            if m.state != Phase::Starting {
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
    /// Model entries in plan order (one per engine), for the single-model default.
    pub models: Vec<Route>,
    /// Every served name and adapter name, in plan order, for `/v1/models`.
    pub names: Vec<ServedName>,
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
        let mut table = RoutingTable::default();
        for (index, m) in plan.models.iter().enumerate() {
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
            for name in &m.served_names {
                table.routes.insert(name.clone(), route.clone());
                table.names.push(ServedName {
                    name: name.clone(),
                    model: index,
                    adapter: false,
                });
            }
            for name in &m.adapters {
                table.routes.insert(name.clone(), route.clone());
                table.names.push(ServedName {
                    name: name.clone(),
                    model: index,
                    adapter: true,
                });
            }
        }
        table
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
