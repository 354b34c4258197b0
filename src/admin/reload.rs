//! A reload's difference (SPEC §8): the configuration read again, compared model by model
//! (by name) with the running launches. A model whose command line, environment and settings
//! would be the same on its current GPUs and port is unchanged and not touched; one that
//! differs restarts with its new launch; new ones start; missing ones stop.
//!
//! Only what changed is placed again, beside what stays: the unchanged always-loaded models
//! keep their GPUs and shares, changed and new models go into the room left
//! ([`crate::gpu::place_beside`]), and a change that does not fit is refused as a whole.

use std::collections::{HashMap, HashSet};

use crate::config::{Config, LoadMode, ModelSpec, UnloadMode};
use crate::gpu::{self, Claim, Inventory, MemDemand, Placement};
use crate::placement::{self, ModelPlacement};
use crate::plan::{self, ModelLaunch};
use crate::supervisor::ReloadPlan;

/// What a model's launch is compared on: everything but where it runs.
fn same_launch(a: &ModelLaunch, b: &ModelLaunch) -> bool {
    a.argv == b.argv
        && a.env == b.env
        && a.served_names == b.served_names
        && a.adapters == b.adapters
        && a.model_path == b.model_path
        && a.model_task == b.model_task
        && a.predict_route == b.predict_route
        && a.load == b.load
        && a.unload == b.unload
        && a.idle_unload == b.idle_unload
}

/// The inventory positions of a launch's GPUs.
fn positions(inv: &Inventory, launch: &ModelLaunch) -> Vec<usize> {
    launch
        .gpus
        .iter()
        .filter_map(|id| inv.gpus.iter().position(|g| &g.visible_id == id))
        .collect()
}

/// `launch`'s placement as the packer sees it.
fn placement_of(inv: &Inventory, launch: &ModelLaunch) -> Placement {
    Placement {
        gpus: positions(inv, launch),
        share: launch.gpu_share,
        shared: launch.gpu_share.is_some(),
    }
}

/// The launch `m` would get where `old` runs now (its GPUs, share and port).
fn in_place(m: &ModelSpec, old: &ModelLaunch, config: &Config) -> ModelLaunch {
    let placed = ModelPlacement {
        gpus: old.gpus.clone(),
        gpu_share: old.gpu_share,
        adds_share_flag: old.gpu_share.is_some() && m.memory.gpu_memory_utilization.is_none(),
        memory_estimate: old.memory_estimate.clone(),
        start_after: Vec::new(),
        takes_turns: old.takes_turns,
    };
    plan::launch(
        m,
        placed,
        old.port,
        &old.extra_ports,
        old.cpu_bind.clone(),
        &config.settings,
    )
}

