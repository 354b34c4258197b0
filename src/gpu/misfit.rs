//! The words of the "do not fit in GPU memory" error (SPEC §3.1): what does not fit where,
//! and what to change for which model.
//!
//! Every figure is one the planner compared. A model's need is the per-GPU estimate that the
//! error's `models:` list prints, split, where the comparison needs it, into the part inside
//! the engine's memory fraction and the CUDA context and graphs outside it (comparing the
//! whole estimate with `0.9 × size` would be wrong, and printing only the inside part looked
//! like a second, smaller estimate). Figures are in tenths of a GiB, and a printed sum is the
//! sum of its printed parts, so a reader adding them up gets the printed total.

use super::pack::{MemDemand, SHARE_STEP, VLLM_DEFAULT_UTILIZATION, capacity};
use super::{GpuError, Inventory};

/// One tenth of a GiB, the unit of every figure in these messages.
const TENTH: f64 = (1u64 << 30) as f64 / 10.0;

/// vLLM's spelling of the memory fraction: its models also get vLLM's other flag names.
const VLLM_FLAG: &str = "--gpu-memory-utilization";

/// `MODELMUX_GPU_MEMORY_LIMIT`'s default (the config's own, repeated: gpu does not read config;
/// a test holds them equal): a limit set below it may be raised to it.
const DEFAULT_LIMIT: f64 = 0.92;

/// What the message says: what does not fit, and what to change.
pub(super) struct Misfit {
    /// What does not fit where.
    pub problem: String,
    /// What to change, naming the model and its setting.
    pub fix: String,
}

/// Bytes in tenths of a GiB, rounded to the nearest.
pub(super) fn tenths(bytes: u64) -> u64 {
    (bytes as f64 / TENTH).round() as u64
}

/// Tenths of a GiB as `18.5 GiB`.
pub(super) fn shown(t: u64) -> String {
    format!("{}.{} GiB", t / 10, t % 10)
}

/// Tenths of a GiB as `18.5`, for the parts of a sum.
fn part(t: u64) -> String {
    format!("{}.{}", t / 10, t % 10)
}

