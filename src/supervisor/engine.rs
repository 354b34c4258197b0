//! One engine's life: spawn, wait for readiness, watch it, restart it with back-off, mark it
//! failed, stop it. Everything it learns goes into the state snapshot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};

use super::group::stop_group;
use super::logs::{Stream, Tail, pump};
use super::probe::Prober;
use super::reaper::{Exit, Reaper, SpawnRequest, Spawned};
use super::restart::RestartPolicy;
use crate::config::Settings;
use crate::plan::ModelLaunch;
use crate::state::{Phase, StateTx, update};

/// Interval between readiness probes while an engine loads.
const STARTUP_PROBE: Duration = Duration::from_millis(200);
/// Interval between "still loading" log lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// Consecutive failed probes of a ready engine before it counts as hung.
const HUNG_AFTER: u32 = 3;
/// Lines of stderr repeated when an engine fails.
const TAIL_IN_ERROR: usize = 20;

/// A model that failed for good, reported to `serve`.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The model's name.
    pub model: String,
    /// Why its last run ended.
    pub reason: String,
    /// Its last lines of stderr.
    pub stderr_tail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "model {} failed: {}", self.model, self.reason)?;
        if self.stderr_tail.is_empty() {
            write!(f, " (no stderr output)")
        } else {
            write!(
                f,
                "; last stderr lines:\n  {}",
                self.stderr_tail.join("\n  ")
            )
        }
    }
}

/// Everything one engine task needs.
pub struct EngineTask {
    /// Position of the model in the plan and the snapshot.
    pub index: usize,
    /// The model's launch entry.
    pub launch: ModelLaunch,
    /// Process-wide settings (timeouts, restart budget).
    pub settings: Arc<Settings>,
    /// Spawns and reaps.
    pub reaper: Reaper,
    /// Where states are published.
    pub state: StateTx,
    /// Turns true when modelmux shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Where a final failure is reported.
    pub failures: mpsc::UnboundedSender<Failure>,
    /// Health probes.
    pub prober: Prober,
}

/// How one run of the engine ended.
enum RunEnd {
    /// It exited or was stopped because it failed; the string says why.
    Failed { reason: String, ready_for: Duration },
    /// modelmux is shutting down; the engine has been stopped.
    Shutdown,
}

impl EngineTask {
    /// Runs the engine until shutdown or final failure.
    pub async fn run(mut self) {
        let name: Arc<str> = self.launch.name.as_str().into();
        let mut policy =
            RestartPolicy::new(self.settings.restart_delay, self.settings.max_restarts);
        let tail = Tail::default();
        let mut restarts = 0u32;
        loop {
            tail.clear();
            let end = self.run_once(&name, &tail).await;
            let (reason, ready_for) = match end {
                RunEnd::Shutdown => return,
                RunEnd::Failed { reason, ready_for } => (reason, ready_for),
            };
            match policy.next_delay(Instant::now(), ready_for) {
                Some(delay) => {
                    restarts += 1;
                    tracing::warn!(model = %name, "engine {reason}; restart {restarts} in {:.1} s", delay.as_secs_f64());
                    update(&self.state, self.index, |m| {
                        m.state = Phase::Restarting;
                        m.pid = None;
                        m.restarts = restarts;
                        m.last_exit = Some(reason.clone());
                    });
                    if self.wait_or_shutdown(delay).await {
                        return;
                    }
                }
                None => {
                    let failure = Failure {
                        model: name.to_string(),
                        reason: format!(
                            "{reason}; {restarts} restarts within 10 minutes used the budget (MODELMUX_MAX_RESTARTS={})",
                            self.settings.max_restarts
                        ),
                        stderr_tail: tail.last(TAIL_IN_ERROR),
                    };
                    tracing::error!(model = %name, "{failure}");
                    update(&self.state, self.index, |m| {
                        m.state = Phase::Failed;
                        m.pid = None;
                        m.last_exit = Some(reason.clone());
                    });
                    let _ = self.failures.send(failure);
                    return;
                }
            }
        }
    }

    /// Sleeps for `delay`; true if shutdown began meanwhile.
    async fn wait_or_shutdown(&mut self, delay: Duration) -> bool {
        let mut sd = self.shutdown.clone();
        tokio::select! {
            _ = sleep(delay) => *sd.borrow(),
            _ = stopping(&mut sd) => true,
        }
    }

    async fn run_once(&mut self, name: &Arc<str>, tail: &Tail) -> RunEnd {
        let mut sd = self.shutdown.clone();
        if *sd.borrow() {
            return RunEnd::Shutdown;
        }
        let req = SpawnRequest {
            argv: self.launch.argv.clone(),
            env: self.launch.env.clone(),
        };
        let Spawned {
            pid,
            stdout,
            stderr,
            mut exit,
        } = match self.reaper.spawn(req).await {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("could not be started ({}: {e})", self.launch.argv[0]);
                return RunEnd::Failed {
                    reason,
                    ready_for: Duration::ZERO,
                };
            }
        };
        tracing::info!(model = %name, pid, port = self.launch.port, gpus = %self.launch.gpus.join(","), "engine started");
        update(&self.state, self.index, |m| {
            m.state = Phase::Starting;
            m.pid = Some(pid);
        });
        let pumps = [
            tokio::process::ChildStdout::from_std(stdout)
                .map(|p| pump(name.clone(), Stream::Stdout, p, tail.clone())),
            tokio::process::ChildStderr::from_std(stderr)
                .map(|p| pump(name.clone(), Stream::Stderr, p, tail.clone())),
        ];

