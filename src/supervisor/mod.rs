//! Engine supervision: turns a [`LaunchPlan`] into running engines and keeps publishing each
//! model's state. It owns processes and nothing else.
//!
//! - [`guardian`]: the per-engine guardian process (modelmux re-executed in a hidden mode)
//!   that makes sure no process of an engine outlives modelmux.
//! - [`control`]: modelmux's side of a guardian (its reports and commands).
//! - [`reaper`]: the one owner of reaping, and the spawner thread.
//! - [`engine`]: one engine's life (readiness, hang detection, restarts, stop).
//! - [`tree`]: process trees from `/proc`.
//! - [`group`]: process-group signals (the quick path when a guardian cannot help).
//! - [`logs`]: engine output re-logged at its own level, tail and root cause kept.
//! - [`probe`]: `/health` probes and the `/v1/models` fetch.
//! - [`restart`]: back-off and restart budget.
//! - [`stall`]: hung-engine detection from the engine's progress metrics.
//! - [`progress`]: the "still loading" and "all ready" log lines.
//! - [`stage`]: staged start of engines that share a GPU.

pub mod control;
pub mod engine;
pub mod group;
pub mod guardian;
pub mod logs;
pub mod probe;
pub mod progress;
pub mod reaper;
pub mod restart;
pub mod stage;
pub mod stall;
pub mod tree;

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
    reaper: Reaper,
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
                progress: launch.engine.profile().metrics.map(|m| m.progress),
            };
            tasks.spawn(task.run());
        }
        Supervisor {
            tasks,
            reaper,
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

    /// Stops every engine (SIGTERM, SIGKILL after the grace period) and waits for them;
    /// then kills any process of this run's engines left under modelmux (a guardian that
    /// was killed leaves its engine's children to modelmux).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        control::sweep_strays(&self.reaper, 1).await;
    }
}
