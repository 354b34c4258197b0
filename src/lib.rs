//! modelmux: one entrypoint that serves several LLMs from one GPU machine.
//!
//! Data flows one way:
//!
//! ```text
//! environment / --config ─► config ─► gpu (inventory + allocation) ─► plan (LaunchPlan)
//!                                                                        │
//!                supervisor (spawn, reap, probe, restart, stop) ◄────────┤
//!                      │ publishes                                       ▼
//!                      └──────────► state (watch snapshot) ◄── reads ── front (proxy, health)
//! ```
//!
//! - [`config`]: raw inputs to validated settings and model specs; typed errors.
//! - [`gpu`]: which GPUs exist (NVML or `MODELMUX_GPUS`) and who gets which.
//! - [`plan`]: the launch plan, one [`plan::ModelLaunch`] per model.
//! - [`supervisor`]: engine processes: spawn, logs, readiness, restarts, shutdown, reaping.
//! - [`state`]: the snapshot of model states the front reads.
//! - [`front`]: the OpenAI-compatible HTTP front: one policy, two wires (a pass-through
//!   HTTP/1.1 wire for the common request, hyper for the rest).
//! - [`observability`]: logging and metrics.
//! - [`resolve`]: configuration, GPUs and plan, resolved the same way for `plan` and `serve`.
//! - [`serve`] and [`cli`]: the commands that tie it together.

pub mod cli;
pub mod config;
pub mod front;
pub mod gpu;
pub mod observability;
pub mod plan;
pub mod resolve;
pub mod serve;
pub mod state;
pub mod supervisor;
