//! The model state machine (SPEC §6): every phase a model can be in, every event that moves
//! it, in one table, and the one function that changes a model's phase ([`apply`]).
//!
//! The engine task is the only caller: it says what happened ([`Event`]), the table says
//! where that leads from the phase the model is in. An event the table does not allow from
//! that phase is a bug: it is logged and the phase stays as it was.

use crate::state::{ModelStatus, Phase, StateTx, set_phase};

/// What happened to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// It cannot start yet: it waits for room on its GPUs, or for the models that start
    /// before it on a shared GPU.
    Queue,
    /// Its engine is being started (spawned, then loading).
    Start,
    /// Its engine answered `/health` (after a start or a wake) and is served.
    Healthy,
    /// Its engine exited, hung, or was not ready in time; it starts again after a back-off.
    Crash,
    /// It keeps failing (or failed with a usage error): it is not started again.
    GiveUp,
    /// An ordered stop began: shutdown, an operator's stop or restart, a reload, an unload.
    Stop,
    /// An operator stopped it: its engine is gone (or never ran) and stays so.
    Halt,
    /// An on-demand model is unloaded: its engine is gone (or never started).
    Unload,
    /// Its engine is being put to sleep.
    Sleep,
    /// Its engine is being woken.
    Wake,
}

impl Event {
    /// The event's name in logs and the README.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Queue => "queue",
            Event::Start => "start",
            Event::Healthy => "healthy",
            Event::Crash => "crash",
            Event::GiveUp => "give up",
            Event::Stop => "stop",
            Event::Halt => "halt",
            Event::Unload => "unload",
            Event::Sleep => "sleep",
            Event::Wake => "wake",
        }
    }
}

use Event::*;
use Phase::*;

/// Every allowed transition: (from, event, to).
pub const TABLE: &[(Phase, Event, Phase)] = &[
    (Waiting, Start, Starting),
    (Waiting, Stop, Stopping),
    (Waiting, Halt, Stopped),
    (Waiting, Unload, Unloaded),
    (Starting, Start, Starting),
    (Starting, Healthy, Ready),
    (Starting, Crash, Restarting),
    (Starting, GiveUp, Failed),
    (Starting, Stop, Stopping),
    (Ready, Crash, Restarting),
    (Ready, GiveUp, Failed),
    (Ready, Stop, Stopping),
    (Ready, Sleep, Sleeping),
    (Restarting, Start, Starting),
    (Restarting, Queue, Waiting),
    (Restarting, Stop, Stopping),
    (Restarting, Halt, Stopped),
    (Restarting, Unload, Unloaded),
    (Failed, Start, Starting),
    (Failed, Queue, Waiting),
    (Failed, Halt, Stopped),
    (Failed, Unload, Unloaded),
    (Stopping, Start, Starting),
    (Stopping, Queue, Waiting),
    (Stopping, Halt, Stopped),
    (Stopping, Unload, Unloaded),
    (Stopped, Start, Starting),
    (Stopped, Queue, Waiting),
    (Stopped, Unload, Unloaded),
    (Unloaded, Start, Starting),
    (Unloaded, Queue, Waiting),
    (Unloaded, Halt, Stopped),
    (Sleeping, Wake, Waking),
    (Sleeping, Stop, Stopping),
    (Sleeping, Crash, Restarting),
    (Sleeping, GiveUp, Failed),
    (Sleeping, Unload, Unloaded),
    (Waking, Healthy, Ready),
    (Waking, Crash, Restarting),
    (Waking, GiveUp, Failed),
    (Waking, Stop, Stopping),
];

/// Where `event` leads from `from`; `None` when the table does not allow it.
pub fn next(from: Phase, event: Event) -> Option<Phase> {
    TABLE
        .iter()
        .find(|(f, e, _)| *f == from && *e == event)
        .map(|(_, _, to)| *to)
}

/// An event the table does not allow from the model's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Illegal {
    /// The model's phase.
    pub from: Phase,
    /// The event.
    pub event: Event,
}

/// The one place a model's phase changes: applies `event` to the model at `index`, together
/// with `f`'s changes to the rest of its entry, in one publication. An event the table does
/// not allow is logged as a bug and changes nothing.
pub fn apply(
    tx: &StateTx,
    index: usize,
    event: Event,
    f: impl FnOnce(&mut ModelStatus),
) -> Result<Phase, Illegal> {
    let (from, name) = {
        let s = tx.borrow();
        let m = &s.models[index];
        (m.state, m.name.clone())
    };
    match next(from, event) {
        Some(to) => {
            set_phase(tx, index, to, f);
            tracing::debug!(model = %name, "{} → {} ({})", from.as_str(), to.as_str(), event.as_str());
            Ok(to)
        }
        None => {
            tracing::error!(
                model = %name,
                "bug: event {:?} in phase {} is not a transition of the state machine; ignored",
                event.as_str(),
                from.as_str()
            );
            Err(Illegal { from, event })
        }
    }
}

