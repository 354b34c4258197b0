//! Admission of one request to its model (SPEC §9): a [`Lease`] once the model is ready. A
//! request for an on-demand model that is unloaded or asleep asks the supervisor to load it
//! and waits, holding its lease, so that the model is not unloaded again before the request
//! had its turn; requests that come while it loads wait the same way. The front calls
//! [`admit`] and turns a [`Refused`] into its answer.

use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};

use crate::config::LoadMode;
use crate::state::{Phase, StateRx};
use crate::supervisor::Control;
use crate::usage::Lease;

/// A short look at the state even without a change (a lease freed by a drain that ended
/// publishes nothing by itself).
const RECHECK: Duration = Duration::from_millis(50);

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// modelmux is shutting down.
    ShuttingDown,
    /// A reload removed the model meanwhile.
    Removed,
    /// The model failed; why.
    Failed(String),
    /// An operator stopped it.
    Stopped,
    /// An always-loaded model that is not ready (starting, restarting, stopping).
    NotReady(Phase),
    /// It was not ready within the wait (an on-demand model still loading).
    TimedOut(Phase),
}

/// A lease for a request to model `index`: at once when it is ready; for an on-demand model
/// that is not, after asking `control` to load it and waiting until `deadline`.
pub async fn admit(
    state: &StateRx,
    control: &Control,
    index: usize,
    deadline: Instant,
) -> Result<Lease, Refused> {
    let mut rx = state.clone();
    let mut held: Option<Lease> = None;
    loop {
        let (phase, load, usage) = {
            let s = rx.borrow_and_update();
            if s.stopping {
                return Err(Refused::ShuttingDown);
            }
            let Some(m) = s.models.get(index) else {
                return Err(Refused::Removed);
            };
            if m.retired {
                return Err(Refused::Removed);
            }
            if m.state == Phase::Failed {
                let why = m
                    .last_exit
                    .clone()
                    .unwrap_or_else(|| "no reason recorded".into());
                return Err(Refused::Failed(why));
            }
            (m.state, m.load, m.usage.clone())
        };
        if held.is_none() {
            held = usage.lease();
        }
        match phase {
            Phase::Ready if held.is_some() => return Ok(held.take().expect("held")),
            Phase::Stopped => return Err(Refused::Stopped),
            _ if load == LoadMode::Always && phase != Phase::Ready => {
                return Err(Refused::NotReady(phase));
            }
            // An operator's restart: let the stop go on, come back after.
            Phase::Stopping => held = None,
            Phase::Unloaded | Phase::Sleeping if held.is_some() => control.load(index),
            _ => {}
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Err(Refused::ShuttingDown);
                }
            }
            _ = sleep_until(deadline) => {
                let phase = state.borrow().models.get(index).map_or(phase, |m| m.state);
                return Err(Refused::TimedOut(phase));
            }
            _ = sleep(RECHECK) => {}
        }
    }
}
