//! The launch plan: configuration and GPUs joined into plain data, one [`ModelLaunch`] per
//! model. `modelmux plan` prints exactly this; `serve` hands it to the supervisor and the
//! front.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

use crate::config::{
    Arg, Config, ConfigError, ConfigSource, LoadMode, ModelSpec, Settings, UnloadMode,
};
use crate::gpu::{GpuError, GpuSource, GpuUse, Inventory};
use crate::placement::{self, ModelPlacement, PlacementError};
use crate::weights::MemoryEstimate;

/// Everything that stops a plan from being made. All of them mean "invalid configuration".
#[derive(Debug, Error)]
pub enum PlanError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The GPUs cannot be shared out, or the models do not fit in their memory.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A model's files cannot be sized.
    #[error(transparent)]
    Files(#[from] placement::ModelFilesError),
    /// The engine ports would run past 65535.
    #[error("{0}")]
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
    /// The `--gpu-memory-utilization` the engine runs with: its share of a GPU it shares, the
    /// user's own value, or `null` with whole GPUs at vLLM's default.
    pub gpu_share: Option<f64>,
    /// The memory the model needs, estimated from its files; `null` when they are not on
    /// disk (a Hugging Face id) or GPUs are disabled.
    pub memory_estimate: Option<MemoryEstimate>,
    /// Names of the models that must be ready before this engine starts (they share its GPU).
    pub start_after: Vec<String>,
    /// `always` or `on_demand` (SPEC §9).
    pub load: LoadMode,
    /// How an idle on-demand model is unloaded: `stop` or `sleep`.
    pub unload: UnloadMode,
    /// Seconds without requests before an on-demand model is unloaded.
    pub idle_unload: f64,
    /// An on-demand model that does not fit beside every other model: it is loaded while
    /// there is room, unloading the least recently used idle on-demand model first.
    pub takes_turns: bool,
    /// True when the engine can load LoRA adapters at run time (`--enable-lora`; modelmux
    /// sets `VLLM_ALLOW_RUNTIME_LORA_UPDATING` for it).
    pub runtime_lora: bool,
}

/// The variable that lets vLLM load and unload LoRA adapters at run time.
pub const RUNTIME_LORA_VAR: &str = "VLLM_ALLOW_RUNTIME_LORA_UPDATING";
/// The variable that turns on vLLM's development endpoints (`/sleep`, `/wake_up`, ...).
pub const DEV_MODE_VAR: &str = "VLLM_SERVER_DEV_MODE";

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
    /// `MODELMUX_GPU_MEMORY_LIMIT`.
    pub gpu_memory_limit: f64,
    /// Every GPU: size, free memory, what the plan puts there and which models.
    pub gpus: Vec<GpuUse>,
}

/// The engine ports: `n` consecutive ports from `base`, skipping those in `avoid` (`PORT`,
/// `HEALTH_CHECK_PORT`). A function of the configuration only, so `plan` and `serve` agree,
/// and several modelmux instances with different `PORT`s (tests, one per pod) do not collide
/// unless their ranges overlap.
pub fn engine_ports(n: usize, base: u16, avoid: &[u16]) -> Result<Vec<u16>, PlanError> {
    let mut ports = Vec::with_capacity(n);
    let mut next = u32::from(base);
    while ports.len() < n {
        let port = u16::try_from(next).map_err(|_| {
            PlanError::Ports(format!(
                "MODELMUX_ENGINE_BASE_PORT: {n} engine ports from {base} would pass 65535; pick a lower base (or PORT)"
            ))
        })?;
        if !avoid.contains(&port) {
            ports.push(port);
        }
        next += 1;
    }
    Ok(ports)
}

/// The variable that binds a vLLM CPU engine's OpenMP threads to cores.
pub const CPU_BIND_VAR: &str = "VLLM_CPU_OMP_THREADS_BIND";

/// With `MODELMUX_GPUS=none`: each model's `VLLM_CPU_OMP_THREADS_BIND` (disjoint cores),
/// `None` for a model whose own `env` sets it (it keeps its own and takes no share).
pub fn cpu_binds(config: &Config) -> Vec<Option<String>> {
    let sharing: Vec<usize> = (0..config.models.len())
        .filter(|&i| !config.models[i].env.contains_key(CPU_BIND_VAR))
        .collect();
    let ranks: Vec<usize> = sharing
        .iter()
        .map(|&i| config.models[i].gpu_demand.max(1) as usize)
        .collect();
    let (binds, shared) = crate::cpus::Topology::read().split(&ranks);
    if shared {
        tracing::warn!(
            "{} CPU engines on fewer cores than they need: some share cores",
            sharing.len()
        );
    }
    let mut out = vec![None; config.models.len()];
    for (i, bind) in sharing.into_iter().zip(binds) {
        out[i] = Some(bind).filter(|b| !b.is_empty());
    }
    out
}

/// Joins a configuration and an inventory into a plan, with the engine ports of
/// [`engine_ports`].
pub fn build(config: &Config, inv: &Inventory) -> Result<LaunchPlan, PlanError> {
    let s = &config.settings;
    let ports = engine_ports(
        config.models.len(),
        s.engine_base_port,
        &[s.port, s.health_port],
    )?;
    build_with_ports(config, inv, &ports)
}

