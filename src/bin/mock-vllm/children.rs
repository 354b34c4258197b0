//! The mock's own children, standing in for vLLM's EngineCore and the processes it
//! leaves behind: a sleeper in the mock's process group, one in a session of its own, and
//! an orphaned daemon. Each is the mock binary re-run with a hidden first argument.

use std::process::Stdio;

use super::event;

/// The hidden first argument of the mock's own children.
pub const CHILD: &str = "--mock-child";

/// A child of the mock: sleeps until killed. `daemon` starts a setsid'd sleeper, prints its
/// pid and exits, so that the sleeper is orphaned.
pub fn child_main(kind: &str) -> ! {
    let events = std::env::var("MOCK_EVENTS_FILE").ok();
    if kind == "daemon" {
        // Its stdout is the pipe the mock reads this pid from: the sleeper must not hold it.
        let pid = spawn_child("sleeper", true, Stdio::null()).unwrap_or(0);
        println!("{pid}");
        std::process::exit(0);
    }
    let ignore = std::env::var("MOCK_CHILD_IGNORE_SIGTERM").is_ok_and(|v| v == "1");
    let mut signals =
        signal_hook_iter(&[nix::sys::signal::Signal::SIGTERM]).expect("SIGTERM handler");
    loop {
        if signals.wait() {
            event(&events, "child-sigterm");
            if !ignore {
                std::process::exit(0);
            }
        }
    }
}

/// A blocking SIGTERM waiter for the children (no runtime there).
struct SigWait(nix::sys::signal::SigSet);

fn signal_hook_iter(sigs: &[nix::sys::signal::Signal]) -> nix::Result<SigWait> {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in sigs {
        set.add(*s);
    }
    set.thread_block()?;
    Ok(SigWait(set))
}

impl SigWait {
    fn wait(&mut self) -> bool {
        self.0.wait().is_ok()
    }
}

/// Starts the mock itself as a child of `kind`, in a new session if `setsid`.
pub fn spawn_child(kind: &str, setsid: bool, stdout: Stdio) -> Option<u32> {
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args([CHILD, kind]).stdin(Stdio::null()).stdout(stdout);
    if setsid {
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
    }
    let child = cmd.spawn().ok()?;
    let pid = child.id();
    if kind == "daemon" {
        let out = child.wait_with_output().ok()?;
        return String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    }
    // Never waited for: like vLLM's EngineCore, it outlives a mock that is SIGKILLed.
    std::mem::forget(child);
    Some(pid)
}
