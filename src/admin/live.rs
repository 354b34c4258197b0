//! The admin API's runtime in a running modelmux: the supervisor's [`Control`] for commands,
//! and the configuration read again for reloads (the `--config` file, else the environment
//! as modelmux started). SIGHUP uses the same reload.

use std::sync::Arc;

use super::{Runtime, reload};
use crate::config::Config;
use crate::gpu::Inventory;
use crate::state::Snapshot;
use crate::supervisor::{Accepted, Command, CommandError, Control, ReloadReport};

/// Reads the configuration and the GPUs again; the error is the configuration's.
pub type Loader = Arc<dyn Fn() -> Result<(Config, Inventory), String> + Send + Sync>;

/// The running modelmux, as the admin API sees it.
pub struct Live {
    control: Control,
    load: Loader,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Live {
    /// Over the supervisor's control, reading the configuration with `load`.
    pub fn new(control: Control, load: Loader) -> Self {
        Live {
            control,
            load,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The supervisor's control.
    pub fn control(&self) -> &Control {
        &self.control
    }
}

impl Runtime for Live {
    fn snapshot(&self) -> Snapshot {
        self.control.state().borrow().clone()
    }

    async fn command(&self, c: Command) -> Result<Accepted, CommandError> {
        self.control.command(c).await
    }

    async fn add_adapter(&self, model: &str, name: &str, path: &str) -> Result<(), CommandError> {
        self.control.add_adapter(model, name, path).await
    }

    async fn remove_adapter(&self, model: &str, adapter: &str) -> Result<(), CommandError> {
        self.control.remove_adapter(model, adapter).await
    }

    async fn reload(&self) -> Result<ReloadReport, CommandError> {
        let _one = self.reloading.lock().await;
        let (generation, launches) = self.control.launches().await?;
        let load = self.load.clone();
        // Reading the files (safetensors headers) is blocking work.
        let planned = tokio::task::spawn_blocking(move || {
            let (config, inv) = load()?;
            for w in &config.warnings {
                tracing::warn!("reload: {w}");
            }
            reload::diff(&launches, &config, &inv, generation)
        })
        .await
        .map_err(|e| CommandError::Invalid(format!("reload failed: {e}")))?;
        let plan = planned.map_err(|e| {
            tracing::error!("reload refused, nothing changed: {e}");
            CommandError::Invalid(format!("invalid configuration, nothing changed: {e}"))
        })?;
        self.control.apply(plan).await
    }
}

impl<T: Runtime> Runtime for Arc<T> {
    fn snapshot(&self) -> Snapshot {
        (**self).snapshot()
    }

    fn command(
        &self,
        c: Command,
    ) -> impl std::future::Future<Output = Result<Accepted, CommandError>> + Send {
        (**self).command(c)
    }

    fn add_adapter(
        &self,
        model: &str,
        name: &str,
        path: &str,
    ) -> impl std::future::Future<Output = Result<(), CommandError>> + Send {
        (**self).add_adapter(model, name, path)
    }

    fn remove_adapter(
        &self,
        model: &str,
        adapter: &str,
    ) -> impl std::future::Future<Output = Result<(), CommandError>> + Send {
        (**self).remove_adapter(model, adapter)
    }

    fn reload(
        &self,
    ) -> impl std::future::Future<Output = Result<ReloadReport, CommandError>> + Send {
        (**self).reload()
    }
}
