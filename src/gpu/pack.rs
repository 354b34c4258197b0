//! GPU memory planning (SPEC §3.1): which GPUs each model gets and, where models share a GPU,
//! what share of it (`--gpu-memory-utilization`). A pure function of the demands and the
//! inventory, deterministic, property-tested.
//!
//! Models get whole GPUs while there are enough ([`super::allocate`]). When there are not,
//! models that need one GPU and have an estimate share GPUs: packed largest first, each onto
//! the GPU with the most room left (worst fit spreads the load, so fewer engines wait on one
//! another), with first fit as a second try. On a shared GPU each model's share is
//! proportional to its need, and all engines on it stay under `MODELMUX_GPU_MEMORY_LIMIT`.
//!
//! An engine without a memory-fraction flag (llama.cpp) takes what its weights and context
//! need and no more: beside others it reserves its estimate (rounded up), nothing more, and
//! the engines that take a fraction share the rest. Its reservation is not passed to it.

use super::allocate::best_set;
use super::misfit::{self, does_not_fit};
use super::{GpuError, Inventory, allocate, shortage};

/// vLLM's default `--gpu-memory-utilization` (`CacheConfig.gpu_memory_utilization`, 0.9, in
/// vllm/config/cache.py): what an engine alone on its GPUs takes when nobody sets it.
pub const VLLM_DEFAULT_UTILIZATION: f64 = 0.9;

/// Shares are written with three decimals, rounded down.
pub(super) const SHARE_STEP: f64 = 0.001;

/// What one model needs on each GPU it uses, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Memory vLLM counts inside its `--gpu-memory-utilization`: weights, one sequence of KV
    /// cache, the profiling peak of activations and non-torch allocations.
    pub inside: u64,
    /// Memory the engine uses beyond its utilization: the CUDA context (taken before vLLM's
    /// first memory snapshot) and CUDA graphs (captured after the KV cache is sized).
    pub outside: u64,
}

/// One model's demand.
#[derive(Debug, Clone, PartialEq)]
pub struct MemDemand {
    /// The model's name, for messages.
    pub name: String,
    /// GPUs it needs (tensor × pipeline × data parallel).
    pub gpus: u32,
    /// Its need per GPU; `None` without an estimate (a Hugging Face id): whole GPUs.
    pub need: Option<Need>,
    /// The user's own `--gpu-memory-utilization` (or the engine's spelling of it), kept as
    /// is and counted against its GPU.
    pub fixed_share: Option<f64>,
    /// The engine's memory-fraction flag (vLLM `--gpu-memory-utilization`, SGLang
    /// `--mem-fraction-static`, TGI `--cuda-memory-fraction`). `None`: it allocates what it
    /// needs (llama.cpp), so beside others it is given its estimate, not a part of what is
    /// left.
    pub fraction_flag: Option<&'static str>,
    /// The flags that give it more than one GPU, as written (`-tp 2`), for the fix a message
    /// names; empty when none does.
    pub gpu_flags: String,
    /// The estimate in words for messages, without the name: `17.5 GiB (weights 15.0 GiB,
    /// ...)`, or why there is none.
    pub summary: String,
}

/// Where one model goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Positions into the inventory's GPUs, ascending.
    pub gpus: Vec<usize>,
    /// The `--gpu-memory-utilization` the engine runs with, when it gets one: a computed share
    /// on a shared GPU, the user's own value, or the limit when the limit is below vLLM's
    /// default. `None`: vLLM's default on whole GPUs. For an engine without a fraction flag,
    /// the part of a shared GPU reserved for it (its estimate).
    pub share: Option<f64>,
    /// Whether the GPU is shared with other models.
    pub shared: bool,
}

impl MemDemand {
    pub(super) fn packable(&self) -> bool {
        self.gpus == 1 && self.need.is_some()
    }

    /// The share it reserves on a GPU of `size` where it keeps its own (its user's value, or
    /// for an engine without a fraction flag its estimate rounded up to the share step).
    pub(super) fn own_share(&self, size: u64) -> Option<f64> {
        match (self.fixed_share, self.need) {
            (Some(u), _) => Some(u),
            (None, Some(need)) if self.fraction_flag.is_none() && size > 0 => {
                let steps = (need.inside as f64 / size as f64 / SHARE_STEP).ceil();
                Some(steps * SHARE_STEP)
            }
            _ => None,
        }
    }

    /// The utilization it runs at alone on its GPUs: its own value, vLLM's default under the
    /// limit, or for an engine without a fraction flag whatever the limit allows.
    pub(super) fn alone_utilization(&self, limit: f64) -> f64 {
        match self.fixed_share {
            Some(u) => u,
            None if self.fraction_flag.is_none() => limit,
            None => VLLM_DEFAULT_UTILIZATION.min(limit),
        }
    }

