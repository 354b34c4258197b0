//! Room on the GPUs for a queued model: whether it fits beside what the ledger says the
//! other engines hold, and, when it does not, which idle on-demand models to unload (least
//! recently used first) to make room.

use crate::config::LoadMode;
use crate::state::{Phase, Snapshot};
use crate::supervisor::ledger::{self, Candidate, Entry, Eviction, Holding};
use crate::supervisor::orders::{Order, Rest};

use super::Controller;

impl Controller {
    /// The ledger's entries for every model but `except`.
    fn entries(&self, s: &Snapshot, except: usize) -> Vec<(usize, Holding)> {
        s.models
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != except)
            .map(|(i, m)| (i, ledger::holding(m, self.launching.contains(&i))))
            .filter(|(_, h)| *h != Holding::None)
            .collect()
    }

    /// Whether the model fits now, after unloading some idle models, or not yet.
    pub(super) fn room(&self, s: &Snapshot, index: usize) -> Decision {
        let held = self.entries(s, index);
        let entries: Vec<Entry> = held
            .iter()
            .map(|&(i, holding)| Entry {
                launch: &self.slots[i].launch,
                holding,
            })
            .collect();
        let me = &self.slots[index].launch;
        if self.gpus.fits(me, &entries) {
            return Decision::Go;
        }
        if !self.evicting.is_empty() {
            // Room is being made; look again when it is.
            return Decision::Wait;
        }
        let candidates: Vec<Candidate> = held
            .iter()
            .enumerate()
            .filter_map(|(at, &(i, _))| {
                let m = &s.models[i];
                let idle = m.usage.in_flight() == 0 && !m.usage.draining();
                let unloadable = !m.retired
                    && m.load == LoadMode::OnDemand
                    && matches!(m.state, Phase::Ready | Phase::Sleeping)
                    && !self.launching.contains(&i);
                (idle && unloadable).then_some(Candidate {
                    at,
                    idle_for: m.usage.idle_for(),
                    unload: m.unload,
                })
            })
            .collect();
        match ledger::victims(&self.gpus, me, &entries, &candidates) {
            Some(v) => Decision::Evict(v.into_iter().map(|(at, how)| (held[at].0, how)).collect()),
            None => Decision::Wait,
        }
    }

    /// Unloads an idle model to make room for `for_model`; skipped if a request got to it
    /// first.
    pub(super) fn evict(&mut self, victim: usize, how: Eviction, for_model: usize) {
        let (phase, usage) = {
            let s = self.snapshot();
            (s.models[victim].state, s.models[victim].usage.clone())
        };
        if !usage.try_drain_idle() {
            return;
        }
        let (victim_name, new_name) = (
            self.slots[victim].launch.name.clone(),
            self.slots[for_model].launch.name.clone(),
        );
        let order = match (how, phase) {
            (Eviction::Sleep, Phase::Ready) => Order::Sleep,
            _ => Order::Stop(Rest::Unloaded),
        };
        let target = if matches!(order, Order::Sleep) {
            Phase::Sleeping
        } else {
            Phase::Unloaded
        };
        tracing::info!(model = %victim_name, "unloading it ({}) to make room for {new_name}; it was idle for {:.1} s", if target == Phase::Sleeping { "sleep" } else { "stop" }, usage.idle_for().as_secs_f64());
        self.evicting.insert(victim, target);
        self.order(victim, order);
    }
}

/// What to do with a queued load now.
pub(super) enum Decision {
    /// Start or wake it.
    Go,
    /// Unload these first.
    Evict(Vec<(usize, Eviction)>),
    /// Not yet.
    Wait,
    /// Forget it.
    Drop,
}
