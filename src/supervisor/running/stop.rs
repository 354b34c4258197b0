//! Ordered stops of a running engine: at shutdown at once, on an order after the requests
//! in flight (within the grace period). Apart because every way out of a run ends here.

use crate::state::update;
use crate::supervisor::control::Guarded;
use crate::supervisor::engine::{CLEANUP_SLACK, EngineTask, Pumps, RunEnd, drain, stopping};
use crate::supervisor::machine::{self, Event};
use crate::supervisor::orders::Rest;
use crate::supervisor::reaper::Exit;

use super::StopKind;

impl EngineTask {
    /// Shutdown: the ordered stop through the guardian (SIGTERM to the main process, SIGKILL
    /// to whatever is left after the grace period), then wait until nothing is left.
    pub(in crate::supervisor) async fn stop(&self, mut engine: Guarded, pumps: Pumps) -> RunEnd {
        let _ = machine::apply(&self.state, self.index, Event::Stop, |_| {});
        self.halt(&mut engine, pumps).await;
        update(&self.state, self.index, |m| m.pid = None);
        RunEnd::Shutdown
    }

    /// Stops the engine and waits until nothing of it is left.
    async fn halt(&self, engine: &mut Guarded, pumps: Pumps) {
        let grace = self.settings.shutdown_grace;
        engine.stop(grace).await;
        let exit = engine.finish(grace + CLEANUP_SLACK, &self.reaper).await;
        let pid = engine.pid;
        match exit {
            Some(Exit::Signal(9)) => {
                tracing::warn!(model = %self.launch.name, pid, "engine ignored SIGTERM for {:.0} s; killed (killed by SIGKILL)", grace.as_secs_f64())
            }
            Some(e) => tracing::info!(model = %self.launch.name, pid, "engine stopped ({e})"),
            None => tracing::info!(model = %self.launch.name, pid, "engine stopped"),
        }
        drain(pumps).await;
    }

    /// An order to stop: no new requests (they get 503, or wait for a load), those in flight
    /// finish within the grace period, then the ordered stop; the model rests or starts
    /// again.
    pub(super) async fn stop_for(
        &self,
        kind: StopKind,
        mut engine: Guarded,
        pumps: Pumps,
    ) -> RunEnd {
        let usage = self.usage();
        usage.drain();
        let _ = machine::apply(&self.state, self.index, Event::Stop, |_| {});
        let grace = self.settings.shutdown_grace;
        let in_flight = usage.in_flight();
        if in_flight > 0 {
            tracing::info!(model = %self.launch.name, "waiting for {in_flight} request(s) in flight to finish (up to {:.0} s)", grace.as_secs_f64());
            let mut sd = self.shutdown.clone();
            tokio::select! {
                _ = tokio::time::timeout(grace, usage.drained()) => {}
                _ = stopping(&mut sd) => {}
            }
        }
        self.halt(&mut engine, pumps).await;
        match kind {
            StopKind::Restart => {
                usage.undrain();
                update(&self.state, self.index, |m| m.pid = None);
                RunEnd::Again
            }
            StopKind::Rest(Rest::Retired) => {
                let _ = machine::apply(&self.state, self.index, Event::Halt, |m| m.pid = None);
                RunEnd::Retired
            }
            StopKind::Rest(rest) => {
                let event = if rest == Rest::Unloaded {
                    self.stats().unloaded();
                    Event::Unload
                } else {
                    Event::Halt
                };
                usage.undrain();
                let _ = machine::apply(&self.state, self.index, event, |m| m.pid = None);
                RunEnd::Parked
            }
        }
    }
}
