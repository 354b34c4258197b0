//! One engine's life: spawn (under its guardian), wait for readiness, watch it, restart it
//! with back-off, mark it failed, stop it. Everything it learns goes into the state snapshot,
//! and a change of state is published the moment it happens (an engine that exits is
//! `restarting` or `failed` at once, while its leftovers are still being cleaned up).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use super::control::{Event, Guarded};
use super::logs::{Excerpt, Stream, Tail, pump};
use super::probe::Prober;
use super::reaper::{Exit, Reaper, SpawnRequest, Spawned};
use super::restart::RestartPolicy;
use super::stall::{ProgressMetrics, StallWatch};
use crate::config::{OnFailure, Settings};
use crate::engines;
use crate::observability::scrape;
use crate::plan::ModelLaunch;
use crate::state::{Phase, StateTx, update};

/// Interval between readiness probes while an engine loads.
const STARTUP_PROBE: Duration = Duration::from_millis(200);
/// Consecutive failed probes of a ready engine before it counts as hung.
const HUNG_AFTER: u32 = 3;
/// Error lines and other last lines repeated when an engine fails.
const ERRORS_IN_FAILURE: usize = 12;
const OTHERS_IN_FAILURE: usize = 15;
/// Longest line repeated in a failure message.
const LINE_IN_FAILURE: usize = 500;
/// Time the guardian gets past the grace period to report that everything is gone.
const CLEANUP_SLACK: Duration = Duration::from_secs(5);

/// A model that failed for good, reported to `serve`.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The model's name.
    pub model: String,
    /// Why its last run ended, and why it is not restarted.
    pub reason: String,
    /// The engine's last output (both streams): root cause, error lines, other lines.
    pub output: Excerpt,
}

fn cut(line: &str) -> &str {
    match line.char_indices().nth(LINE_IN_FAILURE) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "model {} failed: {}", self.model, self.reason)?;
        if let Some(cause) = &self.output.root_cause {
            write!(f, "; root cause: {}", cut(cause))?;
        }
        let lines = self
            .output
            .error_lines
            .iter()
            .chain(&self.output.other_lines);
        let mut any = false;
        for (i, line) in lines.enumerate() {
            if i == 0 {
                write!(f, "\n  the engine's last output (error lines first):")?;
            }
            write!(f, "\n    {}", cut(line))?;
            any = true;
        }
        if !any {
            write!(f, " (the engine wrote nothing)")?;
        }
        Ok(())
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
    /// The engine's metric names for the progress check (`MODELMUX_STALL_TIMEOUT`), from
    /// its profile; `None` for an engine without metrics, which is not checked.
    pub progress: Option<ProgressMetrics>,
}

type Pumps = Vec<std::io::Result<JoinHandle<()>>>;

/// How one run of the engine ended.
enum RunEnd {
    /// modelmux is shutting down; the engine has been stopped.
    Shutdown,
    /// The run is over (the engine exited, hung, was not ready in time, or did not start).
    /// `engine` may still have processes that its guardian is stopping.
    Ended {
        reason: String,
        exit: Option<Exit>,
        /// How long it had been ready; `None` if it never was in this run.
        ready_for: Option<Duration>,
        engine: Option<Guarded>,
        pumps: Pumps,
    },
}

