//! GPU discovery through NVML. `libnvidia-ml.so.1` is loaded at run time: when it is missing
//! (no driver, a CPU-only machine) discovery says so and returns no GPU; it never panics.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{P2pCapabilitiesIndex, P2pStatus, TopologyLevel};
use nvml_wrapper::enums::device::UsedGpuMemory;

use super::{Gpu, GpuDiscovery, GpuProcess, GpuSource, Inventory};

/// Discovery through the NVIDIA Management Library.
#[derive(Debug, Default, Clone, Copy)]
pub struct NvmlDiscovery;

fn level_distance(level: TopologyLevel) -> u8 {
    match level {
        TopologyLevel::Internal => 1,
        TopologyLevel::Single => 2,
        TopologyLevel::Multiple => 3,
        TopologyLevel::HostBridge => 4,
        TopologyLevel::Node => 5,
        TopologyLevel::System => 6,
    }
}

fn unavailable(note: String) -> Inventory {
    Inventory {
        source: GpuSource::Unavailable,
        note: Some(note),
        disabled: false,
        gpus: Vec::new(),
        distance: Vec::new(),
    }
}

impl GpuDiscovery for NvmlDiscovery {
    fn discover(&self) -> Inventory {
        // NVML can panic only through bugs, but a GPU inventory must never take modelmux
        // down: treat a panic like a missing library.
        match std::panic::catch_unwind(discover_nvml) {
            Ok(Ok(inv)) => inv,
            Ok(Err(note)) => unavailable(note),
            Err(_) => unavailable("NVML panicked while listing GPUs".into()),
        }
    }

    fn processes(&self, index: u32) -> Vec<GpuProcess> {
        std::panic::catch_unwind(|| nvml_processes(index)).unwrap_or_default()
    }
}

/// Compute and graphics processes on one GPU, each pid once. Any NVML error gives none:
/// this only decorates an error message.
fn nvml_processes(index: u32) -> Vec<GpuProcess> {
    let Ok(nvml) = Nvml::init() else {
        return Vec::new();
    };
    let Ok(dev) = nvml.device_by_index(index) else {
        return Vec::new();
    };
    let mut out: Vec<GpuProcess> = Vec::new();
    let lists = [
        dev.running_compute_processes().unwrap_or_default(),
        dev.running_graphics_processes().unwrap_or_default(),
    ];
    for p in lists.into_iter().flatten() {
        if out.iter().any(|o| o.pid == p.pid) {
            continue;
        }
        out.push(GpuProcess {
            pid: p.pid,
            used_bytes: match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            },
        });
    }
    out
}

fn discover_nvml() -> Result<Inventory, String> {
    let nvml = Nvml::init().map_err(|e| format!("NVML is not available ({e})"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML could not count GPUs ({e})"))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for i in 0..count {
        let dev = nvml
            .device_by_index(i)
            .map_err(|e| format!("NVML could not open GPU {i} ({e})"))?;
        let memory = dev.memory_info().ok();
        gpus.push(Gpu {
            index: dev.index().unwrap_or(i),
            uuid: dev.uuid().unwrap_or_default(),
            name: dev.name().unwrap_or_else(|_| "unknown".into()),
            memory_total: memory.as_ref().map_or(0, |m| m.total),
            memory_free: memory.as_ref().map_or(0, |m| m.free),
            visible_id: i.to_string(),
            memory_measured: memory.is_some(),
        });
    }
    let n = gpus.len();
    let distance = (0..n)
        .map(|a| {
            (0..n)
                .map(|b| match a.cmp(&b) {
                    std::cmp::Ordering::Equal => 0,
                    // NVML answers symmetrically; ask once per pair in index order.
                    std::cmp::Ordering::Less => pair_distance(&nvml, a as u32, b as u32),
                    std::cmp::Ordering::Greater => pair_distance(&nvml, b as u32, a as u32),
                })
                .collect()
        })
        .collect();
    Ok(Inventory {
        source: GpuSource::Nvml,
        note: None,
        disabled: false,
        gpus,
        distance,
    })
}

/// 0 for an NVLink pair, else the PCIe topology level; 7 when NVML cannot tell.
fn pair_distance(nvml: &Nvml, a: u32, b: u32) -> u8 {
    let (Ok(da), Ok(db)) = (nvml.device_by_index(a), nvml.device_by_index(b)) else {
        return 7;
    };
    if matches!(
        da.p2p_status(&db, P2pCapabilitiesIndex::NvLink),
        Ok(P2pStatus::Ok)
    ) {
        return 0;
    }
    da.topology_common_ancestor(db)
        .map(level_distance)
        .unwrap_or(7)
}
