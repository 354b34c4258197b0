//! GPU memory in the plan (SPEC §3.1): estimates each model from its files ([`weights`]),
//! places the models on GPUs with shares ([`gpu::place`]), orders the start of engines that
//! share a GPU, and renders the per-GPU table that `plan` and `gpus` print. Each engine's
//! memory-fraction flag comes from its profile: vLLM `--gpu-memory-utilization`, SGLang
//! `--mem-fraction-static`, TGI `--cuda-memory-fraction`; llama.cpp has none and reserves its
//! estimate on a shared GPU.

use std::path::Path;

use crate::config::{Config, LoadMode, ModelSpec, UnloadMode};
use crate::gpu::{
    self, GpuError, GpuTenant, GpuUse, Inventory, MemDemand, VLLM_DEFAULT_UTILIZATION, gib,
};
use crate::weights::{self, CUDA_CONTEXT, CUDA_GRAPHS, MemoryEstimate, WeightsError};

/// A model's files could not be sized: `models[0].model_path: <file>: <problem>`.
#[derive(Debug, thiserror::Error)]
#[error("{origin}.model_path: {source}")]
pub struct ModelFilesError {
    /// Where the model was configured (`models[0]`, `MODEL`).
    pub origin: String,
    /// The file and the problem.
    pub source: WeightsError,
}

/// Why the models cannot be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// A model's files are unreadable or inconsistent.
    #[error(transparent)]
    Files(#[from] ModelFilesError),
    /// The GPUs cannot hold the models.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Where one model runs and how much of its GPU it may use.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlacement {
    /// `CUDA_VISIBLE_DEVICES` ids.
    pub gpus: Vec<String>,
    /// The `--gpu-memory-utilization` the engine runs with, if any.
    pub gpu_share: Option<f64>,
    /// True when modelmux adds the share to the engine's command line in the engine's
    /// spelling (false for the user's own, and for an engine without such a flag, whose
    /// share is only reserved).
    pub adds_share_flag: bool,
    /// The estimate, `None` for a model that is not on disk or with GPUs disabled.
    pub memory_estimate: Option<MemoryEstimate>,
    /// Models that must be ready before this engine starts (they share its GPU and come
    /// first in the configuration).
    pub start_after: Vec<String>,
    /// An on-demand model that does not fit beside every other model: it is loaded only
    /// while there is room, unloading the least recently used idle on-demand model first.
    pub takes_turns: bool,
}

fn estimate(m: &ModelSpec) -> Result<Option<MemoryEstimate>, ModelFilesError> {
    if m.gpu_demand == 0 {
        // A CPU engine (llama.cpp with no layers on the GPU) takes no GPU memory.
        return Ok(None);
    }
    let adapters: Vec<&Path> = m
        .adapters
        .iter()
        .map(|a| Path::new(a.path.as_str()))
        .collect();
    weights::estimate(Path::new(&m.resolved_path), &adapters, &m.memory).map_err(|source| {
        ModelFilesError {
            origin: m.origin.clone(),
            source,
        }
    })
}