impl EngineTask {
    /// Runs the engine until shutdown or final failure.
    pub async fn run(mut self) {
        let name: Arc<str> = self.launch.name.as_str().into();
        let mut policy =
            RestartPolicy::new(self.settings.restart_delay, self.settings.max_restarts);
        let tail = Tail::default();
        let mut restarts = 0u32;
        let mut ever_ready = false;
        // Engines that share a GPU start one after another (stage.rs).
        let after = self.launch.start_after.clone();
        if super::stage::wait_turn(&name, &after, &self.state, &mut self.shutdown).await
            == super::stage::Turn::Shutdown
        {
            return;
        }
        loop {
            tail.clear();
            let (reason, exit, ready_for, engine, pumps) = match self.run_once(&name, &tail).await {
                RunEnd::Shutdown => return,
                RunEnd::Ended {
                    reason,
                    exit,
                    ready_for,
                    engine,
                    pumps,
                } => (reason, exit, ready_for, engine, pumps),
            };
            ever_ready |= ready_for.is_some();
            // argparse exits 2: the same command line would fail the same way again.
            let usage_error = exit == Some(Exit::Code(2)) && !ever_ready;
            let delay = if usage_error {
                None
            } else {
                policy.next_delay(Instant::now(), ready_for.unwrap_or_default())
            };
            // Published now, before the leftovers are cleaned up: requests get 503, not 502.
            update(&self.state, self.index, |m| {
                m.state = if delay.is_some() {
                    Phase::Restarting
                } else {
                    Phase::Failed
                };
                m.pid = None;
                m.last_exit = Some(reason.clone());
                if delay.is_some() {
                    m.restarts = restarts + 1;
                }
            });
            if let Some(delay) = delay {
                restarts += 1;
                tracing::warn!(model = %name, "engine {reason}; restart {restarts} in {:.1} s", delay.as_secs_f64());
            }
            self.clean_up(engine, pumps).await;
            match delay {
                Some(delay) => {
                    if self.wait_or_shutdown(delay).await {
                        return;
                    }
                }
                None => {
                    let why = if usage_error {
                        // VLLM_PARAMS reaches vLLM models only.
                        let check = match self.launch.engine {
                            engines::Engine::Vllm => "the model's params and VLLM_PARAMS",
                            _ => "the model's params",
                        };
                        format!(
                            "{reason}: a usage error before it was ever ready, so it is not restarted (check {check})"
                        )
                    } else {
                        format!(
                            "{reason}; {restarts} restarts within 10 minutes used the budget (MODELMUX_MAX_RESTARTS={})",
                            self.settings.max_restarts
                        )
                    };
                    let failure = Failure {
                        model: name.to_string(),
                        reason: why,
                        output: tail.excerpt(ERRORS_IN_FAILURE, OTHERS_IN_FAILURE),
                    };
                    // With `exit`, serve prints the failure once, as its last word.
                    if self.settings.on_failure == OnFailure::Degrade {
                        tracing::error!(model = %name, "{failure}");
                    }
                    let _ = self.failures.send(failure);
                    return;
                }
            }
        }
    }

