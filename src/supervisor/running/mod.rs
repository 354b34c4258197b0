//! One run of an engine: spawn it under its guardian, wait until it is ready (loading its
//! run-time adapters again), watch it (exit, hang, stall), and carry out the controller's
//! orders meanwhile: sleep and wake, adapters, stop and restart after the requests in flight.
//!
//! One `impl EngineTask` is spread over these files, one concern each:
//!
//! - this file: [`EngineTask::run_once`], the run itself (spawn, readiness, the watch
//!   while ready) and the load statistics.
//! - [`triage`]: sorting the controller's orders by what they need, and dropping stale ones.
//! - [`sleep`]: putting the ready engine to sleep and waking it.
//! - [`adapters`]: loading and unloading LoRA adapters at run time, and the engine's
//!   `/v1/models` entries that list them.
//! - [`stop`]: ordered stops (shutdown, and an order's stop after the requests in flight).

mod adapters;
mod sleep;
mod stop;
mod triage;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::control::Guarded;
use super::engine::{EngineTask, HUNG_AFTER, Pumps, RunEnd, STARTUP_PROBE, ended, stopping};
use super::logs::{Stream, Tail, pump};
use super::machine::{self, Event};
use super::orders::{Order, Rest};
use super::reaper::{SpawnRequest, Spawned};
use super::stall::StallWatch;
use crate::engines;
use crate::state::{Phase, update};
use triage::Triage;

/// The first interval between readiness probes; it doubles up to `STARTUP_PROBE`.
const FIRST_PROBE: Duration = Duration::from_millis(5);

/// How an order to stop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopKind {
    /// Rest after the stop.
    Rest(Rest),
    /// Start again at once.
    Restart,
}