/// The table as Markdown, for the README.
pub fn markdown() -> String {
    let mut out = String::from("| from | event | to |\n|---|---|---|\n");
    for (from, event, to) in TABLE {
        out.push_str(&format!(
            "| `{}` | {} | `{}` |\n",
            from.as_str(),
            event.as_str(),
            to.as_str()
        ));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{BTreeSet, VecDeque};

    const EVENTS: [Event; 10] = [
        Queue, Start, Healthy, Crash, GiveUp, Stop, Halt, Unload, Sleep, Wake,
    ];

    #[test]
    fn the_table_is_a_function() {
        let mut seen = BTreeSet::new();
        for (from, event, _) in TABLE {
            assert!(
                seen.insert((from.as_str(), event.as_str())),
                "{from:?} {event:?} twice"
            );
        }
    }

    #[test]
    fn every_phase_is_reachable_and_every_phase_but_the_resting_ones_can_stop() {
        // From the first phases (starting, waiting, unloaded), breadth first.
        let mut reached: BTreeSet<&str> = BTreeSet::new();
        let mut todo: VecDeque<Phase> = [Starting, Waiting, Unloaded].into();
        while let Some(p) = todo.pop_front() {
            if !reached.insert(p.as_str()) {
                continue;
            }
            for e in EVENTS {
                if let Some(to) = next(p, e) {
                    todo.push_back(to);
                }
            }
        }
        let all: BTreeSet<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(reached, all);
        // Anything with an engine (or about to have one) can be stopped; anything can be
        // started again, except a model that is on its way up already.
        for p in [Waiting, Starting, Ready, Restarting, Sleeping, Waking] {
            assert!(
                next(p, Stop).is_some() || next(p, Halt).is_some(),
                "{p:?} cannot stop"
            );
        }
        for p in [Restarting, Failed, Stopping, Stopped, Unloaded, Waiting] {
            assert_eq!(next(p, Start), Some(Starting), "{p:?} cannot start");
        }
    }

    #[test]
    fn requests_are_served_only_after_healthy() {
        for (_, event, to) in TABLE {
            if *to == Ready {
                assert_eq!(*event, Healthy);
            }
        }
        assert_eq!(
            next(Sleeping, Healthy),
            None,
            "a sleeping engine is woken first"
        );
        assert_eq!(next(Unloaded, Healthy), None);
    }

    #[tokio::test]
    async fn an_illegal_event_changes_nothing() {
        let plan_model = crate::state::ModelStatus {
            state: Ready,
            ..test_status()
        };
        let (tx, _rx) = tokio::sync::watch::channel(crate::state::Snapshot {
            stopping: false,
            models: vec![plan_model],
            table: Default::default(),
        });
        assert_eq!(
            apply(&tx, 0, Wake, |m| m.pid = Some(1)),
            Err(Illegal {
                from: Ready,
                event: Wake
            })
        );
        assert_eq!(tx.borrow().models[0].pid, None);
        assert_eq!(apply(&tx, 0, Sleep, |m| m.pid = Some(2)), Ok(Sleeping));
        assert_eq!(tx.borrow().models[0].pid, Some(2));
    }

    pub(crate) fn test_status() -> crate::state::ModelStatus {
        crate::state::ModelStatus {
            name: "m".into(),
            state: Starting,
            pid: None,
            port: 0,
            gpus: Vec::new(),
            restarts: 0,
            last_exit: None,
            since: std::time::SystemTime::UNIX_EPOCH,
            last_log: None,
            engine_models: None,
            gpu_share: None,
            start_after: Vec::new(),
            load: Default::default(),
            unload: Default::default(),
            takes_turns: false,
            served_names: vec!["m".into()],
            adapters: Vec::new(),
            runtime_adapters: Vec::new(),
            predict_route: "/v1/completions".into(),
            metrics_path: Some("/metrics".into()),
            request_model: None,
            uuid_request_ids: false,
            engine_authorization: None,
            max_concurrency: None,
            max_queue: 0,
            retired: false,
            usage: crate::usage::Usage::new(),
            loads: Default::default(),
        }
    }
}
