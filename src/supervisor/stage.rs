//! Staged start (SPEC §3.1): an engine that shares a GPU with models configured before it
//! waits, in state `waiting`, until each of them is ready, so that one vLLM at a time
//! profiles a GPU's free memory (several starting at once on one GPU fail:
//! vllm-project/vllm#10533, #14376, #17979). Engines on other GPUs start at once.
//!
//! If one of those models fails for good, its process group is gone and the memory it was
//! planned to use is free, so the wait ends too, with a warning; with
//! `MODELMUX_ON_FAILURE=exit` everything shuts down anyway. A predecessor that restarts
//! after it was ready holds nobody back.

use tokio::sync::watch;

use crate::state::{Phase, Snapshot, StateTx};

/// How the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Start the engine.
    Go,
    /// modelmux is shutting down: do not start it.
    Shutdown,
}

/// The predecessors that are neither ready nor failed, by name.
fn pending(s: &Snapshot, after: &[usize]) -> Vec<String> {
    after
        .iter()
        .filter_map(|&i| s.models.get(i))
        .filter(|m| !matches!(m.state, Phase::Ready | Phase::Failed))
        .map(|m| m.name.clone())
        .collect()
}

/// Waits until every model in `after` (names from the plan's `start_after`) is ready or
/// failed, or until shutdown. Returns at once when `after` is empty.
pub async fn wait_turn(
    name: &str,
    after: &[String],
    state: &StateTx,
    shutdown: &mut watch::Receiver<bool>,
) -> Turn {
    if after.is_empty() {
        return Turn::Go;
    }
    let indices: Vec<usize> = {
        let s = state.borrow();
        after
            .iter()
            .filter_map(|n| s.models.iter().position(|m| &m.name == n))
            .collect()
    };
    let waiting_for = pending(&state.borrow(), &indices);
    if waiting_for.is_empty() {
        return Turn::Go;
    }
    tracing::info!(
        model = %name,
        "waiting for {} to be ready: they share its GPU and start first",
        waiting_for.join(", ")
    );
    let mut rx = state.subscribe();
    tokio::select! {
        r = rx.wait_for(|s| pending(s, &indices).is_empty()) => {
            if r.is_err() {
                return Turn::Shutdown;
            }
        }
        _ = shutdown.wait_for(|s| *s) => return Turn::Shutdown,
    }
    let failed: Vec<String> = {
        let s = state.borrow();
        indices
            .iter()
            .filter_map(|&i| s.models.get(i))
            .filter(|m| m.state == Phase::Failed)
            .map(|m| m.name.clone())
            .collect()
    };
    if failed.is_empty() {
        tracing::info!(model = %name, "its turn to start on the shared GPU");
    } else {
        tracing::warn!(
            model = %name,
            "{} failed; starting anyway: the GPU memory planned for it is free",
            failed.join(", ")
        );
    }
    Turn::Go
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ModelStatus;
    use std::time::Duration;

    fn snapshot(names: &[&str]) -> Snapshot {
        Snapshot {
            stopping: false,
            models: names
                .iter()
                .map(|n| ModelStatus {
                    name: n.to_string(),
                    state: Phase::Waiting,
                    gpus: vec!["0".into()],
                    gpu_share: Some(0.4),
                    ..crate::supervisor::machine::tests::test_status()
                })
                .collect(),
            table: Default::default(),
        }
    }

    /// Sets a phase directly (these tests are about the wait, not the machine).
    fn set(tx: &StateTx, index: usize, phase: Phase) {
        crate::state::set_phase(tx, index, phase, |_| {});
    }

    async fn spawn_wait(
        tx: &StateTx,
        after: &[&str],
        sd: &watch::Sender<bool>,
    ) -> tokio::task::JoinHandle<Turn> {
        let tx = tx.clone();
        let after: Vec<String> = after.iter().map(|s| s.to_string()).collect();
        let mut rx = sd.subscribe();
        tokio::spawn(async move { wait_turn("c", &after, &tx, &mut rx).await })
    }

    async fn still_waiting(h: &tokio::task::JoinHandle<Turn>) -> bool {
        tokio::time::sleep(Duration::from_millis(30)).await;
        !h.is_finished()
    }

    #[tokio::test]
    async fn waits_for_every_predecessor_to_be_ready() {
        let (tx, _keep) = watch::channel(snapshot(&["a", "b", "c"]));
        let (sd, _sd_rx) = watch::channel(false);
        let h = spawn_wait(&tx, &["a", "b"], &sd).await;
        assert!(still_waiting(&h).await);
        set(&tx, 0, Phase::Starting);
        assert!(still_waiting(&h).await);
        set(&tx, 0, Phase::Ready);
        assert!(still_waiting(&h).await, "b is not ready yet");
        set(&tx, 1, Phase::Ready);
        assert_eq!(h.await.unwrap(), Turn::Go);
    }

    #[tokio::test]
    async fn a_failed_predecessor_frees_its_memory_and_the_turn() {
        let (tx, _keep) = watch::channel(snapshot(&["a", "c"]));
        let (sd, _sd_rx) = watch::channel(false);
        let h = spawn_wait(&tx, &["a"], &sd).await;
        set(&tx, 0, Phase::Restarting);
        assert!(
            still_waiting(&h).await,
            "a restart before ready keeps it waiting"
        );
        set(&tx, 0, Phase::Failed);
        assert_eq!(h.await.unwrap(), Turn::Go);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_and_no_predecessor_means_go() {
        let (tx, _keep) = watch::channel(snapshot(&["a", "c"]));
        let (sd, _sd_rx) = watch::channel(false);
        let h = spawn_wait(&tx, &["a"], &sd).await;
        assert!(still_waiting(&h).await);
        sd.send(true).unwrap();
        assert_eq!(h.await.unwrap(), Turn::Shutdown);
        let h = spawn_wait(&tx, &[], &sd).await;
        assert_eq!(h.await.unwrap(), Turn::Go);
    }
}
