//! Placing one model beside models whose GPUs and shares are already fixed: the running
//! models at a reload (they are not moved), or the always-loaded models for an on-demand
//! model that takes turns (SPEC §9). The same arithmetic, [`Claim`], tells the supervisor
//! at run time whether a model fits beside the engines that hold memory now.

use super::allocate::best_set;
use super::misfit::{self, Misfit, does_not_fit};
use super::pack::{SHARE_STEP, capacity};
use super::shortage;
use super::{GpuError, Inventory, MemDemand, Placement};
use crate::weights::{CUDA_CONTEXT, CUDA_GRAPHS};

/// What an engine holds on one of its GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The whole GPU (vLLM's default utilization, or a GPU of unknown size).
    Whole,
    /// This many bytes: its share of the GPU plus what the engine uses beyond it.
    Bytes(u64),
}

impl Claim {
    /// The claim of an engine with `share` (`None`: the whole GPU) and `outside` bytes beyond
    /// its utilization (`None`: no estimate, the CUDA context and graphs are assumed) on a
    /// GPU of `size` bytes (0: unknown, so whole).
    pub fn of(share: Option<f64>, outside: Option<u64>, size: u64) -> Claim {
        match share {
            Some(s) if size > 0 => Claim::Bytes(
                (s * size as f64) as u64 + outside.unwrap_or(CUDA_CONTEXT + CUDA_GRAPHS),
            ),
            _ => Claim::Whole,
        }
    }
}

/// Whether `new` fits on a GPU of `size` where `held` is claimed already, all engines together
/// under `limit`. A model alone always fits (it was planned to fit alone).
pub fn fits(held: &[Claim], new: Claim, size: u64, limit: f64) -> bool {
    if held.is_empty() {
        return true;
    }
    if new == Claim::Whole || held.contains(&Claim::Whole) {
        return false;
    }
    let used: u64 = held
        .iter()
        .map(|c| match c {
            Claim::Bytes(b) => *b,
            Claim::Whole => u64::MAX,
        })
        .fold(0u64, u64::saturating_add);
    let Claim::Bytes(want) = new else {
        return false;
    };
    used.saturating_add(want) <= (limit * size as f64) as u64
}

