//! The command line: `serve` (default), `plan`, `gpus`. Every flag mirrors an environment
//! variable (see [`crate::config::RawConfig`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, RawConfig};
use crate::gpu::{self, NvmlDiscovery};
use crate::{observability, plan, serve};

/// modelmux: serve several LLMs from one GPU machine behind one OpenAI-compatible front.
#[derive(Debug, Parser)]
#[command(name = "modelmux", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Every configuration input.
    #[command(flatten)]
    pub raw: RawConfig,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Plan, start and supervise the engines, and serve the front (the default).
    Serve,
    /// Print the launch plan that `serve` would carry out, and exit.
    Plan {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the GPUs modelmux sees.
    Gpus {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code for an invalid configuration (nothing was started).
pub const EXIT_CONFIG: u8 = 2;

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match config::log_format(&cli.raw) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("modelmux: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    observability::init(format);
    let code = match cli.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => serve::main(&cli.raw),
        Command::Plan { json } => print_plan(&cli.raw, json),
        Command::Gpus { json } => print_gpus(&cli.raw, json),
    };
    observability::sink::flush();
    code
}

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

fn print_plan(raw: &RawConfig, json: bool) -> ExitCode {
    match load_plan(raw) {
        Ok((_, plan)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plan serialises")
                );
            } else {
                // One string, so that stdout takes it in one write rather than line by line.
                let text = plan.to_string();
                print!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn print_gpus(raw: &RawConfig, json: bool) -> ExitCode {
    let over = match raw.gpus.as_deref().map(gpu::GpuOverride::parse).transpose() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let inv = gpu::inventory(over.as_ref(), &NvmlDiscovery);
    let plan = planned_use(raw, &inv);
    if json {
        let mut doc = serde_json::to_value(&inv).expect("inventory serialises");
        doc["plan"] = match &plan {
            Some(p) => serde_json::json!({"gpu_memory_limit": p.gpu_memory_limit, "gpus": p.gpus}),
            None => serde_json::Value::Null,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("inventory serialises")
        );
    } else {
        print!("{}", gpu::describe(&inv));
        if let Some(p) = plan.filter(|p| !p.gpus.is_empty()) {
            print!(
                "\nas planned for the configured models:\n{}",
                crate::placement::render_table(&p.gpus, p.gpu_memory_limit)
            );
        }
    }
    ExitCode::SUCCESS
}

/// The plan on these GPUs when models are configured, so that `gpus` shows each GPU's
/// models and shares. A configuration that does not plan is reported, not fatal.
fn planned_use(raw: &RawConfig, inv: &gpu::Inventory) -> Option<plan::LaunchPlan> {
    let config = match config::load(raw) {
        Ok(c) => c,
        Err(config::ConfigError::NoSource) => return None,
        Err(e) => {
            tracing::warn!("no plan to show: {e}");
            return None;
        }
    };
    match plan::build(&config, inv) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("no plan to show: {e}");
            None
        }
    }
}
