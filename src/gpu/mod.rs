//! GPUs: which are there, how big and how close they are ([`Inventory`], from NVML or the
//! `MODELMUX_GPUS` override, behind the [`GpuDiscovery`] trait so tests can feed fake
//! machines), who gets which ([`allocate`]) and what share of each ([`place`]), both pure
//! functions, and whether the memory the plan counts on is still free at start
//! ([`check_free`]). It depends on nothing else in the crate; its errors are [`GpuError`].

mod allocate;
mod beside;
mod error;
mod free;
mod misfit;
mod nvml;
mod overrides;
mod pack;
mod shortage;

pub use allocate::{AllocError, allocate};
pub use beside::{Claim, fits, place_beside};
pub use error::{GpuError, gib};
pub use free::{GpuProcess, GpuTenant, GpuUse, check_free};
pub use nvml::NvmlDiscovery;
pub use overrides::{GpuOverride, SizedGpu, parse_size};
pub use pack::{MemDemand, Need, Placement, VLLM_DEFAULT_UTILIZATION, place};

use serde::Serialize;

/// One GPU as modelmux sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    /// NVML index (PCI bus order), or the index given in the override.
    pub index: u32,
    /// GPU UUID (`GPU-...`, `MIG-...`), empty when unknown.
    pub uuid: String,
    /// Product name, or `unknown` when the override gives none.
    pub name: String,
    /// Total memory in bytes (0 when unknown).
    pub memory_total: u64,
    /// Free memory in bytes (0 when unknown).
    pub memory_free: u64,
    /// What the engine's `CUDA_VISIBLE_DEVICES` lists for this GPU: the index, or the UUID
    /// when the override named UUIDs.
    pub visible_id: String,
    /// True when the memory figures are NVML's measurements (not an override's sizes).
    pub memory_measured: bool,
}

/// Where the inventory came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuSource {
    /// Discovered through NVML.
    Nvml,
    /// `MODELMUX_GPUS` (or `--gpus`).
    Override,
    /// Neither: NVML could not be used; the reason says why.
    Unavailable,
}

impl std::fmt::Display for GpuSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuSource::Nvml => "NVML",
            GpuSource::Override => "MODELMUX_GPUS",
            GpuSource::Unavailable => "nowhere (no NVML)",
        })
    }
}

/// The GPUs and their pairwise distances.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// Where the list came from.
    pub source: GpuSource,
    /// Why NVML was not used, when it was not.
    pub note: Option<String>,
    /// True for `MODELMUX_GPUS=none`: engines get no GPU and models need none.
    pub disabled: bool,
    /// The GPUs, in index order.
    pub gpus: Vec<Gpu>,
    /// `distance[i][j]`: 0 for an NVLink pair, then NVML's topology levels from the same
    /// board (1) to across sockets (6). Empty when unknown (all pairs count as equal).
    #[serde(skip)]
    pub distance: Vec<Vec<u8>>,
}

impl Inventory {
    /// Distance between the GPUs at positions `a` and `b` of [`Inventory::gpus`].
    pub fn distance(&self, a: usize, b: usize) -> u8 {
        if a == b {
            return 0;
        }
        self.distance
            .get(a)
            .and_then(|row| row.get(b))
            .copied()
            .unwrap_or(1)
    }
}

/// A source of GPUs. NVML on real machines; tests implement it with fake topologies.
pub trait GpuDiscovery {
    /// Lists the GPUs. An unusable NVML is not an error: it gives an empty inventory with
    /// [`GpuSource::Unavailable`] and a note.
    fn discover(&self) -> Inventory;

    /// The processes holding memory on the GPU with this NVML index, where the driver tells
    /// (inside a container it often cannot). Empty when unknown.
    fn processes(&self, _index: u32) -> Vec<GpuProcess> {
        Vec::new()
    }
}

/// The inventory `serve` and `plan` use: the override if given, else discovery. An override
/// without sizes (`4`, `0,2`, UUIDs) still takes names, sizes, free memory and topology from
/// NVML where NVML knows those GPUs; an override with sizes (`4x80GiB`) is used as it is.
pub fn inventory(over: Option<&GpuOverride>, discovery: &dyn GpuDiscovery) -> Inventory {
    let Some(o) = over else {
        return discovery.discover();
    };
    let mut inv = o.inventory();
    if inv.disabled || o.has_sizes() {
        return inv;
    }
    let found = discovery.discover();
    if found.source != GpuSource::Nvml {
        return inv;
    }
    let matches = |mine: &Gpu, theirs: &Gpu| {
        if mine.uuid.is_empty() {
            theirs.index == mine.index
        } else {
            theirs.uuid == mine.uuid
        }
    };
    let positions: Vec<Option<usize>> = inv
        .gpus
        .iter()
        .map(|g| found.gpus.iter().position(|f| matches(g, f)))
        .collect();
    for (g, pos) in inv.gpus.iter_mut().zip(&positions) {
        if let Some(f) = pos.map(|p| &found.gpus[p]) {
            g.name = f.name.clone();
            g.memory_total = f.memory_total;
            g.memory_free = f.memory_free;
            g.memory_measured = f.memory_measured;
            if g.uuid.is_empty() {
                g.uuid = f.uuid.clone();
            } else {
                g.index = f.index;
            }
        }
    }
    if positions.iter().all(Option::is_some) && !found.distance.is_empty() {
        inv.distance = positions
            .iter()
            .map(|a| {
                positions
                    .iter()
                    .map(|b| found.distance(a.unwrap(), b.unwrap()))
                    .collect()
            })
            .collect();
    }
    inv
}

