//! modelmux: one entrypoint that serves several LLMs from one GPU machine.
//!
//! Plans flow one way, into the supervisor; at run time the front, on-demand admission and
//! the admin API send it commands, and everyone reads the state it publishes:
//!
//! ```text
//! environment / --config ─► config ─┬─► gpu (inventory, allocation, shares) ─┬─► plan (LaunchPlan)
//!     engines (profiles) ──────────►├─► weights (memory estimate from files) ┤        │
//!                                   └─► cpus (cores of CPU engines) ─────────┘        │
//!                                                                                    │
//!   supervisor (guardians, spawn, reap, probe, restart, stop, loads) ◄───────────────┤
//!       │ publishes                   ▲ commands (loads, operators', reloads)        ▼
//!       └──► state (watch snapshot) ◄─┼── reads ── front (one policy, two wires, health)
//!                                     ├── demand (on-demand loads; usage leases)
//!                                     └── admin (API, reload, SIGHUP)
//! ```
//!
//! - [`config`]: raw inputs to validated settings and model specs; typed errors.
//! - [`engines`]: one profile per inference server (vLLM, SGLang, TGI, llama.cpp,
//!   llama-cpp-python): how its command line, health path, metrics and memory flags are
//!   spelled. Nothing else knows engine flags.
//! - [`gpu`]: which GPUs exist (NVML or `MODELMUX_GPUS`), who gets which, and what share of
//!   a shared GPU; the free-memory check at start.
//! - [`cpus`]: the cores of CPU engines (`MODELMUX_GPUS=none`).
//! - [`weights`]: a model's GPU memory need, from its safetensors headers and config.json.
//! - [`placement`]: estimates and GPUs joined: shares, start order, the per-GPU table.
//! - [`plan`]: the launch plan, one [`plan::ModelLaunch`] per model.
//! - [`supervisor`]: engine processes under guardians: spawn, logs, readiness, restarts,
//!   hung engines, on-demand loads and unloads, operators' commands, shutdown, reaping.
//! - [`state`]: the snapshot of model states and the routing table the front reads.
//! - [`demand`]: a request's admission to its model: at once, or after an on-demand load.
//! - [`usage`]: requests in flight per model (leases), which unloads and stops wait for.
//! - [`front`]: the OpenAI-compatible HTTP front: one policy, two wires (a pass-through
//!   HTTP/1.1 wire for the common request, hyper for the rest).
//! - [`observability`]: logging and metrics.
//! - [`admin`]: the admin API and reloads (SIGHUP too), as supervisor commands.
//! - [`resolve`]: configuration, GPUs and plan, resolved the same way for `plan` and `serve`.
//! - [`serve`] and [`cli`]: the commands that tie it together.

pub mod admin;
pub mod cli;
pub mod config;
pub mod cpus;
pub mod demand;
pub mod engines;
pub mod front;
pub mod gpu;
pub mod observability;
pub mod placement;
pub mod plan;
pub mod resolve;
pub mod serve;
pub mod state;
pub mod supervisor;
pub mod usage;
pub mod weights;
