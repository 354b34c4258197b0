//! Who gets which GPU: disjoint, deterministic, largest demand first, and a multi-GPU model
//! gets GPUs that are close to each other (NVLink, then the nearest PCIe level).

use super::{GpuError, GpuSource, Inventory, MemDemand, shortage};

/// The old name of [`GpuError`], kept for callers that still use it.
pub type AllocError = GpuError;

/// Shares the inventory's GPUs out, whole: each model gets `gpus` of its own. Returns, per
/// demand in input order, positions into `inv.gpus`, ascending. With a disabled inventory
/// (`MODELMUX_GPUS=none`) everyone gets none. The error names every model's GPU count and
/// estimate and every GPU's size.
pub fn allocate(demands: &[MemDemand], inv: &Inventory) -> Result<Vec<Vec<usize>>, GpuError> {
    if inv.disabled {
        return Ok(vec![Vec::new(); demands.len()]);
    }
    let needed: u32 = demands.iter().map(|d| d.gpus).sum();
    if needed as usize > inv.gpus.len() {
        if inv.gpus.is_empty() && inv.source == GpuSource::Unavailable {
            return Err(GpuError::NoGpus {
                note: inv.note.clone().unwrap_or_else(|| "NVML found none".into()),
                models: shortage::models(demands),
            });
        }
        return Err(shortage::exceeded(demands, inv, false));
    }
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(demands[i].gpus)); // stable: config order on ties
    let mut free: Vec<bool> = vec![true; inv.gpus.len()];
    let mut result = vec![Vec::new(); demands.len()];
    for i in order {
        let set = best_set(inv, &free, demands[i].gpus as usize);
        for &g in &set {
            free[g] = false;
        }
        result[i] = set;
    }
    Ok(result)
}

/// (largest pairwise distance, sum of pairwise distances, the positions): lower is better.
type Score = (u8, u32, Vec<usize>);

fn score(inv: &Inventory, set: &[usize]) -> Score {
    let mut max = 0u8;
    let mut sum = 0u32;
    for (n, &a) in set.iter().enumerate() {
        for &b in &set[n + 1..] {
            let d = inv.distance(a, b);
            max = max.max(d);
            sum += u32::from(d);
        }
    }
    let mut sorted = set.to_vec();
    sorted.sort_unstable();
    (max, sum, sorted)
}

