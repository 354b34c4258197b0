//! Idle unloads: on-demand models that served nothing for their `idle_unload` are put to
//! sleep or stopped, as their `unload` mode says.

use crate::config::{LoadMode, UnloadMode};
use crate::state::Phase;
use crate::supervisor::orders::{Order, Rest};

use super::Controller;

impl Controller {
    /// Unloads on-demand models idle for their `idle_unload`.
    pub(super) fn unload_idle(&mut self) {
        let due: Vec<(usize, UnloadMode, f64)> = {
            let s = self.snapshot();
            s.live()
                .filter(|(i, m)| {
                    m.load == LoadMode::OnDemand
                        && m.state == Phase::Ready
                        && !self.evicting.contains_key(i)
                        && !self.launching.contains(i)
                        && m.usage.in_flight() == 0
                        && m.usage.idle_for().as_secs_f64() >= self.slots[*i].launch.idle_unload
                })
                .map(|(i, m)| (i, m.unload, m.usage.idle_for().as_secs_f64()))
                .collect()
        };
        for (i, unload, idle) in due {
            let usage = self.snapshot().models[i].usage.clone();
            if !usage.try_drain_idle() {
                continue;
            }
            let name = self.slots[i].launch.name.clone();
            tracing::info!(model = %name, "idle for {idle:.1} s; unloading it ({})", unload.as_str());
            let (order, target) = match unload {
                UnloadMode::Sleep => (Order::Sleep, Phase::Sleeping),
                UnloadMode::Stop => (Order::Stop(Rest::Unloaded), Phase::Unloaded),
            };
            self.evicting.insert(i, target);
            self.order(i, order);
        }
    }
}
