//! One engine's life: spawn (under its guardian), wait for readiness, watch it, restart it
//! with back-off, mark it failed, stop it. Everything it learns goes into the state snapshot,
//! and a change of state is published the moment it happens (an engine that exits is
//! `restarting` or `failed` at once, while its leftovers are still being cleaned up).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::calls::EngineCalls;
use super::control::{Event as GuardianEvent, Guarded};
use super::logs::{Excerpt, Tail};
use super::machine::{self, Event};
use super::orders::{AdapterError, Order, Rest};
use super::probe::Prober;
use super::reaper::{Exit, Reaper};
use super::restart::RestartPolicy;
use super::stall::{ProgressMetrics, StallWatch};
use crate::config::{OnFailure, Settings};
use crate::engines;
use crate::observability::scrape;
use crate::plan::ModelLaunch;
use crate::state::StateTx;

/// Interval between readiness probes while an engine loads.
pub(super) const STARTUP_PROBE: Duration = Duration::from_millis(200);
/// Consecutive failed probes of a ready engine before it counts as hung.
pub(super) const HUNG_AFTER: u32 = 3;
/// Error lines and other last lines repeated when an engine fails.
const ERRORS_IN_FAILURE: usize = 12;
const OTHERS_IN_FAILURE: usize = 15;
/// Longest line repeated in a failure message.
const LINE_IN_FAILURE: usize = 500;
/// Time the guardian gets past the grace period to report that everything is gone.
pub(super) const CLEANUP_SLACK: Duration = Duration::from_secs(5);

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
    /// Position of the model in the snapshot.
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
    /// Control calls (sleep, wake, adapters).
    pub calls: EngineCalls,
    /// The engine's metric names for the progress check (`MODELMUX_STALL_TIMEOUT`), from
    /// its profile; `None` for an engine without metrics, which is not checked.
    pub progress: Option<ProgressMetrics>,
    /// Orders from the controller.
    pub orders: mpsc::UnboundedReceiver<Order>,
    /// Start at once (an always-loaded model of the first plan); otherwise wait for
    /// [`Order::Start`].
    pub autostart: bool,
    /// The engine's own API key, read as the engine reads it, when it is spawned (a
    /// llama.cpp key file may have changed since the last run): modelmux's own calls
    /// send it, and the front's routes get it published.
    pub api_key: Option<String>,
}

pub(super) type Pumps = Vec<std::io::Result<JoinHandle<()>>>;

/// How one run of the engine ended.
pub(super) enum RunEnd {
    /// modelmux is shutting down; the engine has been stopped.
    Shutdown,
    /// The engine was stopped by an order and rests (`stopped` or `unloaded`).
    Parked,
    /// The engine was stopped by a reload that removed or replaced the model.
    Retired,
    /// The engine was stopped by an operator's restart: start it again at once.
    Again,
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

/// What to do next.
enum Step {
    /// Run the engine.
    Run,
    /// No engine: wait for an order.
    Idle,
    /// The task ends.
    Exit,
}

impl EngineTask {
    /// Runs the model until shutdown, final failure (without degrade) or retirement.
    pub async fn run(mut self) {
        let name: Arc<str> = self.launch.name.as_str().into();
        let mut policy =
            RestartPolicy::new(self.settings.restart_delay, self.settings.max_restarts);
        let tail = Tail::default();
        let mut restarts = 0u32;
        let mut ever_ready = false;
        let mut step = if self.autostart {
            // Engines that share a GPU start one after another (stage.rs).
            let after = self.launch.start_after.clone();
            match super::stage::wait_turn(&name, &after, &self.state, &mut self.shutdown).await {
                super::stage::Turn::Shutdown => Step::Exit,
                super::stage::Turn::Go => Step::Run,
            }
        } else {
            Step::Idle
        };
        // Set when the model failed for good; an operator's start after that begins afresh
        // (a full restart budget, a first back-off delay).
        let mut failed = false;
        loop {
            step = match step {
                Step::Exit => return,
                Step::Idle => {
                    let next = self.idle().await;
                    if failed && matches!(next, Step::Run) {
                        failed = false;
                        ever_ready = false;
                        policy = RestartPolicy::new(
                            self.settings.restart_delay,
                            self.settings.max_restarts,
                        );
                    }
                    next
                }
                Step::Run => {
                    tail.clear();
                    let (reason, exit, ready_for, engine, pumps) =
                        match self.run_once(&name, &tail).await {
                            RunEnd::Shutdown | RunEnd::Retired => return,
                            RunEnd::Parked => {
                                step = Step::Idle;
                                continue;
                            }
                            RunEnd::Again => {
                                step = Step::Run;
                                continue;
                            }
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
                    // Published now, before the leftovers are cleaned up: requests get 503,
                    // not 502.
                    let event = if delay.is_some() {
                        Event::Crash
                    } else {
                        Event::GiveUp
                    };
                    let _ = machine::apply(&self.state, self.index, event, |m| {
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
                        Some(delay) => self.back_off(delay).await,
                        None => {
                            failed = true;
                            let recent = policy.recent() as u32;
                            self.give_up(&name, &reason, usage_error, recent, &tail);
                            // With degrade, an operator may start it again.
                            Step::Idle
                        }
                    }
                }
            };
        }
    }

    /// Reports a model that failed for good; `restarts` is how many the current window held.
    fn give_up(&self, name: &str, reason: &str, usage_error: bool, restarts: u32, tail: &Tail) {
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
    }

    /// Waits for the back-off before a restart; an order may cut it short.
    async fn back_off(&mut self, delay: Duration) -> Step {
        let mut sd = self.shutdown.clone();
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return if *sd.borrow() { Step::Exit } else { Step::Run },
                _ = stopping(&mut sd) => return Step::Exit,
                order = self.orders.recv() => match order {
                    None => return Step::Exit,
                    Some(order) => {
                        if let Some(step) = self.order_without_engine(order) {
                            return step;
                        }
                    }
                },
            }
        }
    }