        let started = Instant::now();
        let deadline = started + self.settings.startup_timeout;
        let mut next_progress = started + PROGRESS_EVERY;
        // Starting: probe often until ready, the engine exits, the deadline or shutdown.
        let ready_at = loop {
            tokio::select! {
                status = &mut exit => {
                    let reason = exited(status);
                    self.after_exit(pid, pumps).await;
                    return RunEnd::Failed { reason: format!("{reason} while starting"), ready_for: Duration::ZERO };
                }
                _ = stopping(&mut sd) => return self.stop(pid, exit, pumps).await,
                healthy = self.prober.healthy(self.launch.port, &self.launch.health_path, STARTUP_PROBE.max(Duration::from_secs(1))) => {
                    if healthy {
                        break Instant::now();
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(model = %name, "engine not ready within MODELMUX_STARTUP_TIMEOUT ({:.0} s); stopping it", self.settings.startup_timeout.as_secs_f64());
                stop_group(pid, self.settings.shutdown_grace).await;
                let _ = exit.await;
                self.after_exit(pid, pumps).await;
                return RunEnd::Failed {
                    reason: format!(
                        "was not ready within {:.0} s",
                        self.settings.startup_timeout.as_secs_f64()
                    ),
                    ready_for: Duration::ZERO,
                };
            }
            if now >= next_progress {
                tracing::info!(model = %name, pid, "still loading ({:.0} s elapsed)", (now - started).as_secs_f64());
                next_progress = now + PROGRESS_EVERY;
            }
            tokio::select! {
                _ = sleep_until(now + STARTUP_PROBE) => {}
                _ = stopping(&mut sd) => {}
            }
        };
        tracing::info!(model = %name, pid, "ready after {:.1} s", (ready_at - started).as_secs_f64());
        update(&self.state, self.index, |m| m.state = Phase::Ready);

        // Ready: watch for an exit (at once) and for a hang (several failed probes in a row).
        let mut failed_probes = 0u32;
        loop {
            tokio::select! {
                status = &mut exit => {
                    let reason = exited(status);
                    self.after_exit(pid, pumps).await;
                    return RunEnd::Failed { reason, ready_for: ready_at.elapsed() };
                }
                _ = stopping(&mut sd) => return self.stop(pid, exit, pumps).await,
                _ = sleep(self.settings.health_interval) => {}
            }
            // A busy engine may answer slowly: only several misses in a row count.
            let healthy = tokio::select! {
                h = self.prober.healthy(self.launch.port, &self.launch.health_path, self.settings.health_timeout) => h,
                _ = stopping(&mut sd) => return self.stop(pid, exit, pumps).await,
            };
            if healthy {
                failed_probes = 0;
                continue;
            }
            failed_probes += 1;
            tracing::warn!(model = %name, pid, "health probe failed ({failed_probes}/{HUNG_AFTER})");
            if failed_probes >= HUNG_AFTER {
                tracing::error!(model = %name, pid, "engine is not answering /health; stopping it");
                stop_group(pid, self.settings.shutdown_grace).await;
                let _ = exit.await;
                self.after_exit(pid, pumps).await;
                return RunEnd::Failed {
                    reason: format!(
                        "stopped answering /health ({HUNG_AFTER} probes failed in a row)"
                    ),
                    ready_for: ready_at.elapsed(),
                };
            }
        }
    }

    /// After the leader exited: clear up the rest of its group (vLLM workers hold GPU
    /// memory) and let the log pumps drain.
    async fn after_exit(&self, pid: u32, pumps: [std::io::Result<tokio::task::JoinHandle<()>>; 2]) {
        stop_group(pid, self.settings.shutdown_grace).await;
        drain(pumps).await;
    }

    /// Shutdown: SIGTERM the group, SIGKILL after the grace period, reap.
    async fn stop(
        &self,
        pid: u32,
        exit: tokio::sync::oneshot::Receiver<Exit>,
        pumps: [std::io::Result<tokio::task::JoinHandle<()>>; 2],
    ) -> RunEnd {
        update(&self.state, self.index, |m| m.state = Phase::Stopping);
        let killed = stop_group(pid, self.settings.shutdown_grace).await;
        let status = tokio::time::timeout(Duration::from_secs(5), exit).await;
        let how = match status {
            Ok(Ok(s)) => s.to_string(),
            _ => "gone".to_string(),
        };
        if killed {
            tracing::warn!(model = %self.launch.name, pid, "engine ignored SIGTERM for {:.0} s; killed ({how})", self.settings.shutdown_grace.as_secs_f64());
        } else {
            tracing::info!(model = %self.launch.name, pid, "engine stopped ({how})");
        }
        drain(pumps).await;
        update(&self.state, self.index, |m| m.pid = None);
        RunEnd::Shutdown
    }
}

/// Resolves once shutdown has begun.
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn exited(status: Result<Exit, tokio::sync::oneshot::error::RecvError>) -> String {
    match status {
        Ok(exit) => format!("exited ({exit})"),
        Err(_) => "exited (status unknown)".to_string(),
    }
}

/// Waits briefly for the log pumps so that the last lines are logged and kept; a pipe held
/// open by a stray grandchild must not block.
async fn drain(pumps: [std::io::Result<tokio::task::JoinHandle<()>>; 2]) {
    for p in pumps.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
    }
}
