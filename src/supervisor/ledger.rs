//! The GPU ledger: what each engine holds on each GPU now, from the snapshot and the launch
//! plans, and whether one more fits (SPEC §9). Always-loaded models keep their room whatever
//! their phase (an operator's start always fits); an on-demand model holds its room while
//! its engine is up, a little (the CUDA context) while it sleeps, nothing when unloaded.
//!
//! [`victims`] picks which idle on-demand models to unload so that a model fits: least
//! recently used first, and only when unloading them is enough.

use std::collections::HashMap;

use crate::config::{LoadMode, UnloadMode};
use crate::gpu::{Claim, fits};
use crate::plan::ModelLaunch;
use crate::state::{ModelStatus, Phase};
use crate::weights::{CUDA_CONTEXT, CUDA_GRAPHS};

/// What one model holds on its GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Its full room.
    Full,
    /// What a sleeping engine keeps (its CUDA context).
    Residual,
    /// Nothing.
    None,
}

/// GPU sizes by `CUDA_VISIBLE_DEVICES` id, and the limit all engines on a GPU stay under.
#[derive(Debug, Clone, Default)]
pub struct Gpus {
    /// Size in bytes (0: unknown) by visible id.
    pub sizes: HashMap<String, u64>,
    /// `MODELMUX_GPU_MEMORY_LIMIT`.
    pub limit: f64,
}

/// One model as the ledger sees it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Its launch (GPUs, share, estimate).
    pub launch: &'a ModelLaunch,
    /// What it holds now.
    pub holding: Holding,
}

/// What a model holds, from its published state. `launching`: a start or wake was ordered
/// but the engine task has not said so yet.
pub fn holding(m: &ModelStatus, launching: bool) -> Holding {
    if m.retired {
        return if m.pid.is_some() || m.state == Phase::Stopping {
            Holding::Full
        } else {
            Holding::None
        };
    }
    if m.load == LoadMode::Always || launching {
        return Holding::Full;
    }
    match m.state {
        Phase::Unloaded | Phase::Stopped | Phase::Failed => Holding::None,
        Phase::Sleeping => Holding::Residual,
        _ => Holding::Full,
    }
}

fn outside(launch: &ModelLaunch) -> u64 {
    launch
        .memory_estimate
        .as_ref()
        .map_or(CUDA_CONTEXT + CUDA_GRAPHS, |e| e.need.outside)
}

/// The claim of `launch` on GPU `gpu` when it holds `holding`.
fn claim(launch: &ModelLaunch, holding: Holding, size: u64) -> Option<Claim> {
    match holding {
        Holding::None => None,
        Holding::Residual => Some(Claim::Bytes(outside(launch))),
        Holding::Full => Some(Claim::of(launch.gpu_share, Some(outside(launch)), size)),
    }
}

impl Gpus {
    /// Whether `new` fits beside `others` on every one of its GPUs.
    pub fn fits(&self, new: &ModelLaunch, others: &[Entry]) -> bool {
        new.gpus.iter().all(|g| {
            let size = self.sizes.get(g).copied().unwrap_or(0);
            let held: Vec<Claim> = others
                .iter()
                .filter(|e| e.launch.gpus.contains(g))
                .filter_map(|e| claim(e.launch, e.holding, size))
                .collect();
            let want = claim(new, Holding::Full, size).expect("full claim");
            fits(&held, want, size, self.limit)
        })
    }
}

/// A model that may be unloaded to make room.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Its position in `others` of [`victims`].
    pub at: usize,
    /// How long it has been idle.
    pub idle_for: std::time::Duration,
    /// How it is unloaded.
    pub unload: UnloadMode,
}

/// What to do to one victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Put it to sleep.
    Sleep,
    /// Stop its engine.
    Stop,
}