    /// Bytes it takes on a GPU of `size` beside others (the rounding allowance included).
    pub(super) fn weight(&self, size: u64) -> u64 {
        let need = self.need.expect("packable");
        let inside = match self.fixed_share {
            Some(u) => (u * size as f64) as u64,
            None => need.inside + (SHARE_STEP * size as f64) as u64,
        };
        inside + need.outside
    }

    /// Bytes it takes beside others on a GPU of `size` (packable demands only).
    pub fn weight_on(&self, size: u64) -> u64 {
        self.weight(size)
    }

    /// Whether it fits alone on GPUs of `size` with the utilization it would run at.
    pub(super) fn fits_alone(&self, size: u64, limit: f64) -> bool {
        let Some(need) = self.need else { return true };
        need.inside as f64 <= self.alone_utilization(limit) * size as f64
    }

    /// The share it gets alone on whole GPUs: its own value, or the limit where the limit
    /// is below vLLM's default; nothing for an engine without a fraction flag.
    pub(super) fn whole_share(&self, limit: f64) -> Option<f64> {
        match self.fixed_share {
            Some(u) => Some(u),
            None if self.fraction_flag.is_none() => None,
            None => (limit < VLLM_DEFAULT_UTILIZATION).then_some(limit),
        }
    }
}

/// Plans every model's GPUs and share. Errors name every model's estimate and every GPU.
pub fn place(
    demands: &[MemDemand],
    inv: &Inventory,
    limit: f64,
) -> Result<Vec<Placement>, GpuError> {
    let whole = |gpus: Vec<usize>, d: &MemDemand| Placement {
        gpus,
        share: d.whole_share(limit),
        shared: false,
    };
    if inv.disabled {
        return Ok(demands
            .iter()
            .map(|_| Placement {
                gpus: Vec::new(),
                share: None,
                shared: false,
            })
            .collect());
    }
    let needed: u32 = demands.iter().map(|d| d.gpus).sum();
    let sizes_known = !inv.gpus.is_empty() && inv.gpus.iter().all(|g| g.memory_total > 0);
    let can_share = sizes_known && demands.iter().any(MemDemand::packable);
    if needed as usize <= inv.gpus.len() || !can_share {
        let sets = allocate(demands, inv)?;
        let placed: Vec<Placement> = sets
            .into_iter()
            .zip(demands)
            .map(|(set, d)| whole(set, d))
            .collect();
        check_alone(demands, &placed, inv, limit)?;
        return Ok(placed);
    }

    // Sharing: models that need whole GPUs take theirs first, closest sets as usual, and
    // at least one GPU must be left for the models that share.
    let mut placed: Vec<Placement> = demands.iter().map(|d| whole(Vec::new(), d)).collect();
    let mut free = vec![true; inv.gpus.len()];
    let whole_ones: Vec<usize> = (0..demands.len())
        .filter(|&i| !demands[i].packable())
        .collect();
    let whole_need: u32 = whole_ones.iter().map(|&i| demands[i].gpus).sum();
    if whole_need as usize >= inv.gpus.len() {
        return Err(shortage::exceeded(demands, inv, true));
    }
    let mut order = whole_ones.clone();
    order.sort_by_key(|&i| std::cmp::Reverse(demands[i].gpus)); // stable: config order on ties
    for i in order {
        let set = best_set(inv, &free, demands[i].gpus as usize);
        for &g in &set {
            free[g] = false;
        }
        placed[i].gpus = set;
    }
    check_alone(demands, &placed, inv, limit)?;

    let open: Vec<usize> = (0..inv.gpus.len()).filter(|&g| free[g]).collect();
    let items: Vec<usize> = (0..demands.len())
        .filter(|&i| demands[i].packable())
        .collect();
    // A model that fits on none of the open GPUs even alone is named on its own.
    if let Some(&g) = open
        .iter()
        .max_by_key(|&&g| (inv.gpus[g].memory_total, std::cmp::Reverse(g)))
    {
        for &i in &items {
            if !demands[i].fits_alone(inv.gpus[g].memory_total, limit) {
                return Err(does_not_fit(
                    demands,
                    inv,
                    limit,
                    misfit::alone(&demands[i], inv, g, limit),
                ));
            }
        }
    }
    let bins = pack(demands, &items, &open, inv, limit, true)
        .or_else(|| pack(demands, &items, &open, inv, limit, false))
        .ok_or_else(|| {
            does_not_fit(
                demands,
                inv,
                limit,
                misfit::packing(demands, &items, &open, inv, limit),
            )
        })?;
    for (g, members) in open.iter().zip(&bins) {
        assign_shares(demands, members, *g, inv, limit, &mut placed);
    }
    Ok(placed)
}

