//! Engine supervision: turns a [`LaunchPlan`] into running engines and keeps publishing each
//! model's state. It owns processes and nothing else.
//!
//! - [`reaper`]: the one owner of reaping, and the spawner thread (`PR_SET_PDEATHSIG`).
//! - [`engine`]: one engine's life (readiness, hang detection, restarts, stop).
//! - [`group`]: process-group signals.
//! - [`logs`]: engine output re-logged, stderr tail kept.
//! - [`probe`]: `/health` probes.
//! - [`restart`]: back-off and restart budget.
//! - [`stage`]: staged start of engines that share a GPU.

pub mod engine;
pub mod group;
pub mod logs;
pub mod probe;
pub mod reaper;
pub mod restart;
pub mod stage;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::plan::LaunchPlan;
use crate::state::StateTx;
pub use engine::Failure;
pub use reaper::Reaper;

/// Running engines.
pub struct Supervisor {
    tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    failures: mpsc::UnboundedReceiver<Failure>,
}

impl Supervisor {
    /// Starts every engine of the plan concurrently.
    pub fn start(
        plan: &LaunchPlan,
        settings: Arc<Settings>,
        reaper: Reaper,
        state: StateTx,
    ) -> Supervisor {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (fail_tx, failures) = mpsc::unbounded_channel();
        let prober = probe::Prober::default();
        let mut tasks = JoinSet::new();
        for (index, launch) in plan.models.iter().enumerate() {
            let task = engine::EngineTask {
                index,
                launch: launch.clone(),
                settings: settings.clone(),
                reaper: reaper.clone(),
                state: state.clone(),
                shutdown: shutdown_rx.clone(),
                failures: fail_tx.clone(),
                prober: prober.clone(),
            };
            tasks.spawn(task.run());
        }
        Supervisor {
            tasks,
            shutdown,
            failures,
        }
    }

    /// The next model that failed for good. Pending forever if none does.
    pub async fn next_failure(&mut self) -> Failure {
        match self.failures.recv().await {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }

    /// Stops every engine (SIGTERM, SIGKILL after the grace period) and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
