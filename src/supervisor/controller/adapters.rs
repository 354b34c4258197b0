//! LoRA adapters loaded and unloaded at run time: the checks before an engine is asked, and
//! the engine's answer turned into a command error.

use tokio::sync::oneshot;

use crate::state::{Phase, RuntimeAdapter};
use crate::supervisor::commands::{CommandError, Request};
use crate::supervisor::orders::{AdapterError, Order};

use super::Controller;

impl Controller {
    pub(super) fn add_adapter(
        &mut self,
        model: &str,
        mut adapter: RuntimeAdapter,
        reply: oneshot::Sender<Result<(), CommandError>>,
    ) {
        let index = match self.find(model) {
            Ok(i) => i,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let checked = (|| {
            let launch = &self.slots[index].launch;
            if launch.engine != crate::engines::Engine::Vllm {
                return Err(CommandError::Invalid(format!(
                    "model {model} runs engine {}; adapters are loaded at run time through vLLM's runtime LoRA API only: list them in fine_tune_weights and reload",
                    launch.engine.profile().name
                )));
            }
            if !launch.runtime_lora {
                return Err(CommandError::Invalid(format!(
                    "model {model} was started without --enable-lora, so its engine cannot load adapters; add --enable-lora (and --max-lora-rank if the adapters need it) to its params and reload"
                )));
            }
            let name = adapter.name.trim();
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err(CommandError::Invalid(
                    "the adapter's \"name\" must be 1 to 256 characters without control characters"
                        .into(),
                ));
            }
            if self.snapshot().table.contains(name) || self.reserved.contains(name) {
                return Err(CommandError::Conflict(format!(
                    "the name {name:?} is already served; unload that adapter first or pick another name"
                )));
            }
            let mut warnings = Vec::new();
            let path = crate::config::resolve_path(
                &adapter.path,
                &self.settings.model_root,
                "path",
                &mut warnings,
            )
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
            Ok(RuntimeAdapter {
                name: name.to_string(),
                path,
            })
        })();
        adapter = match checked {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.reserved.insert(adapter.name.clone());
        let (tx, rx) = oneshot::channel();
        let name = adapter.name.clone();
        self.order(index, Order::AddAdapter(adapter, tx));
        let done = self.to_self.clone();
        tokio::spawn(async move {
            let result = rx
                .await
                .unwrap_or(Err(AdapterError::NotRunning(Phase::Stopping)));
            let _ = done.send(Request::AdapterDone(name));
            let _ = reply.send(result.map_err(adapter_error));
        });
    }

    pub(super) fn remove_adapter(
        &mut self,
        model: &str,
        adapter: &str,
        reply: oneshot::Sender<Result<(), CommandError>>,
    ) {
        let index = match self.find(model) {
            Ok(i) => i,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        {
            let s = self.snapshot();
            let m = &s.models[index];
            if m.adapters.iter().any(|a| a == adapter) {
                let _ = reply.send(Err(CommandError::Conflict(format!(
                    "adapter {adapter:?} is part of model {model}'s configuration (fine_tune_weights or --lora-modules); remove it there and reload"
                ))));
                return;
            }
            if !m.runtime_adapters.iter().any(|a| a.name == adapter) {
                let _ = reply.send(Err(CommandError::UnknownAdapter(format!(
                    "model {model} has no adapter {adapter:?} loaded at run time"
                ))));
                return;
            }
        }
        let (tx, rx) = oneshot::channel();
        self.order(index, Order::RemoveAdapter(adapter.to_string(), tx));
        tokio::spawn(async move {
            let result = rx
                .await
                .unwrap_or(Err(AdapterError::NotRunning(Phase::Stopping)));
            let _ = reply.send(result.map_err(adapter_error));
        });
    }
}

/// An adapter failure as a command error.
fn adapter_error(e: AdapterError) -> CommandError {
    match e {
        AdapterError::NotRunning(_) => CommandError::Conflict(format!("cannot now: {e}")),
        AdapterError::Unknown => CommandError::UnknownAdapter(e.to_string()),
        AdapterError::Engine(crate::supervisor::calls::CallError::Refused { status, message })
            if (400..500).contains(&status) =>
        {
            CommandError::Invalid(format!("the engine refused it: {message}"))
        }
        AdapterError::Engine(e) => CommandError::Engine(format!("the engine failed: {e}")),
    }
}
