//! The words of the "not enough GPUs" error (SPEC §3): how many GPUs the models need and how
//! many there are, every model with its GPU count and estimate, every GPU with its size, and
//! what to change for which model, in one line. The models and GPUs lists are the ones the
//! "do not fit in GPU memory" error ([`super::misfit`]) prints too.

use super::misfit::{either, shown, tenths};
use super::{GpuError, Inventory, MemDemand};

/// `1 GPU`, `2 GPUs`, `no GPU`.
fn count(n: u32) -> String {
    match n {
        0 => "no GPU".into(),
        1 => "1 GPU".into(),
        n => format!("{n} GPUs"),
    }
}

/// `a, b and c`.
fn all_of(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// `but 2 are available`, `but 1 is available`, `but there are none`.
fn supply(n: usize) -> String {
    match n {
        0 => "but there are none".into(),
        1 => "but 1 is available".into(),
        n => format!("but {n} are available"),
    }
}

/// Every model with its GPU count, the flags that give it more than one, and its estimate:
/// `llama on 2 GPUs (-tp 2): 24.5 GiB (...), hf on 1 GPU: no estimate (...): whole GPUs`.
pub(super) fn models(demands: &[MemDemand]) -> String {
    let one = |d: &MemDemand| {
        let flags = if d.gpu_flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", d.gpu_flags)
        };
        format!("{} on {}{flags}: {}", d.name, count(d.gpus), d.summary)
    };
    demands.iter().map(one).collect::<Vec<_>>().join(", ")
}

/// Every GPU with its size: `0 24.0 GiB, 1 24.0 GiB`, `0 (size unknown)`, `none`.
pub(super) fn gpus(inv: &Inventory) -> String {
    if inv.gpus.is_empty() {
        return "none".into();
    }
    let one = |g: &super::Gpu| match g.memory_total {
        0 => format!("{} (size unknown)", g.visible_id),
        size => format!("{} {}", g.visible_id, shown(tenths(size))),
    };
    inv.gpus.iter().map(one).collect::<Vec<_>>().join(", ")
}

/// How to give `d` fewer GPUs: its own flags where known.
fn fewer(d: &MemDemand) -> String {
    if d.gpu_flags.is_empty() {
        format!("lower {}'s tensor/pipeline-parallel size", d.name)
    } else {
        format!("lower {}'s {}", d.name, d.gpu_flags)
    }
}

/// What to change when the models in `whole` need whole GPUs the machine lacks.
fn fixes(demands: &[MemDemand], whole: &[&MemDemand], inv: &Inventory) -> Vec<String> {
    let mut fixes: Vec<String> = whole
        .iter()
        .filter(|d| d.gpus > 1)
        .map(|d| fewer(d))
        .collect();
    let several = demands.iter().filter(|d| d.gpus > 0).count() > 1;
    let sizes_known = !inv.gpus.is_empty() && inv.gpus.iter().all(|g| g.memory_total > 0);
    if several && !sizes_known && demands.iter().any(MemDemand::packable) {
        fixes.push(format!(
            "GPU sizes in MODELMUX_GPUS ({}x80GiB) so that models can share GPUs",
            inv.gpus.len().max(1)
        ));
    }
    if several {
        for d in whole.iter().filter(|d| d.gpus == 1 && d.need.is_none()) {
            fixes.push(format!(
                "{}'s files on disk so that it has an estimate and can share a GPU",
                d.name
            ));
        }
        fixes.push("serve fewer models".into());
    }
    fixes.push("a shape with more GPUs".into());
    fixes
}

/// The error when the models need more GPUs than `inv` has. With `sharing`, the models that
/// can share a GPU (one GPU, an estimate) count for one GPU together; the others need whole
/// GPUs each.
pub(super) fn exceeded(demands: &[MemDemand], inv: &Inventory, sharing: bool) -> GpuError {
    let (whole, sharers): (Vec<&MemDemand>, Vec<&MemDemand>) = demands
        .iter()
        .filter(|d| d.gpus > 0)
        .partition(|d| !(sharing && d.packable()));
    let whole_need: u32 = whole.iter().map(|d| d.gpus).sum();
    let available = supply(inv.gpus.len());
    let problem = if sharers.is_empty() {
        format!("the models need {} {available}", count(whole_need))
    } else {
        let mut parts: Vec<String> = whole
            .iter()
            .map(|d| {
                let s = if d.gpus == 1 { "" } else { "s" };
                format!("{} whole GPU{s} for {}", d.gpus, d.name)
            })
            .collect();
        let names: Vec<String> = sharers.iter().map(|d| d.name.clone()).collect();
        parts.push(format!("1 for {} to share", all_of(&names)));
        format!(
            "the models need at least {} {available}: {}",
            count(whole_need + 1),
            all_of(&parts)
        )
    };
    GpuError::Exceeded {
        problem,
        models: models(demands),
        gpus: gpus(inv),
        fix: either(&fixes(demands, &whole, inv)),
    }
}

/// The error when `d`, which needs whole GPUs, finds only `free` GPUs nobody holds beside the
/// models already placed (`fixed`).
pub(super) fn beside(
    fixed: &[&MemDemand],
    d: &MemDemand,
    free: usize,
    inv: &Inventory,
) -> GpuError {
    let mut all: Vec<MemDemand> = fixed.iter().map(|f| (*f).clone()).collect();
    all.push(d.clone());
    let mut fix = Vec::new();
    if d.gpus > 1 {
        fix.push(fewer(d));
    }
    if d.gpus == 1 && d.need.is_none() {
        fix.push(format!(
            "{}'s files on disk so that it has an estimate and can share a GPU",
            d.name
        ));
    }
    fix.push("fewer models beside it".into());
    fix.push("a shape with more GPUs".into());
    let left = match free {
        0 => "none is".to_string(),
        1 => "1 is".to_string(),
        n => format!("{n} are"),
    };
    GpuError::Exceeded {
        problem: format!(
            "{} needs {} of its own but {left} free beside the other models",
            d.name,
            count(d.gpus)
        ),
        models: models(&all),
        gpus: gpus(inv),
        fix: either(&fix),
    }
}