impl EngineTask {
    /// One run of the engine: spawns it, waits until it is ready, then watches it and carries
    /// out orders until it exits, hangs, stalls, is stopped, or modelmux shuts down.
    pub(super) async fn run_once(&mut self, name: &Arc<str>, tail: &Tail) -> RunEnd {
        let mut sd = self.shutdown.clone();
        if *sd.borrow() {
            return RunEnd::Shutdown;
        }
        let _ = machine::apply(&self.state, self.index, Event::Start, |m| m.pid = None);
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
        // Read as the engine is about to read it (a llama.cpp key file is read at start).
        self.api_key = engines::api_key(self.launch.engine, &self.launch.argv, &self.launch.env);
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
        let authorization = crate::state::engine_authorization(self.api_key.as_deref());
        self.state.send_modify(|s| {
            let m = &mut s.models[self.index];
            m.pid = Some(pid);
            if m.engine_authorization != authorization {
                m.engine_authorization = authorization;
                s.rebuild_table();
            }
        });

        let started = Instant::now();
        let deadline = started + self.settings.startup_timeout;
        let mut last_log: Option<String> = None;
        let mut probes = 0u32;
        // Starting: probe often until ready, the engine exits, the deadline, an order to
        // stop, or shutdown; meanwhile the engine's last line is published (`last_log`).
        loop {
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
                order = self.orders.recv() => {
                    match self.triage(order, Phase::Starting) {
                        Triage::Stop(kind) => return self.stop_for(kind, engine, pumps).await,
                        Triage::Closed => return self.stop(engine, pumps).await,
                        Triage::Handled => {}
                        Triage::Ready(order) => self.stale(order),
                    }
                    continue;
                }
                healthy = self.prober.healthy(self.launch.port, &self.launch.health_path, STARTUP_PROBE.max(Duration::from_secs(1))) => {
                    if healthy {
                        break;
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
            // Often at first (a small model or a mock is up in milliseconds, and an
            // on-demand request waits for it), then every STARTUP_PROBE.
            let every = STARTUP_PROBE.min(FIRST_PROBE * 2u32.saturating_pow(probes.min(8)));
            probes += 1;
            tokio::select! {
                _ = sleep_until(now + every) => {}
                _ = stopping(&mut sd) => {}
            }
        }
        self.reload_adapters().await;
        let entries = self.engine_models().await;
        if entries.is_none() {
            tracing::warn!(model = %name, pid, "the engine's /v1/models did not answer; /v1/models shows modelmux's own entries for it");
        }
        let _ = machine::apply(&self.state, self.index, Event::Healthy, |m| {
            if let Some(entries) = entries {
                m.engine_models = Some(Arc::new(entries));
            }
        });
        let took = started.elapsed();
        self.stats().loaded(took);
        tracing::info!(model = %name, pid, "ready after {:.1} s", took.as_secs_f64());
        let ready_at = Instant::now();

        // Ready: watch for an exit (at once), for a hang (several failed probes in a row),
        // for a stall (requests running, no progress for MODELMUX_STALL_TIMEOUT), and carry
        // out orders.
        let mut failed_probes = 0u32;
        let stall_timeout = self
            .settings
            .stall_timeout
            .filter(|_| self.progress.is_some());
        let mut stall = stall_timeout.map(StallWatch::new);
        let mut unreadable_said = false;
        let mut asleep = false;
        let mut next_probe = Instant::now() + self.settings.health_interval;
        loop {
            tokio::select! {
                event = engine.next() => {
                    let (reason, exit) = ended(event);
                    if asleep {
                        // Nobody is waiting for a sleeping model: it is simply unloaded now.
                        tracing::warn!(model = %name, pid, "engine {reason} while asleep; the model is unloaded");
                        self.clean_up(Some(engine), pumps).await;
                        let _ = machine::apply(&self.state, self.index, Event::Unload, |m| {
                            m.pid = None;
                            m.last_exit = Some(format!("{reason} while asleep"));
                        });
                        return RunEnd::Parked;
                    }
                    return RunEnd::Ended { reason, exit, ready_for: Some(ready_at.elapsed()), engine: Some(engine), pumps };
                }
                _ = stopping(&mut sd) => return self.stop(engine, pumps).await,
                order = self.orders.recv() => {
                    let phase = if asleep { Phase::Sleeping } else { Phase::Ready };
                    match self.triage(order, phase) {
                        Triage::Stop(kind) => return self.stop_for(kind, engine, pumps).await,
                        Triage::Closed => return self.stop(engine, pumps).await,
                        Triage::Handled => {}
                        Triage::Ready(Order::Sleep) if !asleep => {
                            if let Err(why) = self.put_to_sleep(name).await {
                                tracing::error!(model = %name, pid, "could not put the engine to sleep ({why}); stopping it instead");
                                return self.stop_for(StopKind::Rest(Rest::Unloaded), engine, pumps).await;
                            }
                            asleep = true;
                        }
                        Triage::Ready(Order::Wake) if asleep => {
                            if let Err(reason) = self.wake(name).await {
                                tracing::error!(model = %name, pid, "engine {reason}; stopping it");
                                engine.stop(self.settings.shutdown_grace).await;
                                return RunEnd::Ended { reason, exit: None, ready_for: Some(ready_at.elapsed()), engine: Some(engine), pumps };
                            }
                            asleep = false;
                            failed_probes = 0;
                            stall = stall_timeout.map(StallWatch::new);
                        }
                        Triage::Ready(Order::AddAdapter(adapter, reply)) => {
                            let _ = reply.send(self.add_adapter(adapter).await);
                        }
                        Triage::Ready(Order::RemoveAdapter(adapter, reply)) => {
                            let _ = reply.send(self.remove_adapter(&adapter).await);
                        }
                        Triage::Ready(order) => self.stale(order),
                    }
                    continue;
                }
                _ = sleep_until(next_probe) => {}
            }
            next_probe = Instant::now() + self.settings.health_interval;
            // A busy engine may answer slowly: only several misses in a row count.
            let healthy = tokio::select! {
                h = self.prober.healthy(self.launch.port, &self.launch.health_path, self.settings.health_timeout) => h,
                _ = stopping(&mut sd) => return self.stop(engine, pumps).await,
            };
            if healthy {
                failed_probes = 0;
                let Some(watch) = stall.as_mut().filter(|_| !asleep) else {
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

    /// The model's load statistics.
    fn stats(&self) -> Arc<crate::observability::metrics::LoadStats> {
        self.state.borrow().models[self.index].loads.clone()
    }
}
