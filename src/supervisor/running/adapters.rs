//! LoRA adapters at run time: loading and unloading them in the ready engine, loading them
//! again after a start, and the engine's `/v1/models` entries that list them. Apart because
//! it is the one part of a run that changes what the engine serves.

use std::sync::Arc;
use std::time::Duration;

use crate::state::RuntimeAdapter;
use crate::supervisor::calls::CallError;
use crate::supervisor::engine::EngineTask;
use crate::supervisor::orders::AdapterError;

/// How long an adapter load or unload may take.
const ADAPTER_CALL: Duration = Duration::from_secs(300);

impl EngineTask {
    /// The engine's `/v1/models` entries, with entries for the served names the engine
    /// does not list itself (SGLang and llama.cpp list the first, TGI its model id) copied
    /// from its base-model entry.
    pub(super) async fn engine_models(&self) -> Option<Vec<serde_json::Value>> {
        let list = self
            .prober
            .models(
                self.launch.port,
                self.api_key.as_deref(),
                Duration::from_secs(5),
            )
            .await?;
        let l = &self.launch;
        let adapters: Vec<String> = {
            let s = self.state.borrow();
            let m = &s.models[self.index];
            l.adapters
                .iter()
                .cloned()
                .chain(m.runtime_adapters.iter().map(|a| a.name.clone()))
                .collect()
        };
        Some(crate::engines::model_entries(
            &l.served_names,
            &l.model_path,
            &adapters,
            list,
        ))
    }

    /// Loads an adapter into the ready engine; on success it routes there from now on.
    pub(super) async fn add_adapter(&self, adapter: RuntimeAdapter) -> Result<(), AdapterError> {
        let key = self.api_key.clone();
        self.calls
            .load_adapter(
                self.launch.port,
                key.as_deref(),
                &adapter.name,
                &adapter.path,
                ADAPTER_CALL,
            )
            .await
            .map_err(AdapterError::Engine)?;
        tracing::info!(model = %self.launch.name, adapter = %adapter.name, path = %adapter.path, "LoRA adapter loaded");
        let entries = self.engine_models().await;
        self.state.send_modify(|s| {
            let m = &mut s.models[self.index];
            m.runtime_adapters.retain(|a| a.name != adapter.name);
            m.runtime_adapters.push(adapter);
            if let Some(entries) = entries {
                m.engine_models = Some(Arc::new(entries));
            }
            s.rebuild_table();
        });
        Ok(())
    }

    /// Unloads a run-time adapter from the ready engine. One the engine no longer knows is
    /// forgotten all the same.
    pub(super) async fn remove_adapter(&self, name: &str) -> Result<(), AdapterError> {
        let known = self.state.borrow().models[self.index]
            .runtime_adapters
            .iter()
            .any(|a| a.name == name);
        if !known {
            return Err(AdapterError::Unknown);
        }
        let key = self.api_key.clone();
        match self
            .calls
            .unload_adapter(self.launch.port, key.as_deref(), name, ADAPTER_CALL)
            .await
        {
            Ok(()) | Err(CallError::Refused { status: 404, .. }) => {}
            Err(e) => return Err(AdapterError::Engine(e)),
        }
        tracing::info!(model = %self.launch.name, adapter = %name, "LoRA adapter unloaded");
        self.forget_adapter(name)
    }

    /// After a start: loads the run-time adapters again; one that fails is dropped (said
    /// in the log), the others stay.
    pub(super) async fn reload_adapters(&self) {
        let adapters = self.state.borrow().models[self.index]
            .runtime_adapters
            .clone();
        let key = self.api_key.clone();
        for a in adapters {
            let loaded = self
                .calls
                .load_adapter(
                    self.launch.port,
                    key.as_deref(),
                    &a.name,
                    &a.path,
                    ADAPTER_CALL,
                )
                .await;
            match loaded {
                Ok(()) => {
                    tracing::info!(model = %self.launch.name, adapter = %a.name, "LoRA adapter loaded again after the engine started");
                }
                Err(e) => {
                    tracing::error!(model = %self.launch.name, adapter = %a.name, path = %a.path, "could not load the run-time LoRA adapter again ({e}); it is no longer served");
                    let _ = self.forget_adapter(&a.name);
                }
            }
        }
    }
}