#[cfg(test)]
mod tests {
    use crate::gpu::{Gpu, GpuSource, Inventory, MemDemand, Need, place};

    const GIB: u64 = 1 << 30;

    fn machine(sizes_gib: &[u64]) -> Inventory {
        Inventory {
            source: GpuSource::Override,
            note: None,
            disabled: false,
            gpus: (0..sizes_gib.len())
                .map(|i| Gpu {
                    index: i as u32,
                    uuid: String::new(),
                    name: "fake".into(),
                    memory_total: sizes_gib[i] * GIB,
                    memory_free: sizes_gib[i] * GIB,
                    visible_id: i.to_string(),
                    memory_measured: false,
                })
                .collect(),
            distance: Vec::new(),
        }
    }

    /// A vLLM model of `total_gib` per GPU on `gpus` GPUs (`-tp N` when several).
    fn model(name: &str, gpus: u32, total_gib: u64) -> MemDemand {
        MemDemand {
            name: name.into(),
            gpus,
            need: Some(Need {
                inside: (total_gib - 1) * GIB,
                outside: GIB,
            }),
            fixed_share: None,
            fraction_flag: Some("--gpu-memory-utilization"),
            gpu_flags: if gpus > 1 {
                format!("-tp {gpus}")
            } else {
                String::new()
            },
            summary: format!("{total_gib}.0 GiB"),
        }
    }

    fn hf(name: &str) -> MemDemand {
        MemDemand {
            need: None,
            summary: "no estimate (not on disk): whole GPUs".into(),
            ..model(name, 1, 1)
        }
    }

    fn refusal(demands: &[MemDemand], sizes: &[u64]) -> String {
        place(demands, &machine(sizes), 0.92)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_tp_model_taking_every_gpu_names_every_model_every_gpu_and_its_flag() {
        // The review's case: `-tp 2` beside a small model on two GPUs. It said only that the
        // models with whole GPUs "took every GPU", without naming them or their flag.
        assert_eq!(
            refusal(&[model("big", 2, 20), model("small", 1, 4)], &[24, 24]),
            "the models need at least 3 GPUs but 2 are available: 2 whole GPUs for big and 1 \
             for small to share; models: big on 2 GPUs (-tp 2): 20.0 GiB, small on 1 GPU: 4.0 \
             GiB; GPUs: 0 24.0 GiB, 1 24.0 GiB; fix: lower big's -tp 2, serve fewer models or \
             a shape with more GPUs"
        );
    }

    #[test]
    fn a_tp_model_beyond_the_gpus_still_names_the_models_that_would_share() {
        // `-tp 2` and a small model on one GPU: the error listed only `big needs 2`.
        assert_eq!(
            refusal(&[model("big", 2, 20), model("small", 1, 4)], &[80]),
            "the models need at least 3 GPUs but 1 is available: 2 whole GPUs for big and 1 \
             for small to share; models: big on 2 GPUs (-tp 2): 20.0 GiB, small on 1 GPU: 4.0 \
             GiB; GPUs: 0 80.0 GiB; fix: lower big's -tp 2, serve fewer models or a shape \
             with more GPUs"
        );
        // Alone, it is the one to change; serving fewer models is no advice.
        assert_eq!(
            refusal(&[model("big", 2, 20)], &[80]),
            "the models need 2 GPUs but 1 is available; models: big on 2 GPUs (-tp 2): 20.0 \
             GiB; GPUs: 0 80.0 GiB; fix: lower big's -tp 2 or a shape with more GPUs"
        );
    }

    #[test]
    fn models_without_an_estimate_are_named_as_taking_whole_gpus() {
        // Nothing can share: every model with its count, and each one's fix.
        assert_eq!(
            refusal(&[model("big", 2, 20), hf("hub")], &[24, 24]),
            "the models need 3 GPUs but 2 are available; models: big on 2 GPUs (-tp 2): 20.0 \
             GiB, hub on 1 GPU: no estimate (not on disk): whole GPUs; GPUs: 0 24.0 GiB, 1 \
             24.0 GiB; fix: lower big's -tp 2, hub's files on disk so that it has an estimate \
             and can share a GPU, serve fewer models or a shape with more GPUs"
        );
        // Some can share, the rest need whole GPUs: all of them counted and named.
        let demands = [
            model("a", 2, 20),
            model("s1", 1, 4),
            hf("hub"),
            model("b", 2, 20),
            model("s2", 1, 4),
        ];
        let e = refusal(&demands, &[24, 24]);
        assert!(
            e.starts_with(
                "the models need at least 6 GPUs but 2 are available: 2 whole GPUs for a, 1 \
                 whole GPU for hub, 2 whole GPUs for b and 1 for s1 and s2 to share; models: a \
                 on 2 GPUs (-tp 2): 20.0 GiB, s1 on 1 GPU: 4.0 GiB, hub on 1 GPU: no estimate"
            ),
            "{e}"
        );
        assert!(
            e.ends_with(
                "fix: lower a's -tp 2, lower b's -tp 2, hub's files on disk so that it has an \
                 estimate and can share a GPU, serve fewer models or a shape with more GPUs"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_machine_without_gpus_says_so() {
        let e = refusal(&[model("a", 1, 4)], &[]);
        assert_eq!(
            e,
            "the models need 1 GPU but there are none; models: a on 1 GPU: 4.0 GiB; GPUs: \
             none; fix: a shape with more GPUs"
        );
    }
}
