//! The launch plan: configuration and GPUs joined into plain data, one [`ModelLaunch`] per
//! model. `modelmux plan` prints exactly this; `serve` hands it to the supervisor and the
//! front.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};

use serde::Serialize;
use thiserror::Error;

use crate::config::{Arg, Config, ConfigError, ConfigSource, Settings};
use crate::engines::{self, Engine, ModelsList};
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
    /// The engine profile (`vllm`, `sglang`, `tgi`, `llamacpp`, `llamacpp-python`).
    pub engine: Engine,
    /// The path the readiness and liveness probes `GET` on the engine (`/health`; for
    /// llama-cpp-python, which has none, `/v1/models`).
    pub health_path: String,
    /// The engine's Prometheus path, if it has one.
    pub metrics_path: Option<String>,
    /// The prefix of the engine's own metric series (`vllm:`, `sglang:`, `tgi_`,
    /// `llamacpp:`), if it has metrics.
    pub metrics_prefix: Option<String>,
    /// What the engine's `GET /v1/models` lists (whether it carries the served names).
    pub models_list: ModelsList,
    /// The `"model"` value the engine wants in requests for the base model when it is not
    /// the served name (TGI: `"tgi"`; any other name is an adapter id there).
    pub request_model: Option<String>,
    /// The engine refuses an `X-Request-Id` that is not a UUID (llama-cpp-python answers
    /// 400): the front must send it a UUID.
    pub uuid_request_ids: bool,
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
    let wanted: usize = config.models.iter().map(ports_needed).sum();
    let ports = free_ports(wanted, &[s.port, s.health_port])?;
    build_with_ports(config, inv, &ports)
}

/// Loopback ports one model's engine needs: its own, plus those its profile gives each
/// instance (TGI's Prometheus and torch master ports).
pub fn ports_needed(m: &crate::config::ModelSpec) -> usize {
    1 + engines::extra_ports(m.engine, &m.args)
}

/// Like [`build`] with the engine ports given (tests use fixed ones): each model takes
/// [`ports_needed`] of them, in order, its own first.
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
    let mut next_port = 0;
    let mut model_ports = Vec::with_capacity(config.models.len());
    for m in &config.models {
        let n = ports_needed(m);
        let Some(taken) = ports.get(next_port..next_port + n) else {
            return Err(PlanError::Ports(format!(
                "{} ports given for {} models",
                ports.len(),
                config.models.len()
            )));
        };
        model_ports.push(taken);
        next_port += n;
    }
    let models = config
        .models
        .iter()
        .zip(sets)
        .zip(model_ports)
        .map(|((m, set), taken)| {
            let (port, extra) = (taken[0], &taken[1..]);
            let gpus: Vec<String> = set
                .iter()
                .map(|&g| inv.gpus[g].visible_id.clone())
                .collect();
            let mut argv = m.engine_cmd.clone();
            let own = engines::launch_args(m.engine, &m.resolved_path, port, extra, &m.args);
            argv.extend(own.iter().flat_map(Arg::tokens));
            argv.extend(m.args.tokens());
            let profile = m.engine.profile();
            let mut env = BTreeMap::new();
            env.insert("CUDA_VISIBLE_DEVICES".to_string(), gpus.join(","));
            env.insert("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string());
            env.extend(m.env.clone());
            env.extend(engines::launch_env(m.engine, port));
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
                engine: m.engine,
                health_path: profile.health_path.to_string(),
                metrics_path: profile.metrics.map(|x| x.path.to_string()),
                metrics_prefix: profile.metrics.map(|x| x.prefix.to_string()),
                models_list: profile.models_list,
                request_model: profile.request_model.map(str::to_string),
                uuid_request_ids: profile.uuid_request_ids,
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
            writeln!(
                f,
                "  engine:       {} ({})",
                m.engine,
                m.engine.profile().server
            )?;
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
            writeln!(f, "  health:       {}", m.health_path)?;
            writeln!(f, "  command:      {}", shell_line(&m.argv))?;
            for (k, v) in &m.env {
                writeln!(f, "  env:          {k}={v}")?;
            }
        }
        Ok(())
    }
}
