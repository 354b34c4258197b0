//! Loading progress in the log. Loading a large model takes minutes; meanwhile the log says
//! every `MODELMUX_PROGRESS_INTERVAL` (10 s) which models are still loading, for how long,
//! and the engine's last line:
//!
//! ```text
//! chat: loading 34 s — Loading safetensors checkpoint shards:  50% Completed | 1/2 [...]
//! ```
//!
//! and, the first time every model is ready, one line:
//!
//! ```text
//! all 2 models ready in 41.3 s — serving on http://0.0.0.0:8080
//! ```
//!
//! It only reads the published snapshot; engines that load again after a restart get their
//! progress lines too.

use std::time::{Duration, SystemTime};

use tokio::time::{Instant, sleep_until};

use crate::state::{Phase, StateRx};

/// The line for a model still loading.
pub fn loading_line(name: &str, loading_for: Duration, last_log: Option<&str>) -> String {
    let secs = loading_for.as_secs_f64().floor();
    match last_log {
        Some(line) => format!("{name}: loading {secs:.0} s — {line}"),
        None => format!("{name}: loading {secs:.0} s (no output yet)"),
    }
}

/// The line once every model is ready.
pub fn ready_line(models: usize, took: Duration, serving_on: &str) -> String {
    let what = if models == 1 {
        "1 model".to_string()
    } else {
        format!("all {models} models")
    };
    format!(
        "{what} ready in {:.1} s — serving on {serving_on}",
        took.as_secs_f64()
    )
}

/// Logs progress until shutdown begins. `started` is when modelmux started; `serving_on`
/// the front's URL.
pub async fn report(mut state: StateRx, every: Duration, started: Instant, serving_on: String) {
    let mut announced = false;
    let mut next = Instant::now() + every;
    loop {
        {
            let snapshot = state.borrow_and_update();
            if snapshot.stopping {
                return;
            }
            if !announced && snapshot.all_ready() {
                announced = true;
                let line = ready_line(snapshot.live().count(), started.elapsed(), &serving_on);
                tracing::info!("{line}");
            }
        }
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = sleep_until(next) => {}
        }
        next = Instant::now() + every;
        let snapshot = state.borrow();
        let now = SystemTime::now();
        for (_, m) in snapshot.live().filter(|(_, m)| m.state == Phase::Starting) {
            let loading_for = now.duration_since(m.since).unwrap_or_default();
            let line = loading_line(&m.name, loading_for, m.last_log.as_deref());
            tracing::info!(model = %m.name, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_the_operator_expects() {
        assert_eq!(
            loading_line(
                "chat",
                Duration::from_millis(34_900),
                Some("Loading safetensors checkpoint shards: 50% ...")
            ),
            "chat: loading 34 s — Loading safetensors checkpoint shards: 50% ..."
        );
        assert_eq!(
            loading_line("embed", Duration::from_secs(3), None),
            "embed: loading 3 s (no output yet)"
        );
        assert_eq!(
            ready_line(2, Duration::from_millis(41_300), "http://0.0.0.0:8080"),
            "all 2 models ready in 41.3 s — serving on http://0.0.0.0:8080"
        );
        assert_eq!(
            ready_line(1, Duration::from_millis(500), "http://0.0.0.0:8080"),
            "1 model ready in 0.5 s — serving on http://0.0.0.0:8080"
        );
    }
}
