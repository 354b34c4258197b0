//! The command line: `serve` (default), `plan`, `gpus`. Every flag mirrors an environment
//! variable (see [`crate::config::RawConfig`]).

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, RawConfig};
use crate::gpu::{self, NvmlDiscovery};
use crate::resolve::{EXIT_CONFIG, load_plan};
use crate::{observability, plan, serve};

/// modelmux: serve several LLMs from one GPU machine behind one OpenAI-compatible front.
#[derive(Debug, Parser)]
#[command(name = "modelmux", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Every configuration input.
    #[command(flatten)]
    pub raw: RawConfig,
}

/// Shown at the end of `--help`.
const EXAMPLES: &str = "\
Every option can also be set through the environment variable shown with it.

Examples:
  # what `serve` would run (GPUs, ports, command lines), without starting anything
  modelmux --config models.json plan
  MULTI_MODEL_CONFIG=\"$(cat models.json)\" modelmux plan --json

  # serve, on GPUs 0-3 only
  modelmux --config models.json --gpus 0,1,2,3

  # one model (OCI's single-model variables)
  MODEL=/models/llama PARAMS='--served-model-name llama --max-model-len 8192' modelmux

  # without a GPU, with the fake engine (as `make demo` does)
  modelmux --config models.json --gpus none --engine-cmd target/release/mock-vllm

  # the GPUs modelmux sees
  modelmux gpus

models.json: {\"models\": [{\"model_path\": \"llama\", \"params\": \"--served-model-name llama\"}]}
Once serving: /health, /metrics, /v1/models, and a status page at / in a browser.";

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

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    if let Err(e) = check_utf8() {
        eprintln!("modelmux: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
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

/// Names the variable or flag whose value is not UTF-8 (clap's own message names none).
fn check_utf8() -> Result<(), config::ConfigError> {
    let not_utf8 =
        |name: &str, value: &str| config::ConfigError::var(name, value, "is not valid UTF-8 text");
    for arg in Cli::command().get_arguments() {
        if let Some(var) = arg.get_env()
            && let Some(value) = std::env::var_os(var)
            && value.to_str().is_none()
        {
            return Err(not_utf8(&var.to_string_lossy(), &value.to_string_lossy()));
        }
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    for (i, a) in args.iter().enumerate() {
        if a.to_str().is_some() {
            continue;
        }
        let text = a.to_string_lossy();
        if let Some((flag, value)) = text.split_once('=')
            && flag.starts_with("--")
        {
            return Err(not_utf8(flag, value));
        }
        let name = match i.checked_sub(1).and_then(|p| args[p].to_str()) {
            Some(flag) if flag.starts_with('-') => flag.to_string(),
            _ => format!("argument {}", i + 1),
        };
        return Err(not_utf8(&name, &text));
    }
    Ok(())
}

fn print_plan(raw: &RawConfig, json: bool) -> ExitCode {
    // `plan` refuses what `serve` would refuse, the engine program included.
    let checked = load_plan(raw).and_then(|(config, plan)| {
        serve::check_engine_programs(&config)?;
        Ok((config, plan))
    });
    match checked {
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
