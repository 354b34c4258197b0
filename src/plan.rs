//! The launch plan: configuration and GPUs joined into plain data, one [`ModelLaunch`] per
//! model. `modelmux plan` prints exactly this; `serve` hands it to the supervisor and the
//! front.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};

use serde::Serialize;
use thiserror::Error;

use crate::config::{Arg, Config, ConfigError, ConfigSource, Settings};
use crate::gpu::{AllocError, Demand, GpuSource, Inventory, allocate};

/// Everything that stops a plan from being made. All of them mean "invalid configuration".
#[derive(Debug, Error)]
pub enum PlanError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The GPUs cannot be shared out.
    #[error(transparent)]
    Gpu(#[from] AllocError),
    /// No free loopback port could be found for an engine.
    #[error("cannot find a free loopback port for the engines: {0}")]
    Ports(String),
}

/// How one model's engine is started and reached.
#[derive(Debug, Clone, Serialize)]
pub struct ModelLaunch {
    /// The model's name: its first served name. Logs, metrics and health use it.
    pub name: String,
    /// Every name the engine serves the base model under.
    pub served_names: Vec<String>,
    /// LoRA adapter names, routed to this engine.
    pub adapters: Vec<String>,
    /// The path (or Hugging Face id) given to `--model`.
    pub model_path: String,
    /// `model_task`, if configured.
    pub model_task: Option<String>,
    /// The GPUs' `CUDA_VISIBLE_DEVICES` ids (indices or UUIDs).
    pub gpus: Vec<String>,
    /// The engine's loopback port.
    pub port: u16,
    /// The full engine command line.
    pub argv: Vec<String>,
    /// The environment the engine gets on top of modelmux's own.
    pub env: BTreeMap<String, String>,
    /// Where `/predict` goes without a `route` header.
    pub predict_route: String,
    /// Requests in flight to this engine at once; `None`: no limit.
    pub max_concurrency: Option<u32>,
    /// Requests that may wait for a slot when `max_concurrency` is reached.
    pub max_queue: u32,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchPlan {
    /// Which input supplied the models.
    pub source: ConfigSource,
    /// Where the GPUs came from.
    pub gpu_source: GpuSource,
    /// The front's port.
    pub port: u16,
    /// The health listener's port.
    pub health_port: u16,
    /// One entry per model, in configuration order.
    pub models: Vec<ModelLaunch>,
}

/// Picks `n` distinct free loopback ports, none equal to `avoid`. The listeners are held
/// until all are chosen so that no port is handed out twice.
pub fn free_ports(n: usize, avoid: &[u16]) -> Result<Vec<u16>, PlanError> {
    let mut held = Vec::with_capacity(n);
    let mut tries = 0;
    while held.len() < n {
        tries += 1;
        if tries > n + 100 {
            return Err(PlanError::Ports(
                "the kernel keeps handing out excluded ports".into(),
            ));
        }
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| PlanError::Ports(e.to_string()))?;
        let port = l
            .local_addr()
            .map_err(|e| PlanError::Ports(e.to_string()))?
            .port();
        if !avoid.contains(&port) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| PlanError::Ports(e.to_string()))
        })
        .collect()
}

/// Joins a configuration and an inventory into a plan, picking engine ports.
pub fn build(config: &Config, inv: &Inventory) -> Result<LaunchPlan, PlanError> {
    let s = &config.settings;
    let ports = free_ports(config.models.len(), &[s.port, s.health_port])?;
    build_with_ports(config, inv, &ports)
}

/// Like [`build`] with the engine ports given (tests use fixed ones).
pub fn build_with_ports(
    config: &Config,
    inv: &Inventory,
    ports: &[u16],
) -> Result<LaunchPlan, PlanError> {
    let s: &Settings = &config.settings;
    let demands: Vec<Demand> = config
        .models
        .iter()
        .map(|m| Demand {
            name: m.served_names[0].clone(),
            gpus: if inv.disabled { 0 } else { m.gpu_demand },
        })
        .collect();
    let sets = allocate(&demands, inv)?;
    let models = config
        .models
        .iter()
        .zip(sets)
        .zip(ports)
        .map(|((m, set), &port)| {
            let gpus: Vec<String> = set
                .iter()
                .map(|&g| inv.gpus[g].visible_id.clone())
                .collect();
            let mut argv = s.engine_cmd.clone();
            let own = [
                Arg::new("--model", &[&m.resolved_path]),
                Arg::new("--host", &["127.0.0.1"]),
                Arg::new("--port", &[&port.to_string()]),
            ];
            argv.extend(own.iter().flat_map(Arg::tokens));
            argv.extend(m.args.tokens());
            let mut env = BTreeMap::new();
            env.insert("CUDA_VISIBLE_DEVICES".to_string(), gpus.join(","));
            env.insert("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string());
            env.extend(m.env.clone());
            let predict_route = if m.model_task.as_deref() == Some("text_embedding") {
                "/v1/embeddings".to_string()
            } else {
                s.predict_endpoint.clone()
            };
            ModelLaunch {
                name: m.served_names[0].clone(),
                served_names: m.served_names.clone(),
                adapters: m.adapters.iter().map(|a| a.name.clone()).collect(),
                model_path: m.resolved_path.clone(),
                model_task: m.model_task.clone(),
                gpus,
                port,
                argv,
                env,
                predict_route,
                max_concurrency: m.max_concurrency,
                max_queue: m.max_queue,
            }
        })
        .collect();
    Ok(LaunchPlan {
        source: config.source.clone(),
        gpu_source: inv.source.clone(),
        port: s.port,
        health_port: s.health_port,
        models,
    })
}

/// Shell-quotes a command line for display.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            shlex::try_quote(a)
                .map(|q| q.into_owned())
                .unwrap_or_else(|_| a.clone())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::fmt::Display for LaunchPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "models from {}; GPUs from {:?}",
            self.source, self.gpu_source
        )?;
        writeln!(
            f,
            "front on port {}, health on port {}",
            self.port, self.health_port
        )?;
        for m in &self.models {
            writeln!(f, "\nmodel {}", m.name)?;
            writeln!(f, "  served names: {}", m.served_names.join(", "))?;
            if !m.adapters.is_empty() {
                writeln!(f, "  adapters:     {}", m.adapters.join(", "))?;
            }
            writeln!(f, "  model path:   {}", m.model_path)?;
            let gpus = if m.gpus.is_empty() {
                "none".to_string()
            } else {
                m.gpus.join(",")
            };
            writeln!(f, "  GPUs:         {gpus}")?;
            writeln!(f, "  port:         127.0.0.1:{}", m.port)?;
            writeln!(f, "  predict:      {}", m.predict_route)?;
            if let Some(c) = m.max_concurrency {
                writeln!(f, "  concurrency:  {c} at once, {} may wait", m.max_queue)?;
            }
            writeln!(f, "  command:      {}", shell_line(&m.argv))?;
            for (k, v) in &m.env {
                writeln!(f, "  env:          {k}={v}")?;
            }
        }
        Ok(())
    }
}