    /// Waits until the guardian reports that no process of the engine is left (it was
    /// already told to stop them), and lets the log pumps drain.
    async fn clean_up(&self, engine: Option<Guarded>, pumps: Pumps) {
        if let Some(mut engine) = engine {
            engine
                .finish(self.settings.shutdown_grace + CLEANUP_SLACK, &self.reaper)
                .await;
        }
        drain(pumps).await;
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
        let not_started = |reason: String, pumps: Pumps| RunEnd::Ended {
            reason,
            exit: None,
            ready_for: None,
            engine: None,
            pumps,
        };
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", self.launch.port)) {
            let reason = format!(
                "could not be started: its port 127.0.0.1:{} is in use ({e})",
                self.launch.port
            );
            return not_started(reason, Vec::new());
        }
        let req = SpawnRequest {
            argv: self.launch.argv.clone(),
            env: self.launch.env.clone(),
            grace: self.settings.shutdown_grace,
        };
        let program = &self.launch.argv[0];
        let Spawned {
            guardian,
            stdout,
            stderr,
            control,
            exit,
        } = match self.reaper.spawn(req).await {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("could not be started (its guardian, for {program}: {e})");
                return not_started(reason, Vec::new());
            }
        };
        let pumps: Pumps = vec![
            tokio::process::ChildStdout::from_std(stdout)
                .map(|p| pump(name.clone(), Stream::Stdout, p, tail.clone())),
            tokio::process::ChildStderr::from_std(stderr)
                .map(|p| pump(name.clone(), Stream::Stderr, p, tail.clone())),
        ];
        let mut engine = match Guarded::attach(control, guardian, exit).await {
            Ok(g) => g,
            Err(why) => {
                return not_started(format!("could not be started ({program}: {why})"), pumps);
            }
        };
        let pid = engine.pid;
        tracing::info!(model = %name, pid, guardian, port = self.launch.port, gpus = %self.launch.gpus.join(","), "engine started");
        update(&self.state, self.index, |m| {
            m.state = Phase::Starting;
            m.pid = Some(pid);
        });

        let started = Instant::now();
        let deadline = started + self.settings.startup_timeout;
        let mut last_log: Option<String> = None;
        // Starting: probe often until ready, the engine exits, the deadline or shutdown;
        // meanwhile the engine's last line is published (`last_log`) as it changes.
        let ready_at = loop {
            let line = tail.last_line();
            if line != last_log {
                last_log = line.clone();
                update(&self.state, self.index, |m| m.last_log = line);
            }
            tokio::select! {
                event = engine.next() => {
                    let (reason, exit) = ended(event);
                    return RunEnd::Ended { reason: format!("{reason} while starting"), exit, ready_for: None, engine: Some(engine), pumps };
                }
                _ = stopping(&mut sd) => return self.stop(engine, pumps).await,
                healthy = self.prober.healthy(self.launch.port, &self.launch.health_path, STARTUP_PROBE.max(Duration::from_secs(1))) => {
                    if healthy {
                        break Instant::now();
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(model = %name, "engine not ready within MODELMUX_STARTUP_TIMEOUT ({:.0} s); stopping it", self.settings.startup_timeout.as_secs_f64());
                engine.stop(self.settings.shutdown_grace).await;
                return RunEnd::Ended {
                    reason: format!(
                        "was not ready within {:.0} s",
                        self.settings.startup_timeout.as_secs_f64()
                    ),
                    exit: None,
                    ready_for: None,
                    engine: Some(engine),
                    pumps,
                };
            }
            tokio::select! {
                _ = sleep_until(now + STARTUP_PROBE) => {}
                _ = stopping(&mut sd) => {}
            }
        };
        tracing::info!(model = %name, pid, "ready after {:.1} s", (ready_at - started).as_secs_f64());
        let entries = self
            .prober
            .models(
                self.launch.port,
                engines::api_key(self.launch.engine, &self.launch.argv, &self.launch.env)
                    .as_deref(),
                Duration::from_secs(5),
            )
            .await;
        if entries.is_none() {
            tracing::warn!(model = %name, pid, "the engine's /v1/models did not answer; /v1/models shows modelmux's own entries for it");
        }
        // Entries for the served names the engine does not list itself (SGLang and
        // llama.cpp list the first, TGI its model id), copied from its base-model entry.
        let entries = entries.map(|list| {
            let l = &self.launch;
            engines::model_entries(&l.served_names, &l.model_path, &l.adapters, list)
        });
        update(&self.state, self.index, |m| {
            m.state = Phase::Ready;
            if let Some(entries) = entries {
                m.engine_models = Some(Arc::new(entries));
            }
        });

        // Ready: watch for an exit (at once), for a hang (several failed probes in a row) and
        // for a stall (requests running, no progress for MODELMUX_STALL_TIMEOUT).
        let mut failed_probes = 0u32;
        let mut stall = self
            .settings
            .stall_timeout
            .filter(|_| self.progress.is_some())
            .map(StallWatch::new);
        let mut unreadable_said = false;
        loop {
            tokio::select! {
                event = engine.next() => {
                    let (reason, exit) = ended(event);
                    return RunEnd::Ended { reason, exit, ready_for: Some(ready_at.elapsed()), engine: Some(engine), pumps };
                }
                _ = stopping(&mut sd) => return self.stop(engine, pumps).await,
                _ = sleep(self.settings.health_interval) => {}
            }
            // A busy engine may answer slowly: only several misses in a row count.
            let healthy = tokio::select! {
                h = self.prober.healthy(self.launch.port, &self.launch.health_path, self.settings.health_timeout) => h,
                _ = stopping(&mut sd) => return self.stop(engine, pumps).await,
            };
            if healthy {
                failed_probes = 0;
                let Some(watch) = stall.as_mut() else {
                    continue;
                };
                let verdict = tokio::select! {
                    v = self.check_progress(watch, &mut unreadable_said) => v,
                    event = engine.next() => {
                        let (reason, exit) = ended(event);
                        return RunEnd::Ended { reason, exit, ready_for: Some(ready_at.elapsed()), engine: Some(engine), pumps };
                    }
                    _ = stopping(&mut sd) => return self.stop(engine, pumps).await,
                };
                if let Some(reason) = verdict {
                    tracing::error!(model = %name, pid, "engine is {reason}; stopping it");
                    engine.stop(self.settings.shutdown_grace).await;
                    return RunEnd::Ended {
                        reason,
                        exit: None,
                        ready_for: Some(ready_at.elapsed()),
                        engine: Some(engine),
                        pumps,
                    };
                }
                continue;
            }
            failed_probes += 1;
            tracing::warn!(model = %name, pid, "health probe failed ({failed_probes}/{HUNG_AFTER})");
            if failed_probes >= HUNG_AFTER {
                tracing::error!(model = %name, pid, "engine is not answering /health; stopping it");
                engine.stop(self.settings.shutdown_grace).await;
                return RunEnd::Ended {
                    reason: format!(
                        "stopped answering /health ({HUNG_AFTER} probes failed in a row)"
                    ),
                    exit: None,
                    ready_for: Some(ready_at.elapsed()),
                    engine: Some(engine),
                    pumps,
                };
            }
        }
    }

    /// Reads the engine's progress metrics once and feeds them to `watch`; the reason for a
    /// restart when it has stalled. An engine whose metrics cannot be read is said once per
    /// run (at info: it may simply not export them) and not judged.
    async fn check_progress(&self, watch: &mut StallWatch, said: &mut bool) -> Option<String> {
        let (Some(progress), Some(path)) = (self.progress, self.launch.metrics_path.as_deref())
        else {
            return None;
        };
        let authority = format!("127.0.0.1:{}", self.launch.port);
        let timeout = self.settings.health_timeout;
        let reading = match scrape::fetch_within(&authority, path, timeout).await {
            Ok(text) => progress.read(&text).ok_or_else(|| {
                format!(
                    "its {path} has no {} or no progress counter",
                    progress.running
                )
            }),
            Err(why) => Err(format!("its {path} did not answer ({why})")),
        };
        match reading {
            Ok(reading) => {
                *said = false;
                let stall = watch.observe(Instant::now(), reading)?;
                Some(stall.reason(self.settings.stall_timeout.unwrap_or_default()))
            }
            Err(why) => {
                if !*said {
                    *said = true;
                    tracing::info!(model = %self.launch.name, "cannot check the engine's progress: {why}; MODELMUX_STALL_TIMEOUT does not apply until it can");
                }
                None
            }
        }
    }

    /// Shutdown: the ordered stop through the guardian (SIGTERM to the main process, SIGKILL
    /// to whatever is left after the grace period), then wait until nothing is left.
    async fn stop(&self, mut engine: Guarded, pumps: Pumps) -> RunEnd {
        update(&self.state, self.index, |m| m.state = Phase::Stopping);
        let grace = self.settings.shutdown_grace;
        engine.stop(grace).await;
        let exit = engine.finish(grace + CLEANUP_SLACK, &self.reaper).await;
        let pid = engine.pid;
        match exit {
            Some(Exit::Signal(9)) => {
                tracing::warn!(model = %self.launch.name, pid, "engine ignored SIGTERM for {:.0} s; killed (killed by SIGKILL)", grace.as_secs_f64())
            }
            Some(e) => tracing::info!(model = %self.launch.name, pid, "engine stopped ({e})"),
            None => tracing::info!(model = %self.launch.name, pid, "engine stopped"),
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

/// Why a run ended, from the guardian's report.
fn ended(event: Event) -> (String, Option<Exit>) {
    match event {
        Event::Exited(exit) => (format!("exited ({exit})"), Some(exit)),
        Event::Gone | Event::Lost => ("ended (its guardian was killed)".to_string(), None),
    }
}

/// Waits briefly for the log pumps so that the last lines are logged and kept; a pipe held
/// open by a stray process must not block.
async fn drain(pumps: Pumps) {
    for p in pumps.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
    }
}
