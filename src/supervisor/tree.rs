//! Process trees read from `/proc`: every descendant of a process, so that an engine's whole
//! tree can be signalled, including children that left its process group or session.

use std::collections::{HashMap, HashSet};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// True for a zombie (dead, not yet reaped).
    pub zombie: bool,
}

/// Parses `/proc/PID/stat`; the command name may hold spaces and parentheses, so the fields
/// are read after the last `)`.
pub fn parse_stat(pid: i32, stat: &str) -> Option<Proc> {
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        zombie: state == "Z" || state == "X",
    })
}

/// Every process visible in `/proc` now.
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            parse_stat(
                pid,
                &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
            )
        })
        .collect()
}

/// Descendants of `root` (not `root` itself) in `procs`, parents before children. Subtrees
/// of the pids in `skip` are left out.
pub fn descendants_in(procs: &[Proc], root: i32, skip: &HashSet<i32>) -> Vec<Proc> {
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(*p);
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            if child.pid == root || skip.contains(&child.pid) {
                continue;
            }
            out.push(*child);
            queue.push(child.pid);
        }
    }
    out
}

/// Living descendants of `root` now.
pub fn descendants(root: i32) -> Vec<i32> {
    descendants_in(&processes(), root, &HashSet::new())
        .into_iter()
        .filter(|p| !p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// Sends `signal` to each pid; one that is already gone is fine. Returns how many got it.
pub fn signal_all(pids: &[i32], signal: Signal) -> usize {
    pids.iter()
        .filter(|&&pid| pid > 1)
        .filter(|&&pid| kill(Pid::from_raw(pid), signal).is_ok())
        .count()
}

/// True when `pid`'s environment (as it was at exec) holds `KEY=VALUE` exactly.
pub fn has_env(pid: i32, key_value: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == key_value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32) -> Proc {
        Proc {
            pid,
            ppid,
            zombie: false,
        }
    }

    #[test]
    fn stat_with_odd_command_names() {
        let s = "42 (a) b (c)) S 7 42 42 0 -1 4194560";
        let proc = parse_stat(42, s).unwrap();
        assert_eq!((proc.pid, proc.ppid, proc.zombie), (42, 7, false));
        assert!(parse_stat(9, "9 (x) Z 1 9 9").unwrap().zombie);
        assert!(parse_stat(9, "garbage").is_none());
    }

    #[test]
    fn descendants_walk_the_whole_tree_and_skip_subtrees() {
        let procs = [
            p(10, 1),
            p(11, 10),
            p(12, 11),
            p(13, 10),
            p(14, 13),
            p(20, 1),
        ];
        let mut all: Vec<i32> = descendants_in(&procs, 10, &HashSet::new())
            .iter()
            .map(|p| p.pid)
            .collect();
        all.sort();
        assert_eq!(all, [11, 12, 13, 14]);
        let skip = HashSet::from([13]);
        let mut some: Vec<i32> = descendants_in(&procs, 10, &skip)
            .iter()
            .map(|p| p.pid)
            .collect();
        some.sort();
        assert_eq!(some, [11, 12]);
    }

    #[test]
    fn this_process_sees_its_own_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        assert!(descendants(me).contains(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