/// Estimates every model, on as many threads as there are cores (reading headers is most of
/// what `plan` does for many local models). The first error in configuration order wins.
fn estimate_all(models: &[ModelSpec]) -> Result<Vec<Option<MemoryEstimate>>, ModelFilesError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(models.len());
    if threads <= 1 {
        return models.iter().map(estimate).collect();
    }
    let mut results: Vec<Option<Result<Option<MemoryEstimate>, ModelFilesError>>> =
        (0..models.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                scope.spawn(move || {
                    (k..models.len())
                        .step_by(threads)
                        .map(|i| (i, estimate(&models[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            for (i, r) in w.join().expect("estimating never panics") {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every model estimated"))
        .collect()
}

/// Every model's memory estimate (`None` without one) and its demand for the packer.
pub fn demands(
    config: &Config,
    inv: &Inventory,
) -> Result<(Vec<MemDemand>, Vec<Option<MemoryEstimate>>), ModelFilesError> {
    let estimates: Vec<Option<MemoryEstimate>> = if inv.disabled {
        vec![None; config.models.len()]
    } else {
        estimate_all(&config.models)?
    };
    let demands: Vec<MemDemand> = config
        .models
        .iter()
        .zip(&estimates)
        .map(|(m, e)| MemDemand {
            name: m.served_names[0].clone(),
            gpus: if inv.disabled { 0 } else { m.gpu_demand },
            need: e.as_ref().map(|e| e.need),
            fixed_share: m.memory.gpu_memory_utilization,
            fraction_flag: m.engine.profile().memory_fraction_flag(),
            gpu_flags: crate::engines::gpu_flags(m.engine.profile(), &m.args),
            summary: match e {
                Some(e) => e.describe(),
                None if m.gpu_demand == 0 => "no GPU memory".into(),
                None => "no estimate (not on disk): whole GPUs".into(),
            },
        })
        .collect();
    Ok((demands, estimates))
}

/// Places every model; returns the per-model placement and the per-GPU table.
pub fn place(
    config: &Config,
    inv: &Inventory,
) -> Result<(Vec<ModelPlacement>, Vec<GpuUse>), PlacementError> {
    let limit = config.settings.gpu_memory_limit;
    let (demands, estimates) = demands(config, inv)?;
    let on_demand: Vec<bool> = config
        .models
        .iter()
        .map(|m| m.loading.load == LoadMode::OnDemand)
        .collect();
    let (placed, turns) = match gpu::place(&demands, inv, limit) {
        Ok(placed) => (placed, vec![false; demands.len()]),
        Err(e) if !on_demand.contains(&true) => return Err(e.into()),
        // On-demand models that do not all fit take turns (SPEC §9).
        Err(_) => {
            let sleeps: Vec<bool> = config
                .models
                .iter()
                .map(|m| m.loading.unload == UnloadMode::Sleep)
                .collect();
            let placed = place_with_turns(&demands, &on_demand, &sleeps, inv, limit)?;
            (placed, on_demand.clone())
        }
    };

    let mut tenants: Vec<Vec<usize>> = vec![Vec::new(); inv.gpus.len()];
    for (i, p) in placed.iter().enumerate() {
        for &g in &p.gpus {
            tenants[g].push(i); // in configuration order
        }
    }
    let models = placed
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // Engines that start with modelmux start one after another on a shared GPU;
            // on-demand ones start when a request comes and room is made for them.
            let start_after = match (p.shared && !on_demand[i], p.gpus.first()) {
                (true, Some(&g)) => tenants[g]
                    .iter()
                    .take_while(|&&j| j != i)
                    .filter(|&&j| !on_demand[j])
                    .map(|&j| demands[j].name.clone())
                    .collect(),
                _ => Vec::new(),
            };
            ModelPlacement {
                gpus: p
                    .gpus
                    .iter()
                    .map(|&g| inv.gpus[g].visible_id.clone())
                    .collect(),
                gpu_share: p.share,
                adds_share_flag: p.share.is_some()
                    && demands[i].fixed_share.is_none()
                    && demands[i].fraction_flag.is_some(),
                memory_estimate: estimates[i].clone(),
                start_after,
                takes_turns: turns[i],
            }
        })
        .collect();
    let table = inv
        .gpus
        .iter()
        .zip(&tenants)
        .map(|(g, members)| {
            let size = g.memory_total as f64;
            let bytes = |i: usize| {
                let outside = demands[i]
                    .need
                    .map_or(CUDA_CONTEXT + CUDA_GRAPHS, |n| n.outside);
                let inside = match (placed[i].share, demands[i].need) {
                    (Some(util), _) => util * size,
                    // No fraction flag: it takes what it needs.
                    (None, Some(n)) if demands[i].fraction_flag.is_none() => n.inside as f64,
                    (None, _) => VLLM_DEFAULT_UTILIZATION * size,
                };
                inside + outside as f64
            };
            // Models that take turns are there one at a time: the largest counts.
            let resident: f64 = members
                .iter()
                .filter(|&&i| !turns[i])
                .map(|&i| bytes(i))
                .sum();
            let turn = members
                .iter()
                .filter(|&&i| turns[i])
                .map(|&i| bytes(i))
                .fold(0.0, f64::max);
            let planned = resident + turn;
            GpuUse {
                index: g.index,
                id: g.visible_id.clone(),
                name: g.name.clone(),
                memory_total: g.memory_total,
                memory_free: g.memory_free,
                measured: g.memory_measured,
                planned_bytes: if g.memory_total == 0 {
                    0
                } else {
                    planned as u64
                },
                models: members
                    .iter()
                    .map(|&i| GpuTenant {
                        takes_turns: turns[i],
                        name: demands[i].name.clone(),
                        share: placed[i].share,
                        estimate_bytes: estimates[i].as_ref().map(|e| e.per_gpu_bytes),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok((models, table))
}

/// Plans models when the on-demand ones do not all fit beside the others: the always-loaded
/// models are placed together with the largest on-demand model (which keeps room for one at
/// a time), then each on-demand model is placed beside the always-loaded ones alone. At run
/// time the supervisor loads an on-demand model only while it fits beside the engines that
/// hold memory, unloading idle on-demand models first.
fn place_with_turns(
    demands: &[MemDemand],
    on_demand: &[bool],
    sleeps: &[bool],
    inv: &Inventory,
    limit: f64,
) -> Result<Vec<gpu::Placement>, GpuError> {
    let size = inv.gpus.iter().map(|g| g.memory_total).max().unwrap_or(0);
    // Whole GPUs (several, or no estimate) first, then by the room it takes.
    let key = |i: usize| {
        let d = &demands[i];
        let whole = d.gpus > 1 || d.need.is_none() || size == 0;
        let bytes = if whole { u64::MAX } else { d.weight_on(size) };
        (whole, d.gpus, bytes, std::cmp::Reverse(i))
    };
    let largest = (0..demands.len())
        .filter(|&i| on_demand[i])
        .max_by_key(|&i| key(i))
        .expect("some model is on demand");
    let always: Vec<usize> = (0..demands.len()).filter(|&i| !on_demand[i]).collect();
    let mut with_largest: Vec<MemDemand> = always.iter().map(|&i| demands[i].clone()).collect();
    with_largest.push(demands[largest].clone());
    let resident = gpu::place(&with_largest, inv, limit)?;
    let mut placed: Vec<Option<gpu::Placement>> = vec![None; demands.len()];
    for (k, &i) in always.iter().enumerate() {
        placed[i] = Some(resident[k].clone());
    }
    let fixed: Vec<(&MemDemand, &gpu::Placement)> = always
        .iter()
        .zip(&resident)
        .map(|(&i, p)| (&demands[i], p))
        .collect();
    let mut turns = Vec::new();
    for i in (0..demands.len()).filter(|&i| on_demand[i]) {
        turns.push((i, gpu::place_beside(&fixed, &demands[i], inv, limit)?));
    }
    // A model that sleeps keeps its CUDA context on the GPU while another takes its turn:
    // leave room for that, so that a turn puts the others to sleep rather than stopping
    // them. Where that room cannot be spared, the plan stays and sleepers are stopped.
    let residues: Vec<(usize, MemDemand, gpu::Placement)> = turns
        .iter()
        .filter(|(j, _)| sleeps[*j])
        .map(|(j, p)| (*j, residue(&demands[*j]), residue_at(p)))
        .collect();
    for (i, p) in turns.iter_mut() {
        let mut beside = fixed.clone();
        beside.extend(
            residues
                .iter()
                .filter(|(j, _, _)| j != i)
                .map(|(_, d, r)| (d, r)),
        );
        if beside.len() > fixed.len()
            && let Ok(roomier) = gpu::place_beside(&beside, &demands[*i], inv, limit)
        {
            *p = roomier;
        }
    }
    for (i, p) in turns {
        placed[i] = Some(p);
    }
    Ok(placed
        .into_iter()
        .map(|p| p.expect("every model placed"))
        .collect())
}

/// What a sleeping engine keeps on its GPU, as a demand: its CUDA context and graphs.
pub fn residue(d: &MemDemand) -> MemDemand {
    MemDemand {
        name: format!("{} (asleep)", d.name),
        gpus: d.gpus,
        need: Some(gpu::Need {
            inside: 0,
            outside: d.need.map_or(CUDA_CONTEXT + CUDA_GRAPHS, |n| n.outside),
        }),
        fixed_share: None,
        fraction_flag: d.fraction_flag,
        gpu_flags: d.gpu_flags.clone(),
        summary: d.summary.clone(),
    }
}

/// Where a sleeping engine keeps its residue: its GPUs, no share.
pub fn residue_at(p: &gpu::Placement) -> gpu::Placement {
    gpu::Placement {
        gpus: p.gpus.clone(),
        share: Some(0.0),
        shared: true,
    }
}

/// A share as engines get it: up to three decimals, no trailing zeros.
pub fn share_text(share: f64) -> String {
    let s = format!("{share:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The per-GPU table: size, free memory (NVML's; `-` for an override's sizes), what the
/// plan puts there and who.
pub fn render_table(table: &[GpuUse], limit: f64) -> String {
    let mut out = format!("GPU memory (MODELMUX_GPU_MEMORY_LIMIT={limit}):\n");
    out.push_str(&format!(
        "  {:<5} {:<24} {:>10} {:>10} {:>10}  models\n",
        "GPU", "name", "total", "free", "planned"
    ));
    let size = |b: u64| if b == 0 { "-".to_string() } else { gib(b) };
    for u in table {
        let free = if !u.measured || u.memory_total == 0 {
            "-".to_string()
        } else if u.memory_free < u.planned_bytes {
            format!("{} (!)", gib(u.memory_free))
        } else {
            gib(u.memory_free)
        };
        let models: Vec<String> = u
            .models
            .iter()
            .map(|t| {
                let share = t.share.map_or("whole GPU".to_string(), |s| {
                    format!("share {}", share_text(s))
                });
                let turns = if t.takes_turns { ", takes turns" } else { "" };
                match t.estimate_bytes {
                    Some(b) => format!("{} ({share}, needs {}{turns})", t.name, gib(b)),
                    None => format!("{} ({share}{turns})", t.name),
                }
            })
            .collect();
        out.push_str(&format!(
            "  {:<5} {:<24} {:>10} {:>10} {:>10}  {}\n",
            u.id,
            u.name,
            size(u.memory_total),
            free,
            size(u.planned_bytes),
            if models.is_empty() {
                "-".to_string()
            } else {
                models.join(", ")
            }
        ));
    }
    out
}
