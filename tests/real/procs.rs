//! The processes of one test run, found by the environment marker that modelmux passes on
//! to its engines (and they to theirs): never a global search by name, since other people's
//! vLLM processes may run on the same machine.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill as send};
use nix::unistd::Pid;

/// A live process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub cmdline: String,
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cmd: String = self.cmdline.chars().take(90).collect();
        write!(
            f,
            "pid {} ppid {} pgid {} sid {}: {cmd}",
            self.pid, self.ppid, self.pgid, self.sid
        )
    }
}

impl Proc {
    /// vLLM names its processes with setproctitle: `VLLM::EngineCore`, `VLLM::Worker`.
    pub fn is(&self, what: &str) -> bool {
        self.cmdline.contains(what)
    }
}

/// The process `pid` unless it is gone or a zombie.
pub fn read(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    if f.len() < 5 || f[0] == "Z" || f[0] == "X" {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline)
        .replace('\0', " ")
        .trim()
        .to_string();
    Some(Proc {
        pid,
        ppid: f[1].parse().ok()?,
        pgid: f[2].parse().ok()?,
        sid: f[3].parse().ok()?,
        cmdline,
    })
}

/// Every live process whose environment carries `MODELMUX_REAL_TEST_RUN=<marker>`.
pub fn marked(marker: &str) -> Vec<Proc> {
    let needle = format!("{}={marker}", super::MARKER_VAR).into_bytes();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_slice())
            && let Some(p) = read(pid)
        {
            out.push(p);
        }
    }
    out
}

/// SIGKILL one process (gone already is fine).
pub fn kill(pid: u32) {
    if pid > 1 {
        let _ = send(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// SIGKILLs every process of the run until none is left (10 s at most); returns those it
/// found the first time.
pub fn kill_marked(marker: &str) -> Vec<Proc> {
    let first = marked(marker);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = marked(marker);
        if now.is_empty() || Instant::now() > deadline {
            for p in &now {
                eprintln!("still running after clean-up: {p}");
            }
            return first;
        }
        for p in &now {
            kill(p.pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits up to `timeout` for the run's processes to be gone; returns those still there.
pub fn wait_gone(marker: &str, except: u32, timeout: Duration) -> Vec<Proc> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<Proc> = marked(marker)
            .into_iter()
            .filter(|p| p.pid != except)
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn list(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The processes of one engine: its main process and everything below it or in its group.
pub fn engine_tree(all: &[Proc], pid: u32) -> Vec<Proc> {
    let mut tree: Vec<Proc> = all.iter().filter(|p| p.pid == pid).cloned().collect();
    loop {
        let more: Vec<Proc> = all
            .iter()
            .filter(|p| {
                !tree.iter().any(|t| t.pid == p.pid)
                    && (p.pgid == pid || tree.iter().any(|t| t.pid == p.ppid))
            })
            .cloned()
            .collect();
        if more.is_empty() {
            return tree;
        }
        tree.extend(more);
    }
}

/// Those of `procs` that still run (same pid, same command line).
pub fn still_running(procs: &[Proc]) -> Vec<Proc> {
    procs
        .iter()
        .filter(|p| read(p.pid).is_some_and(|now| now.cmdline == p.cmdline))
        .cloned()
        .collect()
}
