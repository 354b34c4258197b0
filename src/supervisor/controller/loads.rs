//! The queue of loads waiting for room, and their admission: a model is started or woken
//! once nothing else sizes its memory on its GPUs and the ledger says it fits, first come,
//! first served.

use crate::config::LoadMode;
use crate::state::{Phase, Snapshot};
use crate::supervisor::orders::Order;

use super::room::Decision;
use super::{Controller, Pending};

impl Controller {
    /// Queues a load of `index` unless it is loaded, loading or queued.
    pub(super) fn want(&mut self, index: usize, sticky: bool) {
        if index >= self.slots.len() {
            return;
        }
        if let Some(p) = self.pending.iter_mut().find(|p| p.index == index) {
            p.sticky |= sticky;
            return;
        }
        if self.launching.contains(&index) {
            return;
        }
        let refuse = {
            let s = self.snapshot();
            let m = &s.models[index];
            let idle = matches!(
                m.state,
                Phase::Unloaded | Phase::Sleeping | Phase::Stopped | Phase::Failed | Phase::Waiting
            );
            // An operator's stop holds until an operator's start.
            m.retired || !idle || (m.state == Phase::Stopped && !sticky)
        };
        if refuse {
            return;
        }
        self.pending.push(Pending {
            index,
            sticky,
            after_stop: false,
        });
    }

    /// Starts or wakes queued models for which there is room now, unloading idle on-demand
    /// models to make room; first come, first served.
    pub(super) fn admit(&mut self) {
        if *self.shutdown.borrow() {
            return;
        }
        let mut k = 0;
        while k < self.pending.len() {
            let Pending {
                index,
                sticky,
                after_stop,
            } = self.pending[k];
            let go = {
                let s = self.snapshot();
                let m = &s.models[index];
                let waiting_request = m.usage.in_flight() > 0;
                let idle = matches!(
                    m.state,
                    Phase::Unloaded
                        | Phase::Sleeping
                        | Phase::Stopped
                        | Phase::Failed
                        | Phase::Waiting
                );
                if m.retired {
                    Decision::Drop
                } else if !idle && after_stop {
                    Decision::Wait
                } else if !idle {
                    Decision::Drop
                } else if !sticky && !waiting_request {
                    // Nobody waits for it any more (timed out, went away).
                    Decision::Drop
                } else if self.busy_neighbour(&s, index) {
                    Decision::Wait
                } else {
                    self.room(&s, index)
                }
            };
            match go {
                Decision::Drop => {
                    self.pending.remove(k);
                }
                Decision::Wait => k += 1,
                Decision::Evict(victims) => {
                    for (victim, how) in victims {
                        self.evict(victim, how, index);
                    }
                    k += 1;
                }
                Decision::Go => {
                    self.pending.remove(k);
                    let phase = self.snapshot().models[index].state;
                    let order = if phase == Phase::Sleeping {
                        Order::Wake
                    } else {
                        Order::Start
                    };
                    let name = self.slots[index].launch.name.clone();
                    tracing::info!(model = %name, "{} it", if phase == Phase::Sleeping { "waking" } else { "loading" });
                    self.snapshot().models[index].usage.touch();
                    self.launching.insert(index);
                    self.order(index, order);
                }
            }
        }
    }

    /// True while an engine on one of the model's GPUs is starting or waking (one engine
    /// sizes its memory at a time on a GPU), or while an engine that had its port is still
    /// there (a reload replaced it).
    fn busy_neighbour(&self, s: &Snapshot, index: usize) -> bool {
        let me = &self.slots[index].launch;
        s.models.iter().enumerate().any(|(i, m)| {
            if i == index {
                return false;
            }
            let other = &self.slots[i].launch;
            let same_port = other.port == me.port
                && m.retired
                && (m.pid.is_some() || m.state == Phase::Stopping);
            let shares_gpu = other.gpus.iter().any(|g| me.gpus.contains(g));
            let sizing = !m.retired
                && (self.launching.contains(&i)
                    || matches!(m.state, Phase::Starting | Phase::Waking)
                    || (m.state == Phase::Waiting && m.load == LoadMode::Always));
            same_port || (shares_gpu && sizing)
        })
    }
}