/// Places `d` beside `fixed` (each a demand and its placement, which stays as it is): a
/// model that needs whole GPUs (several, or no estimate) gets GPUs nobody holds; one that can
/// share goes where the most room is left (a GPU nobody holds counts as the most), with the
/// room left on that GPU as its share. The error names the model, what it needs and what is
/// left.
pub fn place_beside(
    fixed: &[(&MemDemand, &Placement)],
    d: &MemDemand,
    inv: &Inventory,
    limit: f64,
) -> Result<Placement, GpuError> {
    let alone_share = d.whole_share(limit);
    if inv.disabled {
        return Ok(Placement {
            gpus: Vec::new(),
            share: None,
            shared: false,
        });
    }
    let n = inv.gpus.len();
    let mut held: Vec<Vec<Claim>> = vec![Vec::new(); n];
    for (fd, fp) in fixed {
        for &g in &fp.gpus {
            let outside = fd.need.map(|n| n.outside);
            held[g].push(Claim::of(fp.share, outside, inv.gpus[g].memory_total));
        }
    }
    let free: Vec<bool> = held.iter().map(Vec::is_empty).collect();
    let sizes_known = inv.gpus.iter().all(|g| g.memory_total > 0);
    // Errors name every model: the ones already placed, then this one.
    let others: Vec<&MemDemand> = fixed.iter().map(|(fd, _)| *fd).collect();
    let mut all: Vec<MemDemand> = others.iter().map(|fd| (*fd).clone()).collect();
    all.push(d.clone());
    let named = |misfit: Misfit| does_not_fit(&all, inv, limit, misfit);
    if !d.packable() || !sizes_known {
        let open = free.iter().filter(|f| **f).count();
        if open < d.gpus as usize {
            return Err(shortage::beside(&others, d, open, inv));
        }
        let set = best_set(inv, &free, d.gpus as usize);
        if let Some(&g) = set.first()
            && inv.gpus[g].memory_total > 0
            && !d.fits_alone(inv.gpus[g].memory_total, limit)
        {
            return Err(named(misfit::alone(d, inv, g, limit)));
        }
        return Ok(Placement {
            gpus: set,
            share: alone_share,
            shared: false,
        });
    }
    let used = |g: usize| -> u64 {
        held[g]
            .iter()
            .map(|c| match c {
                Claim::Bytes(b) => *b,
                Claim::Whole => u64::MAX,
            })
            .fold(0u64, u64::saturating_add)
    };
    let room = |g: usize| capacity(inv, g, limit).saturating_sub(used(g));
    let fits_on = |g: usize| {
        let size = inv.gpus[g].memory_total;
        d.fits_alone(size, limit) && (free[g] || d.weight(size) <= room(g))
    };
    let Some(g) = (0..n)
        .filter(|&g| fits_on(g))
        .max_by_key(|&g| (free[g], room(g), std::cmp::Reverse(g)))
    else {
        let rooms: Vec<u64> = (0..n).map(room).collect();
        return Err(named(misfit::beside(d, inv, &rooms)));
    };
    if free[g] {
        return Ok(Placement {
            gpus: vec![g],
            share: alone_share,
            shared: false,
        });
    }
    let size = inv.gpus[g].memory_total as f64;
    // Its own value, or for an engine without a fraction flag its estimate; else the room
    // left.
    let share = d.own_share(inv.gpus[g].memory_total).unwrap_or_else(|| {
        let outside = d.need.map_or(0, |n| n.outside) as f64;
        let bytes = (room(g) as f64 - outside).max(0.0);
        ((bytes / size) / SHARE_STEP).floor() * SHARE_STEP
    });
    Ok(Placement {
        gpus: vec![g],
        share: Some(share),
        shared: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{Gpu, GpuSource, Need};

    const GIB: u64 = 1 << 30;

    fn inv(sizes: &[u64]) -> Inventory {
        Inventory {
            source: GpuSource::Override,
            note: None,
            disabled: false,
            gpus: sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| Gpu {
                    index: i as u32,
                    uuid: format!("GPU-{i}"),
                    name: "test".into(),
                    memory_total: s * GIB,
                    memory_free: s * GIB,
                    visible_id: i.to_string(),
                    memory_measured: false,
                })
                .collect(),
            distance: vec![vec![0; sizes.len()]; sizes.len()],
        }
    }

    fn demand(name: &str, inside_gib: u64) -> MemDemand {
        MemDemand {
            name: name.into(),
            gpus: 1,
            need: Some(Need {
                inside: inside_gib * GIB,
                outside: GIB,
            }),
            fixed_share: None,
            fraction_flag: Some("--gpu-memory-utilization"),
            gpu_flags: String::new(),
            summary: format!("{}.0 GiB", inside_gib + 1),
        }
    }

    #[test]
    fn a_model_takes_the_room_left_beside_fixed_ones() {
        let inv = inv(&[80]);
        let a = demand("a", 20);
        let pa = Placement {
            gpus: vec![0],
            share: Some(0.3),
            shared: true,
        };
        let p = place_beside(&[(&a, &pa)], &demand("b", 30), &inv, 0.92).unwrap();
        assert_eq!(p.gpus, [0]);
        assert!(p.shared);
        // 0.92 × 80 − (0.3 × 80 + 1) − 1 GiB outside = 47.6 GiB = share 0.595
        let share = p.share.unwrap();
        assert!((share - 0.595).abs() < 0.002, "{share}");
        // Too big for what is left: the error names it and the room.
        let e = place_beside(&[(&a, &pa)], &demand("c", 60), &inv, 0.92)
            .unwrap_err()
            .to_string();
        // 60 GiB inside + 1 GiB outside + 0.1 GiB (0.001 × 80) to round its share; 0.92 × 80
        // − (0.3 × 80 + 1) = 48.6 GiB left.
        assert!(
            e.contains(
                "c needs 61.1 GiB (c 61.0 + 0.1 to round its share) but the room left beside \
                 the other models is GPU 0 48.6 GiB"
            ),
            "{e}"
        );
        // Every model is listed, the placed one too, and every GPU.
        assert!(
            e.contains("; models: a on 1 GPU: 21.0 GiB, c on 1 GPU: 61.0 GiB; GPUs: 0 80.0 GiB"),
            "{e}"
        );
    }

    #[test]
    fn a_model_short_of_whole_gpus_names_every_model_and_its_flag() {
        let inv = inv(&[80, 80]);
        let a = demand("a", 20);
        let pa = Placement {
            gpus: vec![0],
            share: None,
            shared: false,
        };
        let big = MemDemand {
            gpus: 2,
            gpu_flags: "-tp 2".into(),
            ..demand("big", 30)
        };
        let e = place_beside(&[(&a, &pa)], &big, &inv, 0.92)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "big needs 2 GPUs of its own but 1 is free beside the other models; models: a on \
             1 GPU: 21.0 GiB, big on 2 GPUs (-tp 2): 31.0 GiB; GPUs: 0 80.0 GiB, 1 80.0 GiB; \
             fix: lower big's -tp 2, fewer models beside it or a shape with more GPUs"
        );
    }

    #[test]
    fn an_empty_gpu_comes_first_and_whole_gpus_are_never_shared() {
        let inv = inv(&[80, 80]);
        let a = demand("a", 20);
        let whole = Placement {
            gpus: vec![0],
            share: None,
            shared: false,
        };
        let p = place_beside(&[(&a, &whole)], &demand("b", 10), &inv, 0.92).unwrap();
        assert_eq!((p.gpus.clone(), p.share, p.shared), (vec![1], None, false));
        let both = Placement {
            gpus: vec![1],
            share: None,
            shared: false,
        };
        assert!(place_beside(&[(&a, &whole), (&a, &both)], &demand("b", 10), &inv, 0.92).is_err());
    }

    #[test]
    fn claims_fit_under_the_limit_and_alone_always_fits() {
        let size = 80 * GIB;
        let half = Claim::of(Some(0.45), Some(GIB), size);
        assert!(fits(&[], Claim::Whole, size, 0.92));
        assert!(fits(&[half], half, size, 0.95));
        assert!(!fits(&[half], half, size, 0.92));
        assert!(!fits(&[half], Claim::Whole, size, 0.92));
        assert!(!fits(&[Claim::Whole], half, size, 0.92));
        assert_eq!(Claim::of(Some(0.5), None, 0), Claim::Whole);
    }
}
