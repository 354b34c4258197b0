//! The supervisor's interface for the rest of modelmux: [`Control`], a cheap handle that
//! sends commands to the controller task and gets their answers. The admin API and SIGHUP
//! use it for operators' commands and reloads; the front for on-demand loads.

use tokio::sync::{mpsc, oneshot};

use crate::plan::ModelLaunch;
use crate::state::{Phase, RuntimeAdapter, StateRx};

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// No model of that name (404).
    UnknownModel {
        /// The name asked for.
        name: String,
        /// Every model's name, for the message.
        available: String,
    },
    /// No adapter of that name to remove (404).
    UnknownAdapter(String),
    /// It conflicts with the state of things: a name in use, a model that is not running
    /// (409).
    Conflict(String),
    /// The request itself is wrong: a bad path or name, a configuration that is invalid or
    /// does not fit (400).
    Invalid(String),
    /// The engine refused or did not answer (502).
    Engine(String),
    /// modelmux is shutting down (503).
    ShuttingDown,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::UnknownModel { name, available } => {
                write!(f, "no model {name:?}; models: {available}")
            }
            CommandError::UnknownAdapter(m) => f.write_str(m),
            CommandError::Conflict(m) | CommandError::Invalid(m) | CommandError::Engine(m) => {
                f.write_str(m)
            }
            CommandError::ShuttingDown => f.write_str("modelmux is shutting down"),
        }
    }
}

/// A command that was accepted and is under way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// The model.
    pub model: String,
    /// Its state when the command was accepted.
    pub state: Phase,
}

/// An operator's command for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Stop the engine after its requests in flight, start it again.
    Restart(String),
    /// Stop the engine after its requests in flight and keep it stopped.
    Stop(String),
    /// Start a stopped (or failed) model; load an on-demand one.
    Start(String),
}

/// What a reload changes, computed against the launches of one generation.
#[derive(Debug, Clone, Default)]
pub struct ReloadPlan {
    /// The generation of the launches this was computed from.
    pub based_on: u64,
    /// Models that stay as they are.
    pub unchanged: Vec<String>,
    /// Models that are no longer configured: stopped after their requests in flight.
    pub stop: Vec<String>,
    /// Models whose configuration changed: their new launches.
    pub restart: Vec<ModelLaunch>,
    /// New models.
    pub start: Vec<ModelLaunch>,
}

/// What a reload did (SPEC §8).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// New models.
    pub started: Vec<String>,
    /// Models no longer configured.
    pub stopped: Vec<String>,
    /// Models whose configuration changed.
    pub restarted: Vec<String>,
    /// Models left alone.
    pub unchanged: Vec<String>,
}

type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// A message to the controller.
#[derive(Debug)]
pub(super) enum Request {
    /// A request waits for this on-demand model.
    Load(usize),
    /// An operator's command.
    Command(Command, Reply<Accepted>),
    /// Load an adapter into a model's engine.
    AddAdapter {
        model: String,
        adapter: RuntimeAdapter,
        reply: Reply<()>,
    },
    /// Unload a run-time adapter.
    RemoveAdapter {
        model: String,
        adapter: String,
        reply: Reply<()>,
    },
    /// An adapter call is over: its name is no longer reserved.
    AdapterDone(String),
    /// The served models' launches and their generation.
    Launches(oneshot::Sender<(u64, Vec<ModelLaunch>)>),
    /// Apply a reload.
    Apply(Box<ReloadPlan>, Reply<ReloadReport>),
}

/// A handle on the supervisor.
#[derive(Clone)]
pub struct Control {
    pub(super) tx: mpsc::UnboundedSender<Request>,
    pub(super) state: StateRx,
}

impl Control {
    /// A control that no supervisor listens to (front tests without processes).
    #[cfg(test)]
    pub(crate) fn detached(state: StateRx) -> Control {
        let (tx, _rx) = mpsc::unbounded_channel();
        Control { tx, state }
    }

    /// The published state.
    pub fn state(&self) -> &StateRx {
        &self.state
    }

    /// Asks for an on-demand model to be loaded (a request waits for it). Returns at once;
    /// watch the state for the model to turn ready.
    pub fn load(&self, index: usize) {
        let _ = self.tx.send(Request::Load(index));
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| CommandError::ShuttingDown)?;
        answer.await.unwrap_or(Err(CommandError::ShuttingDown))
    }

    /// Carries out an operator's command.
    pub async fn command(&self, command: Command) -> Result<Accepted, CommandError> {
        self.ask(|reply| Request::Command(command, reply)).await
    }

    /// Loads a LoRA adapter into a model's engine (its path resolved like `model_path`).
    pub async fn add_adapter(
        &self,
        model: &str,
        name: &str,
        path: &str,
    ) -> Result<(), CommandError> {
        let adapter = RuntimeAdapter {
            name: name.to_string(),
            path: path.to_string(),
        };
        self.ask(|reply| Request::AddAdapter {
            model: model.to_string(),
            adapter,
            reply,
        })
        .await
    }

    /// Unloads a run-time adapter.
    pub async fn remove_adapter(&self, model: &str, adapter: &str) -> Result<(), CommandError> {
        self.ask(|reply| Request::RemoveAdapter {
            model: model.to_string(),
            adapter: adapter.to_string(),
            reply,
        })
        .await
    }

    /// The served models' launches, and their generation (for [`ReloadPlan::based_on`]).
    pub async fn launches(&self) -> Result<(u64, Vec<ModelLaunch>), CommandError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Launches(reply))
            .map_err(|_| CommandError::ShuttingDown)?;
        answer.await.map_err(|_| CommandError::ShuttingDown)
    }

    /// Applies a reload.
    pub async fn apply(&self, plan: ReloadPlan) -> Result<ReloadReport, CommandError> {
        self.ask(|reply| Request::Apply(Box::new(plan), reply))
            .await
    }
}
