//! The check at start (issue 11, item 5): the plan counts on memory being free on each GPU;
//! NVML says how much is. A stale engine or another container holding a GPU's memory makes
//! `serve` fail in one line that names the GPU, the shortfall and the holding pids, instead
//! of an engine failing its memory profile twenty minutes later.

use serde::Serialize;

use super::error::gib;
use super::{GpuDiscovery, GpuError};

/// A process holding memory on a GPU, as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    /// Its pid (in the driver's pid namespace).
    pub pid: u32,
    /// Bytes it holds, when NVML can tell.
    pub used_bytes: Option<u64>,
}

/// One model on a GPU, for the plan's per-GPU table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuTenant {
    /// The model's name.
    pub name: String,
    /// Its `--gpu-memory-utilization`, or `None` with vLLM's default on a whole GPU.
    pub share: Option<f64>,
    /// Its estimated need on this GPU in bytes, when known.
    pub estimate_bytes: Option<u64>,
    /// True for an on-demand model that takes turns with others on this GPU (SPEC §9): it
    /// is loaded only while there is room, unloading idle ones first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub takes_turns: bool,
}

/// How the plan uses one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuUse {
    /// NVML index (or the override's).
    pub index: u32,
    /// What engines get in `CUDA_VISIBLE_DEVICES`.
    pub id: String,
    /// Product name.
    pub name: String,
    /// Total memory in bytes (0 when unknown).
    pub memory_total: u64,
    /// Free memory in bytes when the plan was made (0 when unknown).
    pub memory_free: u64,
    /// True when `memory_free` is NVML's measurement, not an override's size.
    pub measured: bool,
    /// Bytes the plan's engines take here at most: each engine's utilization of the GPU plus
    /// its CUDA context and graphs. 0 when the size is unknown.
    pub planned_bytes: u64,
    /// The models on it, in start order.
    pub models: Vec<GpuTenant>,
}

/// Fails when a GPU has less free memory than the plan puts on it. Only NVML's measurements
/// are checked: an override's sizes say nothing about what is free.
pub fn check_free(uses: &[GpuUse], discovery: &dyn GpuDiscovery) -> Result<(), GpuError> {
    let short: Vec<String> = uses
        .iter()
        .filter(|u| u.measured && u.memory_total > 0 && u.planned_bytes > u.memory_free)
        .map(|u| {
            let holders = discovery.processes(u.index);
            let held = if holders.is_empty() {
                "NVML names no process holding it (another container or a MIG peer?)".to_string()
            } else {
                let list: Vec<String> = holders
                    .iter()
                    .map(|p| {
                        let name = process_name(p.pid)
                            .map(|n| format!(" {n}"))
                            .unwrap_or_default();
                        match p.used_bytes {
                            Some(b) => format!("pid {}{name} holds {}", p.pid, gib(b)),
                            None => format!("pid {}{name}", p.pid),
                        }
                    })
                    .collect();
                list.join(", ")
            };
            let models: Vec<&str> = u.models.iter().map(|m| m.name.as_str()).collect();
            format!(
                "GPU {} has {} free of {} but the plan puts {} there ({}); {held}",
                u.id,
                gib(u.memory_free),
                gib(u.memory_total),
                gib(u.planned_bytes),
                models.join(", ")
            )
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(GpuError::MemoryTaken {
            problem: short.join("; "),
        })
    }
}

/// The command name of a pid, when this process can see it.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Inventory;

    const GIB: u64 = 1 << 30;

    struct Fake(Vec<GpuProcess>);

    impl GpuDiscovery for Fake {
        fn discover(&self) -> Inventory {
            unreachable!("the check only asks for processes")
        }
        fn processes(&self, index: u32) -> Vec<GpuProcess> {
            if index == 1 {
                self.0.clone()
            } else {
                Vec::new()
            }
        }
    }

    fn using(index: u32, free: u64, planned: u64) -> GpuUse {
        GpuUse {
            index,
            id: index.to_string(),
            name: "fake".into(),
            memory_total: 80 * GIB,
            memory_free: free,
            measured: true,
            planned_bytes: planned,
            models: vec![GpuTenant {
                takes_turns: false,
                name: format!("m{index}"),
                share: Some(0.45),
                estimate_bytes: Some(20 * GIB),
            }],
        }
    }

    #[test]
    fn enough_free_memory_passes() {
        let uses = [using(0, 79 * GIB, 74 * GIB), using(1, 80 * GIB, 0)];
        assert_eq!(check_free(&uses, &Fake(vec![])), Ok(()));
    }

    #[test]
    fn memory_held_by_a_stale_engine_names_its_pid_in_one_line() {
        // Pid 0 cannot name a process in /proc; the test must not depend on what runs here.
        let holders = vec![
            GpuProcess {
                pid: 0,
                used_bytes: Some(60 * GIB),
            },
            GpuProcess {
                pid: 0,
                used_bytes: None,
            },
        ];
        let uses = [using(0, 79 * GIB, 70 * GIB), using(1, 20 * GIB, 70 * GIB)];
        let e = check_free(&uses, &Fake(holders)).unwrap_err().to_string();
        assert_eq!(
            e,
            "GPU memory is already in use: GPU 1 has 20.0 GiB free of 80.0 GiB but the plan \
             puts 70.0 GiB there (m1); pid 0 holds 60.0 GiB, pid 0; stop those processes or \
             plan for less (MODELMUX_GPU_MEMORY_LIMIT, fewer models)"
        );
    }

    #[test]
    fn unknown_holders_and_override_sizes() {
        let mut uses = [using(0, 10 * GIB, 70 * GIB)];
        let e = check_free(&uses, &Fake(vec![])).unwrap_err().to_string();
        assert!(e.contains("NVML names no process"), "{e}");
        // Sizes from MODELMUX_GPUS are not measurements: nothing to check.
        uses[0].measured = false;
        assert_eq!(check_free(&uses, &Fake(vec![])), Ok(()));
    }
}