    /// No engine runs (stopped, unloaded, failed): waits for an order.
    async fn idle(&mut self) -> Step {
        let mut sd = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = stopping(&mut sd) => return Step::Exit,
                order = self.orders.recv() => match order {
                    None => return Step::Exit,
                    Some(order) => {
                        if let Some(step) = self.order_without_engine(order) {
                            return step;
                        }
                    }
                },
            }
        }
    }

    /// An order while no engine runs; the next step, or `None` to keep waiting.
    fn order_without_engine(&mut self, order: Order) -> Option<Step> {
        let phase = self.state.borrow().models[self.index].state;
        match order {
            Order::Start | Order::Restart => Some(Step::Run),
            Order::Wake | Order::Sleep => {
                // Stale: the engine it was meant for is gone.
                self.usage().undrain();
                None
            }
            Order::Stop(rest) => {
                let event = match rest {
                    Rest::Unloaded => Event::Unload,
                    Rest::Stopped | Rest::Retired => Event::Halt,
                };
                if machine::next(phase, event).is_some() {
                    let _ = machine::apply(&self.state, self.index, event, |_| {});
                }
                if rest == Rest::Retired {
                    return Some(Step::Exit);
                }
                self.usage().undrain();
                Some(Step::Idle)
            }
            Order::AddAdapter(_, reply) => {
                let _ = reply.send(Err(AdapterError::NotRunning(phase)));
                None
            }
            Order::RemoveAdapter(name, reply) => {
                let _ = reply.send(self.forget_adapter(&name));
                None
            }
        }
    }

    /// Drops a run-time adapter from the model's list (it is not loaded again).
    pub(super) fn forget_adapter(&self, name: &str) -> Result<(), AdapterError> {
        let mut found = false;
        self.state.send_modify(|s| {
            let m = &mut s.models[self.index];
            let before = m.runtime_adapters.len();
            m.runtime_adapters.retain(|a| a.name != name);
            found = m.runtime_adapters.len() != before;
            if found {
                s.rebuild_table();
            }
        });
        if found {
            Ok(())
        } else {
            Err(AdapterError::Unknown)
        }
    }

    /// The model's usage (leases in flight).
    pub(super) fn usage(&self) -> Arc<crate::usage::Usage> {
        self.state.borrow().models[self.index].usage.clone()
    }

    /// Waits until the guardian reports that no process of the engine is left (it was
    /// already told to stop them), and lets the log pumps drain.
    pub(super) async fn clean_up(&self, engine: Option<Guarded>, pumps: Pumps) {
        if let Some(mut engine) = engine {
            engine
                .finish(self.settings.shutdown_grace + CLEANUP_SLACK, &self.reaper)
                .await;
        }
        drain(pumps).await;
    }

    /// Reads the engine's progress metrics once and feeds them to `watch`; the reason for a
    /// restart when it has stalled. An engine whose metrics cannot be read is said once per
    /// run (at info: it may simply not export them) and not judged.
    pub(super) async fn check_progress(
        &self,
        watch: &mut StallWatch,
        said: &mut bool,
    ) -> Option<String> {
        let (Some(progress), Some(path)) = (self.progress, self.launch.metrics_path.as_deref())
        else {
            return None;
        };
        let authority = format!("127.0.0.1:{}", self.launch.port);
        let timeout = self.settings.health_timeout;
        let key = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let reading = match scrape::fetch_within(&authority, path, key, timeout).await {
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
}

/// Resolves once shutdown has begun.
pub(super) async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Why a run ended, from the guardian's report.
pub(super) fn ended(event: GuardianEvent) -> (String, Option<Exit>) {
    match event {
        GuardianEvent::Exited(exit) => (format!("exited ({exit})"), Some(exit)),
        GuardianEvent::Gone | GuardianEvent::Lost => {
            ("ended (its guardian was killed)".to_string(), None)
        }
    }
}

/// Waits briefly for the log pumps so that the last lines are logged and kept; a pipe held
/// open by a stray process must not block.
pub(super) async fn drain(pumps: Pumps) {
    for p in pumps.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
    }
}
