//! Process groups: each engine leads its own group (so a terminal's Ctrl-C reaches modelmux
//! alone); a group signal is the quick way to reach an engine's workers when its guardian
//! cannot (the second signal, a guardian that was killed).

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Sends `signal` to the group led by `pgid`. A group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    match killpg(Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, %signal, "cannot signal process group: {e}"),
    }
}