/// The closest set of `k` free GPUs: grow greedily from every free seed, keep the best.
pub(super) fn best_set(inv: &Inventory, free: &[bool], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let candidates: Vec<usize> = (0..free.len()).filter(|&g| free[g]).collect();
    let mut best: Option<Score> = None;
    for &seed in &candidates {
        let mut set = vec![seed];
        while set.len() < k {
            let next = candidates
                .iter()
                .copied()
                .filter(|g| !set.contains(g))
                .min_by_key(|&g| {
                    let dists = set.iter().map(|&s| inv.distance(s, g));
                    (
                        dists.clone().max().unwrap_or(0),
                        dists.map(u32::from).sum::<u32>(),
                        g,
                    )
                })
                .expect("supply was checked against demand");
            set.push(next);
        }
        let s = score(inv, &set);
        if best.as_ref().is_none_or(|b| s < *b) {
            best = Some(s);
        }
    }
    best.map(|(_, _, set)| set).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Gpu;
    use proptest::prelude::*;

    fn fake(n: usize, islands: usize) -> Inventory {
        let per = n.div_ceil(islands.max(1));
        let gpus = (0..n)
            .map(|i| Gpu {
                index: i as u32,
                uuid: format!("GPU-{i}"),
                name: "fake".into(),
                memory_total: 0,
                memory_free: 0,
                visible_id: i.to_string(),
                memory_measured: false,
            })
            .collect();
        let distance = (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| if a / per == b / per { 0 } else { 6 })
                    .collect()
            })
            .collect();
        Inventory {
            source: GpuSource::Nvml,
            note: None,
            disabled: false,
            gpus,
            distance,
        }
    }

    fn d(name: &str, gpus: u32) -> MemDemand {
        MemDemand {
            name: name.into(),
            gpus,
            need: None,
            fixed_share: None,
            fraction_flag: Some("--gpu-memory-utilization"),
            gpu_flags: if gpus > 1 {
                format!("-tp {gpus}")
            } else {
                String::new()
            },
            summary: "no estimate (not on disk): whole GPUs".into(),
        }
    }

    #[test]
    fn islands_are_kept_whole() {
        // Two NVLink islands of 4 (GPUs 0-3 and 4-7), interleaved so that island 1 is not
        // simply the first indices: 0,2,4,6 and 1,3,5,7.
        let mut inv = fake(8, 2);
        for a in 0..8 {
            for b in 0..8 {
                inv.distance[a][b] = if a % 2 == b % 2 { 0 } else { 6 };
            }
        }
        let got = allocate(&[d("small-a", 2), d("big", 4), d("small-b", 2)], &inv).unwrap();
        assert_eq!(got[1], vec![0, 2, 4, 6]);
        assert_eq!(got[0], vec![1, 3]);
        assert_eq!(got[2], vec![5, 7]);
    }

    #[test]
    fn over_demand_names_every_model_every_gpu_and_the_flags_to_lower() {
        let e = allocate(&[d("a", 4), d("b", 2), d("c", 1)], &fake(4, 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the models need 7 GPUs but 4 are available; models: a on 4 GPUs (-tp 4): no \
             estimate (not on disk): whole GPUs, b on 2 GPUs (-tp 2): no estimate (not on disk): \
             whole GPUs, c on 1 GPU: no estimate (not on disk): whole GPUs; GPUs: 0 (size \
             unknown), 1 (size unknown), 2 (size unknown), 3 (size unknown); fix: lower a's \
             -tp 4, lower b's -tp 2, c's files on disk so that it has an estimate and can share \
             a GPU, serve fewer models or a shape with more GPUs"
        );
        let e = allocate(&[d("a", 2)], &fake(1, 1)).unwrap_err().to_string();
        assert!(
            e.starts_with("the models need 2 GPUs but 1 is available; models: a on 2 GPUs"),
            "{e}"
        );
        assert!(
            e.ends_with("fix: lower a's -tp 2 or a shape with more GPUs"),
            "{e}"
        );
    }

    #[test]
    fn no_gpu_points_to_the_override() {
        let inv = Inventory {
            source: GpuSource::Unavailable,
            note: Some("NVML is not available (x)".into()),
            disabled: false,
            gpus: vec![],
            distance: vec![],
        };
        let e = allocate(&[d("a", 1)], &inv).unwrap_err().to_string();
        assert!(e.starts_with("no GPU found (NVML is not available (x)) but the models need GPUs: a on 1 GPU: no estimate (not on disk): whole GPUs; set MODELMUX_GPUS"), "{e}");
    }

    proptest! {
        #[test]
        fn never_overlaps_never_exceeds_and_is_deterministic(
            n in 0usize..12,
            islands in 1usize..4,
            needs in proptest::collection::vec(0u32..5, 0..6),
        ) {
            let inv = fake(n, islands);
            let demands: Vec<MemDemand> = needs.iter().enumerate().map(|(i, &g)| d(&format!("m{i}"), g)).collect();
            let first = allocate(&demands, &inv);
            prop_assert_eq!(&first, &allocate(&demands, &inv));
            let total: u32 = needs.iter().sum();
            match first {
                Ok(sets) => {
                    prop_assert!(total as usize <= n);
                    let mut seen = std::collections::HashSet::new();
                    for (set, need) in sets.iter().zip(&needs) {
                        prop_assert_eq!(set.len(), *need as usize);
                        for g in set {
                            prop_assert!(*g < n);
                            prop_assert!(seen.insert(*g), "GPU {} given twice", g);
                        }
                    }
                }
                Err(_) => prop_assert!(total as usize > n),
            }
        }
    }
}
