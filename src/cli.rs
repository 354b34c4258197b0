//! The command line: `serve` (default), `plan`, `gpus`. Every flag mirrors an environment
//! variable (see [`crate::config::RawConfig`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, RawConfig};
use crate::gpu::{self, NvmlDiscovery};
use crate::resolve::{EXIT_CONFIG, load_plan};
use crate::{observability, serve};

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

fn print_plan(raw: &RawConfig, json: bool) -> ExitCode {
    match load_plan(raw) {
        Ok((_, plan)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plan serialises")
                );
            } else {
                print!("{plan}");
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
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&inv).expect("inventory serialises")
        );
    } else {
        print!("{}", gpu::describe(&inv));
    }
    ExitCode::SUCCESS
}