/// The reload of `config` over the running `current` launches (of `generation`); the error
/// says what is wrong or what does not fit, and nothing changes.
pub fn diff(
    current: &[ModelLaunch],
    config: &Config,
    inv: &Inventory,
    generation: u64,
) -> Result<ReloadPlan, String> {
    let by_name: HashMap<&str, &ModelLaunch> =
        current.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut plan = ReloadPlan {
        based_on: generation,
        ..Default::default()
    };
    let new_names: HashSet<&str> = config
        .models
        .iter()
        .map(|m| m.served_names[0].as_str())
        .collect();
    plan.stop = current
        .iter()
        .filter(|l| !new_names.contains(l.name.as_str()))
        .map(|l| l.name.clone())
        .collect();
    // Which models stay, which change.
    let mut changed: Vec<usize> = Vec::new();
    let mut kept: Vec<(usize, &ModelLaunch)> = Vec::new();
    for (i, m) in config.models.iter().enumerate() {
        match by_name.get(m.served_names[0].as_str()) {
            Some(old) if same_launch(&in_place(m, old, config), old) => {
                plan.unchanged.push(old.name.clone());
                kept.push((i, old));
            }
            _ => changed.push(i),
        }
    }
    if changed.is_empty() {
        return Ok(plan);
    }
    let limit = config.settings.gpu_memory_limit;
    let (demands, estimates) = placement::demands(config, inv).map_err(|e| {
        crate::plan::PlanError::from(e)
            .in_source(&config.source)
            .to_string()
    })?;
    // What stays holds its room: always-loaded models, and on-demand models that do not
    // take turns (they were planned to fit beside everything).
    let mut fixed: Vec<(MemDemand, Placement)> = kept
        .iter()
        .filter(|(_, old)| old.load == LoadMode::Always || !old.takes_turns)
        .map(|&(i, old)| (demands[i].clone(), placement_of(inv, old)))
        .collect();
    let mut always: Vec<(MemDemand, Placement)> = kept
        .iter()
        .filter(|(_, old)| old.load == LoadMode::Always)
        .map(|&(i, old)| (demands[i].clone(), placement_of(inv, old)))
        .collect();
    // What models that take turns and sleep keep on their GPUs (see place_with_turns).
    let mut residues: Vec<(MemDemand, Placement)> = kept
        .iter()
        .filter(|(_, old)| old.takes_turns && old.unload == UnloadMode::Sleep)
        .map(|&(i, old)| {
            let at = placement_of(inv, old);
            (placement::residue(&demands[i]), placement::residue_at(&at))
        })
        .collect();
    let mut placed: HashMap<usize, (Placement, bool)> = HashMap::new();
    let order = changed
        .iter()
        .copied()
        .filter(|&i| config.models[i].loading.load == LoadMode::Always)
        .chain(
            changed
                .iter()
                .copied()
                .filter(|&i| config.models[i].loading.load == LoadMode::OnDemand),
        );
    for i in order {
        let d = &demands[i];
        let beside = |set: &[(MemDemand, Placement)]| {
            let pairs: Vec<(&MemDemand, &Placement)> = set.iter().map(|(d, p)| (d, p)).collect();
            gpu::place_beside(&pairs, d, inv, limit)
        };
        let refused = |e: gpu::GpuError| {
            format!("the new configuration does not fit beside the running models: {e}")
        };
        if config.models[i].loading.load == LoadMode::Always {
            let p = beside(&fixed).map_err(refused)?;
            fixed.push((d.clone(), p.clone()));
            always.push((d.clone(), p.clone()));
            placed.insert(i, (p, false));
        } else {
            match beside(&fixed) {
                Ok(p) => {
                    fixed.push((d.clone(), p.clone()));
                    placed.insert(i, (p, false));
                }
                Err(_) => {
                    let mut with_residues = always.clone();
                    with_residues.extend(residues.iter().cloned());
                    let p = match beside(&with_residues) {
                        Ok(p) => p,
                        Err(_) => beside(&always).map_err(refused)?,
                    };
                    if config.models[i].loading.unload == UnloadMode::Sleep {
                        residues.push((placement::residue(d), placement::residue_at(&p)));
                    }
                    placed.insert(i, (p, true));
                }
            }
        }
    }
    // On-demand models that stay and take turns must still fit beside the always-loaded.
    for &(_, old) in kept
        .iter()
        .filter(|(_, o)| o.load == LoadMode::OnDemand && o.takes_turns)
    {
        for g in positions(inv, old) {
            let size = inv.gpus[g].memory_total;
            let held: Vec<Claim> = always
                .iter()
                .filter(|(_, p)| p.gpus.contains(&g))
                .map(|(d, p)| Claim::of(p.share, d.need.map(|n| n.outside), size))
                .collect();
            let outside = old.memory_estimate.as_ref().map(|e| e.need.outside);
            let want = Claim::of(old.gpu_share, outside, size);
            if !gpu::fits(&held, want, size, limit) {
                return Err(format!(
                    "the new configuration does not fit beside the running models: on-demand model {} would no longer fit on GPU {} beside the always-loaded models",
                    old.name, inv.gpus[g].visible_id
                ));
            }
        }
    }
    // Ports: a model keeps its name's ports; a new one takes the first free ones.
    let taken: HashSet<u16> = current
        .iter()
        .flat_map(|l| std::iter::once(l.port).chain(l.extra_ports.iter().copied()))
        .collect();
    let s = &config.settings;
    let wanted: usize = changed
        .iter()
        .map(|&i| 1 + plan::extra_ports_needed(&config.models[i]))
        .sum();
    let mut spare = plan::engine_ports(
        taken.len() + wanted + 1,
        s.engine_base_port,
        &[s.port, s.health_port],
    )
    .map_err(|e| e.to_string())?
    .into_iter()
    .filter(|p| !taken.contains(p));
    let binds = if inv.disabled {
        plan::cpu_binds(config)
    } else {
        vec![None; config.models.len()]
    };
    for i in changed {
        let m = &config.models[i];
        let (p, takes_turns) = placed.remove(&i).expect("placed above");
        let placed = ModelPlacement {
            gpus: p
                .gpus
                .iter()
                .map(|&g| inv.gpus[g].visible_id.clone())
                .collect(),
            gpu_share: p.share,
            adds_share_flag: p.share.is_some() && demands[i].fixed_share.is_none(),
            memory_estimate: estimates[i].clone(),
            start_after: Vec::new(),
            takes_turns,
        };
        let name = m.served_names[0].as_str();
        let mut next = || spare.next().ok_or("no free engine port for a new model");
        let extra_needed = plan::extra_ports_needed(m);
        let (port, extra, restart) = match by_name.get(name) {
            Some(old) if old.extra_ports.len() == extra_needed => {
                (old.port, old.extra_ports.clone(), true)
            }
            Some(old) => {
                let extra = (0..extra_needed)
                    .map(|_| next())
                    .collect::<Result<_, _>>()?;
                (old.port, extra, true)
            }
            None => {
                let port = next()?;
                let extra = (0..extra_needed)
                    .map(|_| next())
                    .collect::<Result<_, _>>()?;
                (port, extra, false)
            }
        };
        let launch = plan::launch(m, placed, port, &extra, binds[i].clone(), s);
        if restart {
            plan.restart.push(launch);
        } else {
            plan.start.push(launch);
        }
    }
    Ok(plan)
}