/// Like [`build`] with the engine ports given (tests use fixed ones).
pub fn build_with_ports(
    config: &Config,
    inv: &Inventory,
    ports: &[u16],
) -> Result<LaunchPlan, PlanError> {
    let s: &Settings = &config.settings;
    let (placements, gpu_table) = placement::place(config, inv).map_err(|e| match e {
        PlacementError::Files(f) => PlanError::Files(f),
        PlacementError::Gpu(g) => PlanError::Gpu(g),
    })?;
    let cpu_binds = if inv.disabled {
        cpu_binds(config)
    } else {
        vec![None; config.models.len()]
    };
    let models = config
        .models
        .iter()
        .zip(placements)
        .zip(ports)
        .zip(cpu_binds)
        .map(|(((m, placed), &port), cpu_bind)| launch(m, placed, port, cpu_bind, s))
        .collect();
    Ok(LaunchPlan {
        source: config.source.clone(),
        gpu_source: inv.source.clone(),
        port: s.port,
        health_port: s.health_port,
        models,
        gpu_memory_limit: s.gpu_memory_limit,
        gpus: gpu_table,
    })
}

/// One model's launch entry: its command line and environment for this placement and port.
pub fn launch(
    m: &ModelSpec,
    placed: ModelPlacement,
    port: u16,
    cpu_bind: Option<String>,
    s: &Settings,
) -> ModelLaunch {
    let gpus = placed.gpus.clone();
    let mut argv = s.engine_cmd.clone();
    // `vllm serve MODEL`: the model right after `serve` (vLLM warns about `--model`
    // there and plans to drop it); other commands take `--model`.
    if argv.last().is_some_and(|w| w == "serve") {
        argv.push(m.resolved_path.clone());
    } else {
        argv.extend(Arg::new("--model", &[&m.resolved_path]).tokens());
    }
    let own = [
        Arg::new("--host", &["127.0.0.1"]),
        Arg::new("--port", &[&port.to_string()]),
    ];
    argv.extend(own.iter().flat_map(Arg::tokens));
    argv.extend(m.args.tokens());
    if let (true, Some(share)) = (placed.adds_share_flag, placed.gpu_share) {
        argv.push("--gpu-memory-utilization".into());
        argv.push(placement::share_text(share));
    }
    let mut env = BTreeMap::new();
    env.insert("CUDA_VISIBLE_DEVICES".to_string(), gpus.join(","));
    env.insert("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string());
    if let Some(bind) = cpu_bind {
        env.insert(CPU_BIND_VAR.to_string(), bind);
    }
    // Only modelmux calls these endpoints, on loopback; the front refuses them.
    let runtime_lora = m.args.has("--enable-lora");
    if runtime_lora {
        env.insert(RUNTIME_LORA_VAR.to_string(), "True".to_string());
    }
    if m.args.has("--enable-sleep-mode") {
        env.insert(DEV_MODE_VAR.to_string(), "1".to_string());
    }
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
        gpu_share: placed.gpu_share,
        memory_estimate: placed.memory_estimate,
        start_after: placed.start_after,
        load: m.loading.load,
        unload: m.loading.unload,
        idle_unload: m.loading.idle_unload.as_secs_f64(),
        takes_turns: placed.takes_turns,
        runtime_lora,
    }
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
        if !self.gpus.is_empty() {
            writeln!(f)?;
            f.write_str(&placement::render_table(&self.gpus, self.gpu_memory_limit))?;
        }
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
            if let Some(share) = m.gpu_share {
                writeln!(
                    f,
                    "  GPU share:    {} (--gpu-memory-utilization)",
                    placement::share_text(share)
                )?;
            }
            match &m.memory_estimate {
                Some(e) => writeln!(f, "  memory:       {}", e.describe())?,
                None if !m.gpus.is_empty() => {
                    writeln!(f, "  memory:       no estimate (model files not on disk)")?
                }
                None => {}
            }
            if !m.start_after.is_empty() {
                writeln!(
                    f,
                    "  starts after: {} (shared GPU)",
                    m.start_after.join(", ")
                )?;
            }
            if m.load == LoadMode::OnDemand {
                writeln!(
                    f,
                    "  load:         on demand; unloaded ({}) after {} s idle{}",
                    m.unload.as_str(),
                    m.idle_unload,
                    if m.takes_turns {
                        "; takes turns with other on-demand models"
                    } else {
                        ""
                    }
                )?;
            }
            writeln!(f, "  port:         127.0.0.1:{}", m.port)?;
            writeln!(f, "  predict:      {}", m.predict_route)?;
            writeln!(f, "  command:      {}", shell_line(&m.argv))?;
            for (k, v) in &m.env {
                writeln!(f, "  env:          {k}={v}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A launch entry for unit tests elsewhere.
    pub(crate) fn launch_for_tests(name: &str) -> ModelLaunch {
        ModelLaunch {
            name: name.into(),
            served_names: vec![name.into()],
            adapters: Vec::new(),
            model_path: format!("/models/{name}"),
            model_task: None,
            gpus: Vec::new(),
            port: 9000,
            argv: vec!["vllm".into()],
            env: BTreeMap::new(),
            predict_route: "/v1/completions".into(),
            gpu_share: None,
            memory_estimate: None,
            start_after: Vec::new(),
            load: LoadMode::Always,
            unload: UnloadMode::Stop,
            idle_unload: 600.0,
            takes_turns: false,
            runtime_lora: false,
        }
    }

    #[test]
    fn engine_ports_follow_the_base_and_skip_the_front() {
        assert_eq!(
            engine_ports(3, 8081, &[8080, 8080]).unwrap(),
            [8081, 8082, 8083]
        );
        assert_eq!(
            engine_ports(3, 8080, &[8080, 8082]).unwrap(),
            [8081, 8083, 8084]
        );
        assert_eq!(engine_ports(0, 9000, &[]).unwrap(), Vec::<u16>::new());
        let e = engine_ports(3, 65534, &[]).unwrap_err().to_string();
        assert!(
            e.starts_with("MODELMUX_ENGINE_BASE_PORT: 3 engine ports from 65534"),
            "{e}"
        );
    }
}
