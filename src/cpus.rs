//! Engines on the CPU (`MODELMUX_GPUS=none`): each gets its own cores through
//! `VLLM_CPU_OMP_THREADS_BIND`, the CPU's counterpart of `CUDA_VISIBLE_DEVICES`. Without it
//! every vLLM CPU engine binds its OpenMP threads to the same cores and they fight.
//!
//! Cores are physical cores (one logical CPU each, the first of its hyper-threads, as vLLM
//! recommends) among the CPUs this process may run on. Engines get whole NUMA nodes when
//! there are at least as many nodes as engines; otherwise the engines are spread over the
//! nodes and each node's cores are split evenly between its engines. An engine with tensor
//! or pipeline parallelism gets its cores split per rank (`a|b`, vLLM's syntax).

use std::collections::BTreeMap;

/// The CPUs modelmux may use, by NUMA node; each core is the list of its logical CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Nodes in order; each a list of physical cores; each core its logical CPU ids.
    pub nodes: Vec<Vec<Vec<u32>>>,
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_list(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.trim().parse::<u32>()),
        }
    }
    out
}

/// Writes CPU ids as a kernel CPU list (`0-3,8`).
pub fn format_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

impl Topology {
    /// Reads this machine: the CPUs this process may run on (`Cpus_allowed_list`, so a
    /// container's cpuset counts), grouped by NUMA node and physical core from `/sys`.
    pub fn read() -> Topology {
        let allowed = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(parse_list))
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                (0..n as u32).collect()
            });
        let sys = |path: String| std::fs::read_to_string(path).ok();
        let mut node_of: BTreeMap<u32, u32> = BTreeMap::new();
        let nodes = std::fs::read_dir("/sys/devices/system/node")
            .into_iter()
            .flatten();
        for entry in nodes.flatten() {
            let name = entry.file_name();
            let Some(node) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node")?.parse().ok())
            else {
                continue;
            };
            let list = sys(format!("/sys/devices/system/node/node{node}/cpulist"));
            for cpu in parse_list(list.as_deref().unwrap_or("")) {
                node_of.insert(cpu, node);
            }
        }
        let cpus: Vec<(u32, u32, (String, String))> = allowed
            .iter()
            .map(|&cpu| {
                let topo = |f: &str| {
                    sys(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{f}"))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|| format!("cpu{cpu}"))
                };
                let core = (topo("physical_package_id"), topo("core_id"));
                (cpu, node_of.get(&cpu).copied().unwrap_or(0), core)
            })
            .collect();
        Topology::from_cpus(&cpus)
    }

    /// Groups `(cpu, node, core key)` triples: nodes in id order, cores in order of their
    /// first CPU.
    pub fn from_cpus<K: Ord + Clone>(cpus: &[(u32, u32, K)]) -> Topology {
        let mut nodes: BTreeMap<u32, Vec<(K, Vec<u32>)>> = BTreeMap::new();
        let mut sorted = cpus.to_vec();
        sorted.sort_by_key(|c| c.0);
        for (cpu, node, key) in sorted {
            let cores = nodes.entry(node).or_default();
            match cores.iter_mut().find(|(k, _)| *k == key) {
                Some((_, list)) => list.push(cpu),
                None => cores.push((key, vec![cpu])),
            }
        }
        Topology {
            nodes: nodes
                .into_values()
                .map(|cores| cores.into_iter().map(|(_, c)| c).collect())
                .collect(),
        }
    }

    /// `VLLM_CPU_OMP_THREADS_BIND` for engines with these rank counts (tensor × pipeline
    /// parallel size, 1 for most), in order; `shared` is true when there were fewer cores
    /// than engines (or ranks) and some had to share.
    pub fn split(&self, ranks: &[usize]) -> (Vec<String>, bool) {
        let n = ranks.len();
        let nodes: Vec<&Vec<Vec<u32>>> = self.nodes.iter().filter(|c| !c.is_empty()).collect();
        if n == 0 || nodes.is_empty() {
            return (vec![String::new(); n], false);
        }
        let mut shared = false;
        // Each engine's cores (first logical CPU of each physical core).
        let mut per_engine: Vec<Vec<u32>> = vec![Vec::new(); n];
        if n <= nodes.len() {
            // Whole nodes: spread the nodes evenly, the first engines take the remainder.
            for (i, share) in even_chunks(nodes.len(), n).into_iter().enumerate() {
                for node in &nodes[share] {
                    per_engine[i].extend(node.iter().map(|core| core[0]));
                }
            }
        } else {
            // More engines than nodes: engines spread over nodes, each node's cores split.
            let mut engine = 0;
            for (j, engines_here) in even_chunks(n, nodes.len()).into_iter().enumerate() {
                let cores: Vec<u32> = nodes[j].iter().map(|core| core[0]).collect();
                let count = engines_here.len();
                if cores.len() < count {
                    shared = true;
                }
                for k in 0..count {
                    per_engine[engine] = if cores.len() >= count {
                        cores[even_chunks(cores.len(), count)[k].clone()].to_vec()
                    } else {
                        vec![cores[k % cores.len()]]
                    };
                    engine += 1;
                }
            }
        }
        let binds = per_engine
            .iter()
            .zip(ranks)
            .map(|(cores, &r)| {
                let r = r.max(1);
                if cores.len() < r {
                    shared = true;
                    return (0..r)
                        .map(|k| cores[k % cores.len()].to_string())
                        .collect::<Vec<_>>()
                        .join("|");
                }
                even_chunks(cores.len(), r)
                    .into_iter()
                    .map(|range| format_list(&cores[range]))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        (binds, shared)
    }
}

/// Splits `0..len` into `parts` contiguous ranges whose sizes differ by at most one, the
/// larger ones first.
fn even_chunks(len: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let (base, extra) = (len / parts, len % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let size = base + usize::from(i < extra);
            let r = start..start + size;
            start += size;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nodes` NUMA nodes of `cores` physical cores with two hyper-threads each, numbered
    /// like Linux does (siblings in the second half).
    fn machine(nodes: u32, cores: u32) -> Topology {
        let total = nodes * cores;
        let cpus: Vec<(u32, u32, u32)> = (0..2 * total)
            .map(|cpu| {
                let core = cpu % total;
                (cpu, core / cores, core)
            })
            .collect();
        Topology::from_cpus(&cpus)
    }

    #[test]
    fn lists_round_trip() {
        assert_eq!(parse_list("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(format_list(&[11, 0, 1, 2, 3, 8, 10]), "0-3,8,10-11");
        assert_eq!(format_list(&[5]), "5");
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn whole_numa_nodes_first() {
        let m = machine(2, 8);
        assert_eq!(
            m.split(&[1, 1]),
            (vec!["0-7".to_string(), "8-15".to_string()], false)
        );
        // One engine takes every node; hyper-threads (16-31) are left out.
        assert_eq!(m.split(&[1]), (vec!["0-15".to_string()], false));
        // Four nodes, three engines: the first gets two.
        let m4 = machine(4, 2);
        assert_eq!(m4.split(&[1, 1, 1]).0, ["0-3", "4-5", "6-7"]);
    }

    #[test]
    fn more_engines_than_nodes_split_each_node_evenly() {
        let m = machine(2, 8);
        assert_eq!(m.split(&[1, 1, 1, 1]).0, ["0-3", "4-7", "8-11", "12-15"]);
        assert_eq!(m.split(&[1, 1, 1]).0, ["0-3", "4-7", "8-15"]);
        let one = machine(1, 5);
        assert_eq!(one.split(&[1, 1]).0, ["0-2", "3-4"]);
    }

    #[test]
    fn ranks_split_an_engines_cores() {
        let m = machine(1, 8);
        assert_eq!(m.split(&[2, 1]).0, ["0-1|2-3", "4-7"]);
    }

    #[test]
    fn too_few_cores_share_and_say_so() {
        let two = Topology::from_cpus(&[(0, 0, 0), (1, 0, 1)]);
        assert_eq!(two.split(&[1, 1]), (vec!["0".into(), "1".into()], false));
        let (binds, shared) = two.split(&[1, 1, 1]);
        assert_eq!(binds, ["0", "1", "0"]);
        assert!(shared);
    }

    #[test]
    fn the_machine_reads() {
        let t = Topology::read();
        assert!(!t.nodes.is_empty());
        assert!(t.nodes.iter().all(|n| n.iter().all(|c| !c.is_empty())));
    }
}
