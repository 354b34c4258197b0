//! What the supervisor's controller tells one engine task. The controller decides (room on
//! the GPUs, idle time, an operator's call, a reload); the engine task carries it out and
//! reports through the state machine.

use tokio::sync::oneshot;

use super::calls::CallError;
use crate::state::{Phase, RuntimeAdapter};

/// Where a stopped engine rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rest {
    /// Stopped by an operator: `stopped` until started again.
    Stopped,
    /// Unloaded (an on-demand model, idle or making room): its next request loads it.
    Unloaded,
    /// Removed or replaced by a reload: the task ends.
    Retired,
}

/// Why an adapter call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterError {
    /// The engine does not run (or is not ready) now.
    NotRunning(Phase),
    /// The engine refused or did not answer.
    Engine(CallError),
    /// No adapter of that name was loaded at run time.
    Unknown,
}

impl std::fmt::Display for AdapterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterError::NotRunning(p) => write!(
                f,
                "its engine is {}; adapters are loaded into a ready engine",
                p.as_str()
            ),
            AdapterError::Engine(e) => write!(f, "the engine did not load it: {e}"),
            AdapterError::Unknown => f.write_str("no such adapter was loaded at run time"),
        }
    }
}

/// The answer to an adapter order.
pub type AdapterReply = oneshot::Sender<Result<(), AdapterError>>;

/// One order to an engine task.
#[derive(Debug)]
pub enum Order {
    /// Start the engine (there is room for it now).
    Start,
    /// Wake the sleeping engine (there is room for it now).
    Wake,
    /// Put the ready engine to sleep (the controller has drained it: nothing in flight).
    Sleep,
    /// Stop the engine after its requests in flight (within the grace), and rest.
    Stop(Rest),
    /// Stop the engine after its requests in flight, then start it again at once.
    Restart,
    /// Load a LoRA adapter into the ready engine; it is loaded again after each restart.
    AddAdapter(RuntimeAdapter, AdapterReply),
    /// Unload a LoRA adapter loaded at run time.
    RemoveAdapter(String, AdapterReply),
}
