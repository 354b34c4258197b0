//! A reload's changes: models taken out of service, replaced or added, each as a new index
//! (indexes are never reused), checked against the generation it was computed for.

use crate::config::LoadMode;
use crate::plan::ModelLaunch;
use crate::state::{MAX_MODELS, ModelStatus, Phase, RuntimeAdapter};
use crate::supervisor::commands::{CommandError, ReloadPlan, ReloadReport};
use crate::supervisor::orders::{Order, Rest};

use super::Controller;

impl Controller {
    /// Applies a reload computed against this generation of launches.
    pub(super) fn apply(&mut self, plan: ReloadPlan) -> Result<ReloadReport, CommandError> {
        if *self.shutdown.borrow() {
            return Err(CommandError::ShuttingDown);
        }
        if plan.based_on != self.generation {
            return Err(CommandError::Conflict(
                "another reload changed the models meanwhile; reload again".into(),
            ));
        }
        let adding = plan.restart.len() + plan.start.len();
        if self.slots.len() + adding > MAX_MODELS {
            return Err(CommandError::Invalid(format!(
                "this run has held {} models; a reload may not take it past {MAX_MODELS}; restart modelmux",
                self.slots.len()
            )));
        }
        self.generation += 1;
        let mut report = ReloadReport {
            unchanged: plan.unchanged.clone(),
            ..Default::default()
        };
        for name in &plan.stop {
            if let Ok(i) = self.find(name) {
                self.retire(i);
                report.stopped.push(name.clone());
            }
        }
        for launch in plan.restart {
            let Ok(old) = self.find(&launch.name) else {
                continue;
            };
            let (adapters, was_up) = {
                let s = self.snapshot();
                let m = &s.models[old];
                let up = !matches!(m.state, Phase::Unloaded | Phase::Stopped | Phase::Failed);
                (m.runtime_adapters.clone(), up)
            };
            self.retire(old);
            report.restarted.push(launch.name.clone());
            let sticky = launch.load == LoadMode::Always || was_up;
            self.add(launch, adapters, sticky);
        }
        for launch in plan.start {
            report.started.push(launch.name.clone());
            let sticky = launch.load == LoadMode::Always;
            self.add(launch, Vec::new(), sticky);
        }
        tracing::info!(
            "reload: started [{}], stopped [{}], restarted [{}], unchanged [{}]",
            report.started.join(", "),
            report.stopped.join(", "),
            report.restarted.join(", "),
            report.unchanged.join(", ")
        );
        Ok(report)
    }

    /// Takes a model out of service at once (no new requests reach it) and stops its
    /// engine after its requests in flight.
    fn retire(&mut self, index: usize) {
        self.pending.retain(|p| p.index != index);
        self.launching.remove(&index);
        self.state.send_modify(|s| {
            s.models[index].retired = true;
            s.rebuild_table();
        });
        self.order(index, Order::Stop(Rest::Retired));
    }

    /// Adds a model (a new index) and, if `start`, queues its start.
    fn add(&mut self, launch: ModelLaunch, adapters: Vec<RuntimeAdapter>, start: bool) {
        let index = self.slots.len();
        let phase = match launch.load {
            LoadMode::Always => Phase::Waiting,
            LoadMode::OnDemand => Phase::Unloaded,
        };
        let mut status = ModelStatus::from_launch(&launch, phase);
        status.runtime_adapters = adapters;
        self.state.send_modify(|s| {
            s.models.push(status);
            s.rebuild_table();
        });
        self.spawn_task(index, launch, false);
        if start {
            self.want(index, true);
        }
    }
}
