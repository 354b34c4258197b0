//! Sorting the controller's orders: stops, what can be answered without the engine, and
//! what needs a ready one; orders meant for an earlier phase are dropped here. Apart from
//! the run itself so that its loops read as "what happens", not "which order is which".

use crate::state::{Phase, update};
use crate::supervisor::engine::EngineTask;
use crate::supervisor::orders::{AdapterError, Order};

/// An order sorted by what it needs.
pub(super) enum Triage {
    /// Stop the engine.
    Stop(StopKind),
    /// Done (or nothing to do).
    Handled,
    /// Needs a ready engine.
    Ready(Order),
    /// The controller is gone.
    Closed,
}

use super::StopKind;

impl EngineTask {
    /// Sorts an order: stops, and what can be answered without the engine.
    pub(super) fn triage(&mut self, order: Option<Order>, phase: Phase) -> Triage {
        match order {
            None => Triage::Closed,
            Some(Order::Stop(rest)) => Triage::Stop(StopKind::Rest(rest)),
            Some(Order::Restart) => Triage::Stop(StopKind::Restart),
            Some(Order::Start) => Triage::Handled,
            Some(Order::AddAdapter(_, reply)) if phase != Phase::Ready => {
                let _ = reply.send(Err(AdapterError::NotRunning(phase)));
                Triage::Handled
            }
            Some(Order::RemoveAdapter(name, reply)) if phase != Phase::Ready => {
                let _ = reply.send(self.forget_adapter(&name));
                Triage::Handled
            }
            Some(order) => Triage::Ready(order),
        }
    }

    /// Gives leases again and says so (waiting requests look at the state again).
    fn undrain(&self) {
        self.usage().undrain();
        update(&self.state, self.index, |_| {});
    }

    /// An order that does not apply in the model's phase now (it was meant for an earlier
    /// one): sleep and wake are dropped, a drain that came with them is undone.
    pub(super) fn stale(&self, order: Order) {
        match order {
            Order::Sleep => self.undrain(),
            Order::AddAdapter(_, reply) => {
                let phase = self.state.borrow().models[self.index].state;
                let _ = reply.send(Err(AdapterError::NotRunning(phase)));
            }
            Order::RemoveAdapter(name, reply) => {
                let _ = reply.send(self.forget_adapter(&name));
            }
            _ => {}
        }
    }
}
