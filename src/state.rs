//! The one thing the supervisor and the front share: a snapshot of every model's state
//! (published through a `tokio::sync::watch`) and the routing table built from the plan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::plan::LaunchPlan;

/// A model's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
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
    pub const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::Ready,
        Phase::Restarting,
        Phase::Failed,
        Phase::Stopping,
    ];

    /// The lowercase name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
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
    /// When the model entered its phase (Unix seconds).
    pub since: f64,
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
    /// Every model `starting`.
    pub fn initial(plan: &LaunchPlan) -> Self {
        let now = now_unix();
        Snapshot {
            stopping: false,
            models: plan
                .models
                .iter()
                .map(|m| ModelStatus {
                    name: m.name.clone(),
                    state: Phase::Starting,
                    pid: None,
                    port: m.port,
                    gpus: m.gpus.clone(),
                    restarts: 0,
                    last_exit: None,
                    since: now,
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

/// Updates one model's entry, stamping `since` when its phase changes.
pub fn update(tx: &StateTx, index: usize, f: impl FnOnce(&mut ModelStatus)) {
    tx.send_modify(|s| {
        let m = &mut s.models[index];
        let before = m.state;
        f(m);
        if m.state != before {
            m.since = now_unix();
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
