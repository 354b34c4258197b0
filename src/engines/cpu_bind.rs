//! CPU engines (`MODELMUX_GPUS=none`): how many core sets a model takes, and how its
//! engine is told its cores (a variable, or mask and thread-count flags).

use std::collections::BTreeMap;

use super::{CpuBind, Engine};
use crate::config::{Arg, EngineArgs};

/// With `MODELMUX_GPUS=none`: the number of core sets (one per rank) this model's engine
/// takes from the split, or `None` when its profile cannot be told its cores or the model
/// chose its own (its `env` sets the variable, its `params` the flags).
pub fn cpu_ranks(
    engine: Engine,
    args: &EngineArgs,
    env: &BTreeMap<String, String>,
    gpu_demand: u32,
) -> Option<usize> {
    match engine.profile().cpu_bind {
        CpuBind::None => None,
        CpuBind::Env { var } => (!env.contains_key(var)).then(|| gpu_demand.max(1) as usize),
        CpuBind::MaskFlags { own, .. } => own.iter().all(|f| !args.has(f)).then_some(1),
    }
}

/// Gives an engine its cores (`cores`: a kernel CPU list per rank, ranks separated by `|`,
/// as [`crate::cpus::Topology::split`] writes them) the profile's way: the variable in
/// `env`, or the mask and thread-count flags in `args`.
pub fn bind_cpus(
    engine: Engine,
    cores: &str,
    args: &mut EngineArgs,
    env: &mut BTreeMap<String, String>,
) {
    match engine.profile().cpu_bind {
        CpuBind::None => {}
        CpuBind::Env { var } => {
            env.insert(var.to_string(), cores.to_string());
        }
        CpuBind::MaskFlags { mask, threads, .. } => {
            let cpus = crate::cpus::parse_list(&cores.replace('|', ","));
            if cpus.is_empty() {
                return;
            }
            args.args.push(Arg::new(mask, &[&hex_mask(&cpus)]));
            args.args
                .push(Arg::new(threads, &[&cpus.len().to_string()]));
        }
    }
}

/// CPU ids as a hexadecimal affinity mask, `0x` first (CPU 0 is the lowest bit).
pub fn hex_mask(cpus: &[u32]) -> String {
    let top = cpus.iter().copied().max().unwrap_or(0);
    let mut nibbles = vec![0u8; top as usize / 4 + 1];
    for &c in cpus {
        nibbles[c as usize / 4] |= 1 << (c % 4);
    }
    let digits: String = nibbles
        .iter()
        .rev()
        .map(|n| char::from_digit(u32::from(*n), 16).expect("a nibble"))
        .collect();
    format!("0x{digits}")
}
