//! Engine supervision: turns a [`LaunchPlan`] into running engines and keeps publishing each
//! model's state. It owns processes and nothing else.
//!
//! - [`guardian`]: the per-engine guardian process (modelmux re-executed in a hidden mode)
//!   that makes sure no process of an engine outlives modelmux.
//! - [`control`]: modelmux's side of a guardian (its reports and commands).
//! - [`reaper`]: the one owner of reaping, and the spawner thread.
//! - [`commands`]: [`Control`], the handle for operators' commands, reloads and loads.
//! - `controller`: decides what each engine does next (loads, room, idle unloads,
//!   commands, adapters, reloads); [`ledger`]: what each engine holds on its GPUs.
//! - [`machine`]: the model state machine (the transition table, the one place phases
//!   change); [`orders`]: what the controller tells an engine task.
//! - [`engine`]: one engine's life (restarts, back-off, idle); `running`: one run of it
//!   (readiness, hang detection, sleep and wake, adapters, ordered stops).
//! - [`calls`]: modelmux's calls to the engine's control endpoints (sleep, LoRA).
//! - [`tree`]: process trees from `/proc`.
//! - [`group`]: process-group signals (the quick path when a guardian cannot help).
//! - [`logs`]: engine output re-logged at its own level, tail and root cause kept.
//! - [`probe`]: `/health` probes and the `/v1/models` fetch.
//! - [`restart`]: back-off and restart budget.
//! - [`stall`]: hung-engine detection from the engine's progress metrics.
//! - [`progress`]: the "still loading" and "all ready" log lines.
//! - [`stage`]: staged start of engines that share a GPU.

pub mod calls;
pub mod commands;
pub mod control;
mod controller;
pub mod engine;
pub mod group;
pub mod guardian;
pub mod ledger;
pub mod logs;
pub mod machine;
pub mod orders;
pub mod probe;
pub mod progress;
pub mod reaper;
pub mod restart;
mod running;
pub mod stage;
pub mod stall;
pub mod tree;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::plan::LaunchPlan;
use crate::state::StateTx;
pub use commands::{Accepted, Command, CommandError, Control, ReloadPlan, ReloadReport};
pub use engine::Failure;
pub use reaper::Reaper;

/// Running engines and their controller.
pub struct Supervisor {
    controller: JoinHandle<()>,
    control: Control,
    reaper: Reaper,
    shutdown: watch::Sender<bool>,
    failures: mpsc::UnboundedReceiver<Failure>,
}

impl Supervisor {
    /// Starts every always-loaded engine of the plan (on-demand ones wait for a request).
    pub fn start(
        plan: &LaunchPlan,
        settings: Arc<Settings>,
        reaper: Reaper,
        state: StateTx,
    ) -> Supervisor {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (fail_tx, failures) = mpsc::unbounded_channel();
        let (tx, requests) = mpsc::unbounded_channel();
        let control = Control {
            tx: tx.clone(),
            state: state.subscribe(),
        };
        let controller = controller::Controller::new(
            plan,
            settings,
            reaper.clone(),
            state,
            shutdown_rx,
            fail_tx,
            requests,
            tx,
        );
        Supervisor {
            controller: tokio::spawn(controller.run()),
            control,
            reaper,
            shutdown,
            failures,
        }
    }

    /// A handle for commands (admin API, SIGHUP, on-demand loads).
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The next model that failed for good. Pending forever if none does.
    pub async fn next_failure(&mut self) -> Failure {
        match self.failures.recv().await {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }

    /// Stops every engine (SIGTERM, SIGKILL after the grace period) and waits for them;
    /// then kills any process of this run's engines left under modelmux (a guardian that
    /// was killed leaves its engine's children to modelmux).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.controller.await;
        control::sweep_strays(&self.reaper, 1).await;
    }
}
