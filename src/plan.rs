//! The launch plan: configuration and GPUs joined into plain data, one [`ModelLaunch`] per
//! model. `modelmux plan` prints exactly this; `serve` hands it to the supervisor and the
//! front.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

use crate::config::{Config, ConfigError, ConfigSource, LoadMode, ModelSpec, Settings, UnloadMode};
use crate::engines::{self, Concept, Engine, ModelsList};
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
    /// An error about one model entry, with the variable or file the entry came from.
    #[error("{source_name}: {error}")]
    InSource {
        /// `MULTI_MODEL_CONFIG`, `--config FILE` or OCI's metadata.
        source_name: String,
        /// The error about the entry.
        error: Box<PlanError>,
    },
}

impl PlanError {
    /// This error with `source` in front when it names a model entry (as
    /// [`ConfigError::in_source`]).
    pub fn in_source(self, source: &crate::config::ConfigSource) -> Self {
        let line = self.to_string();
        if *source == crate::config::ConfigSource::SingleModel
            || !crate::config::names_an_entry(&line)
        {
            return self;
        }
        PlanError::InSource {
            source_name: source.to_string(),
            error: Box::new(self),
        }
    }
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
    /// The path (or Hugging Face id) the engine loads.
    pub model_path: String,
    /// `model_task`, if configured.
    pub model_task: Option<String>,
    /// The GPUs' `CUDA_VISIBLE_DEVICES` ids (indices or UUIDs).
    pub gpus: Vec<String>,
    /// The engine's loopback port.
    pub port: u16,
    /// Further loopback ports the engine's profile gives each instance (TGI's Prometheus
    /// and torch master ports), from the same block as the engines' own, after them.
    pub extra_ports: Vec<u16>,
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
    /// The memory fraction the engine runs with (its profile's flag: vLLM
    /// `--gpu-memory-utilization`, SGLang `--mem-fraction-static`, TGI
    /// `--cuda-memory-fraction`): its share of a GPU it shares, the user's own value, or
    /// `null` with whole GPUs at the engine's default. For an engine without such a flag
    /// (llama.cpp), the part of a shared GPU reserved for it (its estimate), not passed to it.
    pub gpu_share: Option<f64>,
    /// The memory the model needs, estimated from its files; `null` when they are not on
    /// disk (a Hugging Face id), the engine runs on the CPU, or GPUs are disabled.
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
    /// True when the engine can load LoRA adapters at run time (a vLLM engine with
    /// `--enable-lora`; modelmux sets `VLLM_ALLOW_RUNTIME_LORA_UPDATING` for it).
    pub runtime_lora: bool,
    /// The cores its engine was bound to (`MODELMUX_GPUS=none`), as the planner gave them.
    #[serde(skip)]
    pub cpu_bind: Option<String>,
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

/// With `MODELMUX_GPUS=none`: each model's cores (disjoint; a kernel CPU list per rank,
/// ranks separated by `|`), for the engines whose profile can be told them (vLLM's
/// `VLLM_CPU_OMP_THREADS_BIND`, llama.cpp's `--cpu-mask` and `--threads`); `None` for the
/// others and for a model that sets its own (it keeps them and takes no share).
pub fn cpu_binds(config: &Config) -> Vec<Option<String>> {
    let ranks: Vec<Option<usize>> = config
        .models
        .iter()
        .map(|m| engines::cpu_ranks(m.engine, &m.args, &m.env, m.gpu_demand))
        .collect();
    let sharing: Vec<usize> = (0..config.models.len())
        .filter(|&i| ranks[i].is_some())
        .collect();
    let wanted: Vec<usize> = sharing.iter().filter_map(|&i| ranks[i]).collect();
    let (binds, shared) = crate::cpus::Topology::read().split(&wanted);
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

/// Loopback ports one model's engine needs besides its own: those its profile gives each
/// instance (TGI's Prometheus and torch master ports) that its `params` do not set.
pub fn extra_ports_needed(m: &crate::config::ModelSpec) -> usize {
    engines::extra_ports(m.engine, &m.args)
}

/// Joins a configuration and an inventory into a plan, with the engine ports of
/// [`engine_ports`]: the engines' own ports first (model `i` gets the `i`-th), then the
/// extra ports of the models that need them, in configuration order.
pub fn build(config: &Config, inv: &Inventory) -> Result<LaunchPlan, PlanError> {
    let s = &config.settings;
    let extra: usize = config.models.iter().map(extra_ports_needed).sum();
    let ports = engine_ports(
        config.models.len() + extra,
        s.engine_base_port,
        &[s.port, s.health_port],
    )?;
    build_with_ports(config, inv, &ports).map_err(|e| e.in_source(&config.source))
}

/// Like [`build`] with the engine ports given (tests use fixed ones): one per model, then
/// each model's [`extra_ports_needed`], in order.
pub fn build_with_ports(
    config: &Config,
    inv: &Inventory,
    ports: &[u16],
) -> Result<LaunchPlan, PlanError> {
    let s: &Settings = &config.settings;
    let n = config.models.len();
    let wanted = n + config.models.iter().map(extra_ports_needed).sum::<usize>();
    if ports.len() < wanted {
        return Err(PlanError::Ports(format!(
            "{} engine ports given for {n} models that need {wanted}",
            ports.len()
        )));
    }
    let (own_ports, mut extra_pool) = (&ports[..n], &ports[n..]);
    let (placements, gpu_table) = placement::place(config, inv).map_err(|e| match e {
        PlacementError::Files(f) => PlanError::Files(f),
        PlacementError::Gpu(g) => PlanError::Gpu(g),
    })?;
    let cpu_binds = if inv.disabled {
        cpu_binds(config)
    } else {
        vec![None; n]
    };
    let mut models = Vec::with_capacity(n);
    for (((m, placed), &port), cpu_bind) in config
        .models
        .iter()
        .zip(placements)
        .zip(own_ports)
        .zip(cpu_binds)
    {
        let (extra, rest) = extra_pool.split_at(extra_ports_needed(m));
        extra_pool = rest;
        models.push(launch(m, placed, port, extra, cpu_bind, s));
    }
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

/// One model's launch entry: its command line and environment for this placement and these
/// ports.
pub fn launch(
    m: &ModelSpec,
    placed: ModelPlacement,
    port: u16,
    extra: &[u16],
    cpu_bind: Option<String>,
    s: &Settings,
) -> ModelLaunch {
    let gpus = placed.gpus.clone();
    let profile = m.engine.profile();
    let mut args = m.args.clone();
    if let (true, Some(share)) = (placed.adds_share_flag, placed.gpu_share) {
        let text = placement::share_text(share);
        engines::set_concept(m.engine, &mut args, Concept::GpuMemoryFraction, &text);
    }
    let mut env = BTreeMap::new();
    env.insert("CUDA_VISIBLE_DEVICES".to_string(), gpus.join(","));
    env.insert("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string());
    if let Some(cores) = &cpu_bind {
        engines::bind_cpus(m.engine, cores, &mut args, &mut env);
    }
    // vLLM's run-time LoRA and sleep endpoints: only modelmux calls them, on loopback; the
    // front refuses them.
    let runtime_lora = m.engine == Engine::Vllm && args.has("--enable-lora");
    if runtime_lora {
        env.insert(RUNTIME_LORA_VAR.to_string(), "True".to_string());
    }
    if m.engine == Engine::Vllm && args.has("--enable-sleep-mode") {
        env.insert(DEV_MODE_VAR.to_string(), "1".to_string());
    }
    env.extend(m.env.clone());
    env.extend(engines::launch_env(m.engine, port));
    let argv = engines::argv(
        m.engine,
        &m.engine_cmd,
        &m.resolved_path,
        port,
        extra,
        &args,
    );
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
        extra_ports: extra.to_vec(),
        argv,
        env,
        predict_route,
        max_concurrency: m.max_concurrency,
        max_queue: m.max_queue,
        engine: m.engine,
        health_path: profile.health_path.to_string(),
        metrics_path: profile.metrics.map(|x| x.path.to_string()),
        metrics_prefix: profile.metrics.map(|x| x.prefix.to_string()),
        models_list: profile.models_list,
        request_model: profile.request_model.map(str::to_string),
        uuid_request_ids: profile.uuid_request_ids,
        gpu_share: placed.gpu_share,
        memory_estimate: placed.memory_estimate,
        start_after: placed.start_after,
        load: m.loading.load,
        unload: m.loading.unload,
        idle_unload: m.loading.idle_unload.as_secs_f64(),
        takes_turns: placed.takes_turns,
        runtime_lora,
        cpu_bind,
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
            if let Some(share) = m.gpu_share {
                let how = match m.engine.profile().memory_fraction_flag() {
                    Some(flag) => flag.to_string(),
                    None => format!("reserved; {} has no memory-fraction flag", m.engine),
                };
                writeln!(
                    f,
                    "  GPU share:    {} ({how})",
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
            if !m.extra_ports.is_empty() {
                let extra: Vec<String> = m.extra_ports.iter().map(u16::to_string).collect();
                writeln!(f, "  extra ports:  {}", extra.join(", "))?;
            }
            writeln!(f, "  predict:      {}", m.predict_route)?;
            if let Some(c) = m.max_concurrency {
                writeln!(f, "  concurrency:  {c} at once, {} may wait", m.max_queue)?;
            }
            writeln!(f, "  health:       {}", m.health_path)?;
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
            extra_ports: Vec::new(),
            argv: vec!["vllm".into()],
            env: BTreeMap::new(),
            predict_route: "/v1/completions".into(),
            max_concurrency: None,
            max_queue: 0,
            engine: Engine::Vllm,
            health_path: "/health".into(),
            metrics_path: Some("/metrics".into()),
            metrics_prefix: Some("vllm:".into()),
            models_list: Engine::Vllm.profile().models_list,
            request_model: None,
            uuid_request_ids: false,
            gpu_share: None,
            memory_estimate: None,
            start_after: Vec::new(),
            load: LoadMode::Always,
            unload: UnloadMode::Stop,
            idle_unload: 600.0,
            takes_turns: false,
            runtime_lora: false,
            cpu_bind: None,
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
