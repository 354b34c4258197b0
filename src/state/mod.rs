//! The one thing the supervisor and the front share: a snapshot of every model's state
//! (published through a `tokio::sync::watch`) and the routing table built from the plan.
//!
//! The pieces:
//!
//! - this file: the [`Snapshot`] of every model, its watch channel ([`StateTx`],
//!   [`StateRx`]) and the two ways a model's entry changes ([`update`], `set_phase`).
//! - `phase`: a model's life cycle ([`Phase`]).
//! - `model`: one model's published state ([`ModelStatus`], [`RuntimeAdapter`]).
//! - `routing`: the routing table built from the models' names ([`RoutingTable`]).
//! - `timestamps`: Unix and RFC 3339 times for JSON ([`now_unix`], [`rfc3339`]).

mod model;
mod phase;
mod routing;
mod timestamps;

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use crate::plan::LaunchPlan;
pub use model::{ModelStatus, RuntimeAdapter, engine_authorization};
pub use phase::Phase;
pub use routing::{Lookup, Route, RoutingTable, ServedName};
pub use timestamps::{now_unix, rfc3339};

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

#[cfg(test)]
mod tests;