/// Human-readable lines for `modelmux gpus`.
pub fn describe(inv: &Inventory) -> String {
    let mut out = String::new();
    let source = &inv.source;
    if inv.disabled {
        out.push_str("GPUs disabled by MODELMUX_GPUS=none: engines get no GPU\n");
        return out;
    }
    if inv.gpus.is_empty() {
        let why = inv.note.as_deref().unwrap_or("no GPU found");
        out.push_str(&format!(
            "no GPUs: {why}; set MODELMUX_GPUS to a count, a list of indices or UUIDs, or none\n"
        ));
        return out;
    }
    out.push_str(&format!("{} GPU(s) from {source}\n", inv.gpus.len()));
    for g in &inv.gpus {
        // A size given in MODELMUX_GPUS is a total, not a measurement of what is free.
        let total = memory(g.memory_total > 0, g.memory_total);
        let free = memory(g.memory_measured, g.memory_free);
        out.push_str(&format!(
            "  {:>2}  {:<40}  {:<28}  {total:>11} total  {free:>11} free\n",
            g.index,
            if g.uuid.is_empty() { "-" } else { &g.uuid },
            g.name,
        ));
    }
    out
}

/// `12.3 GiB`, or `-` for a figure nobody measured or gave.
fn memory(known: bool, bytes: u64) -> String {
    if known {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine where NVML does not load.
    struct NoNvml;

    impl GpuDiscovery for NoNvml {
        fn discover(&self) -> Inventory {
            Inventory {
                source: GpuSource::Nvml,
                note: Some("no NVML".into()),
                disabled: false,
                gpus: Vec::new(),
                distance: Vec::new(),
            }
        }
    }

    /// A fake NVML machine: GPUs 0-3 of 80 GiB with 70 GiB free, NVLink pairs (0,1), (2,3).
    struct FakeNvml;

    impl GpuDiscovery for FakeNvml {
        fn discover(&self) -> Inventory {
            let gpus = (0..4)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    name: "NVIDIA H100 80GB HBM3".into(),
                    memory_total: 80 << 30,
                    memory_free: 70 << 30,
                    visible_id: i.to_string(),
                    memory_measured: true,
                })
                .collect();
            let distance = (0..4)
                .map(|a| (0..4).map(|b| if a / 2 == b / 2 { 0 } else { 6 }).collect())
                .collect();
            Inventory {
                source: GpuSource::Nvml,
                note: None,
                disabled: false,
                gpus,
                distance,
            }
        }
    }

    #[test]
    fn an_override_without_sizes_takes_them_from_nvml() {
        let over = GpuOverride::parse("1,2").unwrap();
        let inv = inventory(Some(&over), &FakeNvml);
        assert_eq!(inv.source, GpuSource::Override);
        assert_eq!(inv.gpus[0].uuid, "GPU-1");
        assert_eq!(inv.gpus[1].memory_free, 70 << 30);
        assert!(inv.gpus.iter().all(|g| g.memory_measured));
        assert_eq!(
            inv.distance(0, 1),
            6,
            "GPUs 1 and 2 are on different NVLink pairs"
        );
        let by_uuid = inventory(Some(&GpuOverride::parse("GPU-3").unwrap()), &FakeNvml);
        assert_eq!(
            (by_uuid.gpus[0].index, by_uuid.gpus[0].visible_id.as_str()),
            (3, "GPU-3")
        );
        // Sizes given in the override win, and are not measurements.
        let sized = inventory(Some(&GpuOverride::parse("2x24GiB").unwrap()), &FakeNvml);
        assert_eq!(sized.gpus[0].memory_total, 24 << 30);
        assert!(!sized.gpus[0].memory_measured);
        // `modelmux gpus` shows what was measured or given, and `-` for the rest.
        let listed = |inv: &Inventory| describe(inv).lines().nth(1).unwrap().to_string();
        assert!(
            listed(&inv).ends_with("80.0 GiB total     70.0 GiB free"),
            "{}",
            listed(&inv)
        );
        assert!(
            listed(&sized).ends_with("24.0 GiB total            - free"),
            "{}",
            listed(&sized)
        );
        let counted = inventory(Some(&GpuOverride::parse("2").unwrap()), &NoNvml);
        assert!(
            listed(&counted).ends_with("- total            - free"),
            "{}",
            listed(&counted)
        );
        // An index NVML does not know keeps unknown sizes.
        let unknown = inventory(Some(&GpuOverride::parse("7").unwrap()), &FakeNvml);
        assert_eq!(unknown.gpus[6].memory_total, 0);
    }
}