/// The bytes all engines on GPU `g` may use together.
pub(super) fn capacity(inv: &Inventory, g: usize, limit: f64) -> u64 {
    (limit * inv.gpus[g].memory_total as f64) as u64
}

/// Packs `items` (largest first) into the `open` GPUs: worst fit when `spread`, else first
/// fit. Returns the members of each open GPU, or `None` when something does not fit.
fn pack(
    demands: &[MemDemand],
    items: &[usize],
    open: &[usize],
    inv: &Inventory,
    limit: f64,
    spread: bool,
) -> Option<Vec<Vec<usize>>> {
    let largest = open.iter().map(|&g| inv.gpus[g].memory_total).max()?;
    let mut order = items.to_vec();
    order.sort_by_key(|&i| std::cmp::Reverse(demands[i].weight(largest)));
    let mut bins: Vec<Vec<usize>> = vec![Vec::new(); open.len()];
    let mut used: Vec<u64> = vec![0; open.len()];
    for i in order {
        let d = &demands[i];
        let size = |b: usize| inv.gpus[open[b]].memory_total;
        let room = |b: usize| capacity(inv, open[b], limit).saturating_sub(used[b]);
        // Alone, a model only has to fit at its own utilization; beside others, everyone's
        // weight counts against the GPU's allowance.
        let fits = |b: usize| {
            d.fits_alone(size(b), limit) && (bins[b].is_empty() || d.weight(size(b)) <= room(b))
        };
        let mut candidates = (0..open.len()).filter(|&b| fits(b));
        let chosen = if spread {
            candidates.max_by_key(|&b| (room(b), std::cmp::Reverse(b)))
        } else {
            candidates.next()
        }?;
        used[chosen] += d.weight(size(chosen));
        bins[chosen].push(i);
    }
    Some(bins)
}

/// Shares on one GPU: members keep their own fixed shares; the rest of the allowance goes
/// to the others: each its need rounded up to [`SHARE_STEP`], then the rest in proportion to
/// their need, rounded down.
fn assign_shares(
    demands: &[MemDemand],
    members: &[usize],
    g: usize,
    inv: &Inventory,
    limit: f64,
    placed: &mut [Placement],
) {
    let mut members = members.to_vec();
    members.sort_unstable(); // configuration order, for start order and output
    let size = inv.gpus[g].memory_total as f64;
    for &i in &members {
        placed[i].gpus = vec![g];
    }
    if members.len() == 1 {
        let i = members[0];
        placed[i].share = demands[i].whole_share(limit);
        return;
    }
    let need = |i: usize| demands[i].need.expect("packable");
    let own = |i: usize| demands[i].own_share(inv.gpus[g].memory_total);
    let outside: f64 = members.iter().map(|&i| need(i).outside as f64).sum();
    let fixed: f64 = members
        .iter()
        .filter_map(|&i| own(i))
        .map(|u| u * size)
        .sum();
    let inside: f64 = members
        .iter()
        .filter(|&&i| own(i).is_none())
        .map(|&i| need(i).inside as f64)
        .sum();
    let allowance = (limit * size - outside - fixed).max(0.0);
    // Each sharer first gets its need rounded up to the step (a proportional share rounded
    // down could fall just short of a small model's need); what is left goes out in
    // proportion to need, rounded down. The packing counted one step per sharer, so the
    // rounded-up needs fit the allowance.
    let floor_share = |i: usize| (need(i).inside as f64 / size / SHARE_STEP).ceil() * SHARE_STEP;
    let spare = (allowance / size
        - members
            .iter()
            .filter(|&&i| own(i).is_none())
            .map(|&i| floor_share(i))
            .sum::<f64>())
    .max(0.0);
    for &i in &members {
        placed[i].shared = true;
        placed[i].share = match own(i) {
            Some(u) => Some(u),
            None => {
                let extra = spare * need(i).inside as f64 / inside.max(1.0);
                let extra = (extra / SHARE_STEP).floor() * SHARE_STEP;
                Some(floor_share(i) + extra)
            }
        };
    }
}

/// Every model that runs alone on its GPUs must fit them at its utilization.
fn check_alone(
    demands: &[MemDemand],
    placed: &[Placement],
    inv: &Inventory,
    limit: f64,
) -> Result<(), GpuError> {
    for (d, p) in demands.iter().zip(placed) {
        // The smallest of its GPUs is the one it must fit.
        let Some(g) = p
            .gpus
            .iter()
            .copied()
            .min_by_key(|&g| (inv.gpus[g].memory_total, g))
        else {
            continue;
        };
        let size = inv.gpus[g].memory_total;
        if size == 0 || d.fits_alone(size, limit) {
            continue;
        }
        return Err(does_not_fit(
            demands,
            inv,
            limit,
            misfit::alone(d, inv, g, limit),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
