//! A model's life cycle: the phases it is published in. Apart because nearly every module
//! names a phase, and the list reads best alone; the transitions between phases live in the
//! supervisor's state machine.

use serde::Serialize;

/// A model's life cycle. Phases change only through the supervisor's state machine
/// ([`crate::supervisor::machine`]), which holds the table of allowed transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not started yet: it waits for room on its GPU, or for the models that start before it
    /// on a shared GPU to be ready (SPEC §3.1); requests get 503 (or wait, on demand).
    Waiting,
    /// The engine is loading; requests get 503 (or wait, on demand).
    Starting,
    /// `/health` answered 200; requests are routed.
    Ready,
    /// The engine died or hung and will be started again after a back-off.
    Restarting,
    /// It kept failing; it will not be started again (unless an operator starts it).
    Failed,
    /// Its engine is being stopped (shutdown, an operator's stop or restart, an unload);
    /// requests in flight finish first.
    Stopping,
    /// Stopped by an operator (`POST /admin/models/{name}/stop`); requests get 503.
    Stopped,
    /// An on-demand model without an engine: its next request starts one.
    Unloaded,
    /// An on-demand model whose engine sleeps (vLLM's sleep mode): its next request wakes it.
    Sleeping,
    /// Waking from sleep.
    Waking,
}

impl Phase {
    /// Every phase, for metrics.
    pub const ALL: [Phase; 10] = [
        Phase::Waiting,
        Phase::Starting,
        Phase::Ready,
        Phase::Restarting,
        Phase::Failed,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Unloaded,
        Phase::Sleeping,
        Phase::Waking,
    ];

    /// The lowercase name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Restarting => "restarting",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Unloaded => "unloaded",
            Phase::Sleeping => "sleeping",
            Phase::Waking => "waking",
        }
    }
}