/// The fewest least-recently-used candidates whose unloading lets `new` fit beside
/// `others`, with what to do to each; `None` when unloading all of them is not enough (then
/// nothing is unloaded: the load waits for requests to finish elsewhere).
pub fn victims(
    gpus: &Gpus,
    new: &ModelLaunch,
    others: &[Entry],
    candidates: &[Candidate],
) -> Option<Vec<(usize, Eviction)>> {
    let mut order: Vec<Candidate> = candidates
        .iter()
        .copied()
        .filter(|c| c.at < others.len() && others[c.at].holding != Holding::None)
        .collect();
    order.sort_by_key(|c| std::cmp::Reverse(c.idle_for));
    // First as each model is unloaded when idle (sleep keeps its CUDA context), then, if
    // that is not enough, stopping them all the way.
    for stop_all in [false, true] {
        let mut after: Vec<Entry> = others.to_vec();
        let mut chosen = Vec::new();
        for c in &order {
            let e = &mut after[c.at];
            let (holding, how) = match (e.holding, c.unload, stop_all) {
                (Holding::Full, UnloadMode::Sleep, false) => (Holding::Residual, Eviction::Sleep),
                (Holding::Full | Holding::Residual, _, _) => (Holding::None, Eviction::Stop),
                (Holding::None, _, _) => continue,
            };
            e.holding = holding;
            chosen.push((c.at, how));
            if gpus.fits(new, &after) {
                return Some(chosen);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GIB: u64 = 1 << 30;

    fn launch(name: &str, gpus: &[&str], share: Option<f64>) -> ModelLaunch {
        let plan = crate::plan::tests::launch_for_tests(name);
        ModelLaunch {
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
            gpu_share: share,
            ..plan
        }
    }

    fn gpus() -> Gpus {
        Gpus {
            sizes: [("0".to_string(), 80 * GIB), ("1".to_string(), 80 * GIB)].into(),
            limit: 0.92,
        }
    }

    #[test]
    fn models_fit_by_share_and_whole_gpus_are_alone() {
        let a = launch("a", &["0"], Some(0.4));
        let b = launch("b", &["0"], Some(0.4));
        let whole = launch("w", &["0"], None);
        let g = gpus();
        assert!(g.fits(
            &b,
            &[Entry {
                launch: &a,
                holding: Holding::Full
            }]
        ));
        assert!(!g.fits(
            &whole,
            &[Entry {
                launch: &a,
                holding: Holding::Full
            }]
        ));
        assert!(g.fits(
            &whole,
            &[Entry {
                launch: &a,
                holding: Holding::None
            }]
        ));
        // A sleeping model keeps 1 GiB: a whole-GPU model still cannot come.
        assert!(!g.fits(
            &whole,
            &[Entry {
                launch: &a,
                holding: Holding::Residual
            }]
        ));
        let c = launch("c", &["0"], Some(0.8));
        assert!(g.fits(
            &c,
            &[Entry {
                launch: &a,
                holding: Holding::Residual
            }]
        ));
        // Other GPUs do not matter.
        let d = launch("d", &["1"], None);
        assert!(g.fits(
            &d,
            &[Entry {
                launch: &a,
                holding: Holding::Full
            }]
        ));
    }

    #[test]
    fn the_least_recently_used_goes_first_and_only_if_it_helps() {
        let g = gpus();
        let old = launch("old", &["0"], Some(0.4));
        let recent = launch("recent", &["0"], Some(0.4));
        let new = launch("new", &["0"], Some(0.4));
        let others = [
            Entry {
                launch: &old,
                holding: Holding::Full,
            },
            Entry {
                launch: &recent,
                holding: Holding::Full,
            },
        ];
        let cands = [
            Candidate {
                at: 1,
                idle_for: Duration::from_secs(5),
                unload: UnloadMode::Stop,
            },
            Candidate {
                at: 0,
                idle_for: Duration::from_secs(50),
                unload: UnloadMode::Stop,
            },
        ];
        assert_eq!(
            victims(&g, &new, &others, &cands),
            Some(vec![(0, Eviction::Stop)])
        );
        // Sleep is enough when the residual leaves room.
        let cands = [Candidate {
            at: 0,
            idle_for: Duration::from_secs(50),
            unload: UnloadMode::Sleep,
        }];
        assert_eq!(
            victims(&g, &new, &others, &cands),
            Some(vec![(0, Eviction::Sleep)])
        );
        // Not enough even with every idle model gone: nobody is unloaded.
        let big = launch("big", &["0"], None);
        let cands = [Candidate {
            at: 0,
            idle_for: Duration::from_secs(50),
            unload: UnloadMode::Stop,
        }];
        assert_eq!(victims(&g, &big, &others, &cands), None);
        // For a whole GPU, sleeping is not enough: they are stopped.
        let cands = [
            Candidate {
                at: 0,
                idle_for: Duration::from_secs(50),
                unload: UnloadMode::Sleep,
            },
            Candidate {
                at: 1,
                idle_for: Duration::from_secs(5),
                unload: UnloadMode::Sleep,
            },
        ];
        assert_eq!(
            victims(&g, &big, &others, &cands),
            Some(vec![(0, Eviction::Stop), (1, Eviction::Stop)])
        );
    }
}
