//! Process groups: each engine leads its own group, so that its workers (vLLM's EngineCore,
//! tensor-parallel workers) get the same signals.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// Sends `signal` to the group led by `pgid`. A group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    match killpg(Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, %signal, "cannot signal process group: {e}"),
    }
}

/// True while any process of the group exists.
pub fn group_alive(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None::<Signal>) != Err(Errno::ESRCH)
}

/// Waits until the group is empty or `deadline` passes; true if it emptied.
pub async fn wait_group_gone(pgid: u32, deadline: Instant) -> bool {
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(25)).await;
    }
}

/// SIGTERM the group, give it `grace` to go, then SIGKILL whatever is left and wait for it.
/// Returns true if SIGKILL was needed.
pub async fn stop_group(pgid: u32, grace: Duration) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    signal_group(pgid, Signal::SIGTERM);
    if wait_group_gone(pgid, Instant::now() + grace).await {
        return false;
    }
    signal_group(pgid, Signal::SIGKILL);
    wait_group_gone(pgid, Instant::now() + Duration::from_secs(5)).await;
    true
}
