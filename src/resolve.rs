//! Configuration, GPUs and the launch plan, resolved exactly the same way for `plan` and
//! `serve`: the one place that joins [`crate::config`], [`crate::gpu`] and [`crate::plan`].

use crate::config::{self, RawConfig};
use crate::gpu::{self, NvmlDiscovery};
use crate::plan;

/// Exit code for an invalid configuration (nothing was started).
pub const EXIT_CONFIG: u8 = 2;

/// Loads the configuration and builds the plan, logging the source and the warnings.
pub fn load_plan(raw: &RawConfig) -> Result<(config::Config, plan::LaunchPlan), plan::PlanError> {
    let config = config::load(raw)?;
    tracing::info!(source = %config.source, models = config.models.len(), "configuration read");
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let inv = gpu::inventory(config.settings.gpus.as_ref(), &NvmlDiscovery);
    if let Some(note) = &inv.note {
        tracing::info!("GPU discovery: {note}");
    }
    let plan = plan::build(&config, &inv)?;
    Ok((config, plan))
}
