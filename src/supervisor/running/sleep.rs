//! Sleep and wake: the ready engine releases its GPU memory (weights kept in CPU memory)
//! and gets it back, through the engine's control endpoints. Apart because it is its own
//! small protocol of calls, probes and state changes.

use std::time::Duration;

use tokio::time::Instant;

use crate::supervisor::engine::EngineTask;
use crate::supervisor::machine::{self, Event};

impl EngineTask {
    /// Puts the ready engine to sleep (the controller drained it: requests that come
    /// meanwhile wait). It is `sleeping` once its memory is released, not before, so that
    /// nothing counts on that memory too early; then requests ask for a wake.
    pub(super) async fn put_to_sleep(&self, name: &str) -> Result<(), String> {
        let began = Instant::now();
        let key = self.api_key.clone();
        self.calls
            .sleep(
                self.launch.port,
                key.as_deref(),
                self.settings.startup_timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.usage().undrain();
        let _ = machine::apply(&self.state, self.index, Event::Sleep, |_| {});
        self.stats().unloaded();
        tracing::info!(model = %name, "engine asleep after {:.2} s (idle; weights in CPU memory)", began.elapsed().as_secs_f64());
        Ok(())
    }

    /// Wakes the sleeping engine and waits until it answers `/health`.
    pub(super) async fn wake(&self, name: &str) -> Result<(), String> {
        let began = Instant::now();
        let _ = machine::apply(&self.state, self.index, Event::Wake, |_| {});
        let key = self.api_key.clone();
        let timeout = self.settings.startup_timeout;
        self.calls
            .wake_up(self.launch.port, key.as_deref(), timeout)
            .await
            .map_err(|e| format!("did not wake: {e}"))?;
        let deadline = began + timeout;
        while !self
            .prober
            .healthy(
                self.launch.port,
                &self.launch.health_path,
                Duration::from_secs(1),
            )
            .await
        {
            if Instant::now() >= deadline {
                return Err(format!(
                    "did not answer /health within {:.0} s of waking",
                    timeout.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = machine::apply(&self.state, self.index, Event::Healthy, |_| {});
        let took = began.elapsed();
        self.stats().loaded(took);
        tracing::info!(model = %name, "engine awake after {:.3} s", took.as_secs_f64());
        Ok(())
    }
}