/// `a, b or c`.
pub(super) fn either(options: &[String]) -> String {
    match options {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// `bytes` of a GPU of `size` as a fraction rounded up to hundredths (a hair of float error
/// does not add one).
fn hundredths_up(bytes: u64, size: u64) -> f64 {
    (bytes as f64 / size as f64 * 100.0 - 1e-9).ceil() / 100.0
}

/// The smallest fraction, in hundredths, that holds `inside` bytes of a GPU of `size`, where
/// what comes on top (`outside`) still fits the GPU.
fn fraction_for(inside: u64, outside: u64, size: u64) -> Option<f64> {
    let want = hundredths_up(inside, size);
    (want <= 1.0 && want * size as f64 + outside as f64 <= size as f64).then_some(want)
}

/// How to split a model over more GPUs, in vLLM's words for vLLM models.
fn split(d: &MemDemand) -> String {
    if d.fraction_flag == Some(VLLM_FLAG) {
        format!("-tp N in {}'s params to split it over N GPUs", d.name)
    } else {
        format!(
            "tensor parallelism for {} to split it over several GPUs",
            d.name
        )
    }
}

/// How to make a model's KV cache smaller, in vLLM's words for vLLM models; `why` is added
/// in the parentheses.
fn shorter(d: &MemDemand, why: &str) -> String {
    if d.fraction_flag == Some(VLLM_FLAG) {
        format!(
            "a smaller --max-model-len in {}'s params ({why}less KV cache)",
            d.name
        )
    } else {
        format!("a shorter context for {} ({why}less KV cache)", d.name)
    }
}

/// Why `d` does not fit GPU `g` even alone, and what to change.
pub(super) fn alone(d: &MemDemand, inv: &Inventory, g: usize, limit: f64) -> Misfit {
    let need = d.need.unwrap_or(super::Need {
        inside: 0,
        outside: 0,
    });
    let util = d.alone_utilization(limit);
    let limited =
        d.fixed_share.is_none() && (d.fraction_flag.is_none() || limit < VLLM_DEFAULT_UTILIZATION);
    let source = match (d.fixed_share, d.fraction_flag) {
        (Some(_), Some(flag)) => format!("its own {flag}"),
        (Some(_), None) => "its own share".to_string(),
        _ if limited => "MODELMUX_GPU_MEMORY_LIMIT".to_string(),
        (None, Some(VLLM_FLAG)) => "vLLM's utilization".to_string(),
        (None, flag) => format!("the default {}", flag.unwrap_or("share")),
    };
    let gpu = &inv.gpus[g];
    let size = gpu.memory_total;
    let (inside, outside) = (tenths(need.inside), tenths(need.outside));
    let parts = if outside == 0 {
        format!(" within {source} {util}")
    } else {
        format!(
            ": {} within {source} {util} + {} of CUDA context and graphs outside it",
            part(inside),
            shown(outside)
        )
    };
    let problem = format!(
        "{} needs {} per GPU{parts}, but {util} of GPU {} ({}) allows {}",
        d.name,
        shown(inside + outside),
        gpu.visible_id,
        shown(tenths(size)),
        shown(tenths((util * size as f64) as u64)),
    );

    let mut fixes = Vec::new();
    let want = fraction_for(need.inside, need.outside, size);
    match (want, d.fixed_share, d.fraction_flag) {
        (Some(w), Some(u), Some(flag)) => fixes.push(format!(
            "raise {flag} in {}'s params from {u} to {w} or more",
            d.name
        )),
        (Some(w), None, _)
            if limited && (d.fraction_flag.is_none() || w <= VLLM_DEFAULT_UTILIZATION) =>
        {
            fixes.push(format!(
                "raise MODELMUX_GPU_MEMORY_LIMIT from {limit} to {w} or more"
            ))
        }
        (Some(w), None, Some(flag)) => {
            fixes.push(format!("set {flag} {w} (or more) in {}'s params", d.name))
        }
        _ => {}
    }
    fixes.push(split(d));
    fixes.push(shorter(d, ""));
    fixes.push("a shape with bigger GPUs".into());
    Misfit {
        problem,
        fix: either(&fixes),
    }
}

/// What `d` counts for on a shared GPU of `size`, without the step its share may be rounded
/// up by: `(tenths, the part as printed)`.
fn counted(d: &MemDemand, size: u64) -> (u64, String) {
    let need = d.need.expect("packable");
    match d.fixed_share {
        Some(u) => {
            let t = tenths((u * size as f64) as u64 + need.outside);
            let flag = d.fraction_flag.unwrap_or("share");
            let text = format!(
                "{} {} (its own {flag} {u} of {} + {} outside it)",
                d.name,
                part(t),
                shown(tenths(size)),
                part(tenths(need.outside))
            );
            (t, text)
        }
        None => {
            let t = tenths(need.inside + need.outside);
            (t, format!("{} {}", d.name, part(t)))
        }
    }
}

/// The step each share without a fixed value may be rounded up by, in bytes, on a GPU of
/// `size` (the packer counts it for every such sharer).
fn rounding(d: &MemDemand, size: u64) -> u64 {
    if d.fixed_share.is_some() {
        0
    } else {
        (SHARE_STEP * size as f64) as u64
    }
}

/// Why the models in `items` cannot share the `open` GPUs, and what to change.
pub(super) fn packing(
    demands: &[MemDemand],
    items: &[usize],
    open: &[usize],
    inv: &Inventory,
    limit: f64,
) -> Misfit {
    let names: Vec<&str> = items.iter().map(|&i| demands[i].name.as_str()).collect();
    let size = open
        .iter()
        .map(|&g| inv.gpus[g].memory_total)
        .max()
        .expect("place leaves a GPU for the models that share (shortage::exceeded otherwise)");
    // The need: each model's figure, then the rounding the packer allows for, as printed.
    let mut parts: Vec<String> = Vec::new();
    let mut need_t = 0;
    for &i in items {
        let (t, text) = counted(&demands[i], size);
        need_t += t;
        parts.push(text);
    }
    let round_bytes: u64 = items.iter().map(|&i| rounding(&demands[i], size)).sum();
    if tenths(round_bytes) > 0 {
        need_t += tenths(round_bytes);
        parts.push(format!("{} to round the shares", part(tenths(round_bytes))));
    }
    // The room: each GPU's allowance under the limit, as printed.
    let rooms: Vec<u64> = open
        .iter()
        .map(|&g| tenths(capacity(inv, g, limit)))
        .collect();
    let room_t: u64 = rooms.iter().sum();
    let ids: Vec<&str> = open
        .iter()
        .map(|&g| inv.gpus[g].visible_id.as_str())
        .collect();
    let room = if open.len() == 1 {
        format!(
            "GPU {} allows {} (MODELMUX_GPU_MEMORY_LIMIT {limit} of {})",
            ids[0],
            shown(room_t),
            shown(tenths(inv.gpus[open[0]].memory_total))
        )
    } else {
        format!(
            "GPUs {} allow {} = {} (MODELMUX_GPU_MEMORY_LIMIT {limit} of each)",
            ids.join(","),
            rooms
                .iter()
                .map(|&t| part(t))
                .collect::<Vec<_>>()
                .join(" + "),
            shown(room_t)
        )
    };
    let exact_need: u64 = items.iter().map(|&i| demands[i].weight(size)).sum::<u64>();
    let exact_room: u64 = open.iter().map(|&g| capacity(inv, g, limit)).sum();
    let why = if exact_need > exact_room || open.len() == 1 {
        String::new()
    } else {
        "; that is enough in all, but each model must fit on one GPU and no split of them \
         over the GPUs does"
            .into()
    };
    let problem = format!(
        "{} need {} ({}) but {room}{why}",
        names.join(", "),
        shown(need_t),
        parts.join(" + ")
    );

    let mut fixes = vec!["serve fewer models on these GPUs".to_string()];
    let largest = items
        .iter()
        .copied()
        .max_by_key(|&i| (demands[i].weight(size), std::cmp::Reverse(i)));
    if let Some(d) = largest.map(|i| &demands[i])
        && d.fixed_share.is_none()
    {
        let (t, _) = counted(d, size);
        fixes.push(shorter(d, &format!("the largest, {}; ", shown(t))));
    }
    for &i in items {
        let d = &demands[i];
        if let (Some(u), Some(flag)) = (d.fixed_share, d.fraction_flag) {
            fixes.push(format!("lower {flag} {u} in {}'s params", d.name));
        }
    }
    // A limit set below what one GPU needs: raising it is the smallest change.
    if let [g] = open {
        let want = hundredths_up(exact_need, inv.gpus[*g].memory_total);
        if want > limit && want <= DEFAULT_LIMIT {
            fixes.push(format!(
                "raise MODELMUX_GPU_MEMORY_LIMIT from {limit} to {want}"
            ));
        }
    }
    fixes.push("a shape with more or bigger GPUs".into());
    Misfit {
        problem,
        fix: either(&fixes),
    }
}

/// Why `d` does not fit in the room left beside models already placed (`rooms`: per GPU, the
/// bytes left under the limit), and what to change.
pub(super) fn beside(d: &MemDemand, inv: &Inventory, rooms: &[u64]) -> Misfit {
    let size = inv.gpus.iter().map(|g| g.memory_total).max().unwrap_or(0);
    let (t, text) = counted(d, size);
    let round_t = tenths(rounding(d, size));
    let need = if round_t > 0 {
        format!(
            "{} ({text} + {} to round its share)",
            shown(t + round_t),
            part(round_t)
        )
    } else {
        format!("{} ({text})", shown(t))
    };
    let left: Vec<String> = inv
        .gpus
        .iter()
        .zip(rooms)
        .map(|(g, &r)| format!("GPU {} {}", g.visible_id, shown(tenths(r))))
        .collect();
    let mut fixes = vec!["fewer models beside it".to_string()];
    fixes.push(shorter(d, ""));
    fixes.push("a shape with more or bigger GPUs".into());
    Misfit {
        problem: format!(
            "{} needs {need} but the room left beside the other models is {}",
            d.name,
            left.join(", ")
        ),
        fix: either(&fixes),
    }
}

/// The error for `misfit`, with every model's GPU count and estimate and every GPU's size.
pub(super) fn does_not_fit(
    demands: &[MemDemand],
    inv: &Inventory,
    limit: f64,
    misfit: Misfit,
) -> GpuError {
    GpuError::DoesNotFit {
        problem: misfit.problem,
        models: super::shortage::models(demands),
        gpus: super::shortage::gpus(inv),
        limit: limit.to_string(),
        fix: misfit.fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_is_the_configs() {
        assert_eq!(DEFAULT_LIMIT, crate::config::DEFAULT_GPU_MEMORY_LIMIT);
    }

    #[test]
    fn figures_round_to_tenths_and_fractions_up_to_hundredths() {
        let gib = 1u64 << 30;
        assert_eq!(shown(tenths(18 * gib + gib / 2)), "18.5 GiB");
        assert_eq!(part(tenths(gib / 4 * 3)), "0.8");
        assert_eq!(hundredths_up(20 * gib, 80 * gib), 0.25);
        assert_eq!(hundredths_up(20 * gib + 1, 80 * gib), 0.26);
        assert_eq!(fraction_for(79 * gib, gib, 80 * gib), None);
        assert_eq!(either(&["a".into(), "b".into(), "c".into()]), "a, b or c");
    }
}
