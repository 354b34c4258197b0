//! One run of an engine: spawn it under its guardian, wait until it is ready (loading its
//! run-time adapters again), watch it (exit, hang, stall), and carry out the controller's
//! orders meanwhile: sleep and wake, adapters, stop and restart after the requests in flight.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::control::Guarded;
use super::engine::{
    CLEANUP_SLACK, EngineTask, HUNG_AFTER, Pumps, RunEnd, STARTUP_PROBE, drain, ended,
    engine_api_key, stopping,
};
use super::logs::{Stream, Tail, pump};
use super::machine::{self, Event};
use super::orders::{AdapterError, Order, Rest};
use super::reaper::{Exit, SpawnRequest, Spawned};
use super::stall::StallWatch;
use crate::state::{Phase, RuntimeAdapter, update};

/// The first interval between readiness probes; it doubles up to `STARTUP_PROBE`.
const FIRST_PROBE: Duration = Duration::from_millis(5);
/// How long an adapter load or unload may take.
const ADAPTER_CALL: Duration = Duration::from_secs(300);

/// How an order to stop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopKind {
    /// Rest after the stop.
    Rest(Rest),
    /// Start again at once.
    Restart,
}

/// An order sorted by what it needs.
enum Triage {
    /// Stop the engine.
    Stop(StopKind),
    /// Done (or nothing to do).
    Handled,
    /// Needs a ready engine.
    Ready(Order),
    /// The controller is gone.
    Closed,
}

impl EngineTask {
    /// Sorts an order: stops, and what can be answered without the engine.
    fn triage(&mut self, order: Option<Order>, phase: Phase) -> Triage {
        match order {
            None => Triage::Closed,
            Some(Order::Stop(rest)) => Triage::Stop(StopKind::Rest(rest)),
            Some(Order::Restart) => Triage::Stop(StopKind::Restart),
            Some(Order::Start) => Triage::Handled,
            Some(Order::AddAdapter(_, reply)) if phase != Phase::Ready => {
                let _ = reply.send(Err(AdapterError::NotRunning(phase)));
                Triage::Handled
            }
            Some(Order::RemoveAdapter(name, reply)) if phase != Phase::Ready => {
                let _ = reply.send(self.forget_adapter(&name));
                Triage::Handled
            }
            Some(order) => Triage::Ready(order),
        }
    }

    /// Gives leases again and says so (waiting requests look at the state again).
    fn undrain(&self) {
        self.usage().undrain();
        update(&self.state, self.index, |_| {});
    }

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
        update(&self.state, self.index, |m| m.pid = Some(pid));

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

    /// An order that does not apply in the model's phase now (it was meant for an earlier
    /// one): sleep and wake are dropped, a drain that came with them is undone.
    fn stale(&self, order: Order) {
        match order {
            Order::Sleep => self.undrain(),
            Order::AddAdapter(_, reply) => {
                let phase = self.state.borrow().models[self.index].state;
                let _ = reply.send(Err(AdapterError::NotRunning(phase)));
            }
            Order::RemoveAdapter(name, reply) => {
                let _ = reply.send(self.forget_adapter(&name));
            }
            _ => {}
        }
    }

    /// The model's load statistics.
    fn stats(&self) -> Arc<crate::observability::metrics::LoadStats> {
        self.state.borrow().models[self.index].loads.clone()
    }

    /// The engine's `/v1/models` entries, with entries for the served names the engine
    /// does not list itself (SGLang and llama.cpp list the first, TGI its model id) copied
    /// from its base-model entry.
    async fn engine_models(&self) -> Option<Vec<serde_json::Value>> {
        let list = self
            .prober
            .models(
                self.launch.port,
                engine_api_key(&self.launch).as_deref(),
                Duration::from_secs(5),
            )
            .await?;
        let l = &self.launch;
        let adapters: Vec<String> = {
            let s = self.state.borrow();
            let m = &s.models[self.index];
            l.adapters
                .iter()
                .cloned()
                .chain(m.runtime_adapters.iter().map(|a| a.name.clone()))
                .collect()
        };
        Some(crate::engines::model_entries(
            &l.served_names,
            &l.model_path,
            &adapters,
            list,
        ))
    }

    /// Puts the ready engine to sleep (the controller drained it: requests that come
    /// meanwhile wait). It is `sleeping` once its memory is released, not before, so that
    /// nothing counts on that memory too early; then requests ask for a wake.
    async fn put_to_sleep(&self, name: &str) -> Result<(), String> {
        let began = Instant::now();
        let key = engine_api_key(&self.launch);
        self.calls
            .sleep(
                self.launch.port,
                key.as_deref(),
                self.settings.startup_timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.usage().undrain();
        let _ = machine::apply(&self.state, self.index, Event::Sleep, |_| {});
        self.stats().unloaded();
        tracing::info!(model = %name, "engine asleep after {:.2} s (idle; weights in CPU memory)", began.elapsed().as_secs_f64());
        Ok(())
    }

    /// Wakes the sleeping engine and waits until it answers `/health`.
    async fn wake(&self, name: &str) -> Result<(), String> {
        let began = Instant::now();
        let _ = machine::apply(&self.state, self.index, Event::Wake, |_| {});
        let key = engine_api_key(&self.launch);
        let timeout = self.settings.startup_timeout;
        self.calls
            .wake_up(self.launch.port, key.as_deref(), timeout)
            .await
            .map_err(|e| format!("did not wake: {e}"))?;
        let deadline = began + timeout;
        while !self
            .prober
            .healthy(
                self.launch.port,
                &self.launch.health_path,
                Duration::from_secs(1),
            )
            .await
        {
            if Instant::now() >= deadline {
                return Err(format!(
                    "did not answer /health within {:.0} s of waking",
                    timeout.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = machine::apply(&self.state, self.index, Event::Healthy, |_| {});
        let took = began.elapsed();
        self.stats().loaded(took);
        tracing::info!(model = %name, "engine awake after {:.3} s", took.as_secs_f64());
        Ok(())
    }

    /// Loads an adapter into the ready engine; on success it routes there from now on.
    async fn add_adapter(&self, adapter: RuntimeAdapter) -> Result<(), AdapterError> {
        let key = engine_api_key(&self.launch);
        self.calls
            .load_adapter(
                self.launch.port,
                key.as_deref(),
                &adapter.name,
                &adapter.path,
                ADAPTER_CALL,
            )
            .await
            .map_err(AdapterError::Engine)?;
        tracing::info!(model = %self.launch.name, adapter = %adapter.name, path = %adapter.path, "LoRA adapter loaded");
        let entries = self.engine_models().await;
        self.state.send_modify(|s| {
            let m = &mut s.models[self.index];
            m.runtime_adapters.retain(|a| a.name != adapter.name);
            m.runtime_adapters.push(adapter);
            if let Some(entries) = entries {
                m.engine_models = Some(Arc::new(entries));
            }
            s.rebuild_table();
        });
        Ok(())
    }

    /// Unloads a run-time adapter from the ready engine. One the engine no longer knows is
    /// forgotten all the same.
    async fn remove_adapter(&self, name: &str) -> Result<(), AdapterError> {
        let known = self.state.borrow().models[self.index]
            .runtime_adapters
            .iter()
            .any(|a| a.name == name);
        if !known {
            return Err(AdapterError::Unknown);
        }
        let key = engine_api_key(&self.launch);
        match self
            .calls
            .unload_adapter(self.launch.port, key.as_deref(), name, ADAPTER_CALL)
            .await
        {
            Ok(()) | Err(super::calls::CallError::Refused { status: 404, .. }) => {}
            Err(e) => return Err(AdapterError::Engine(e)),
        }
        tracing::info!(model = %self.launch.name, adapter = %name, "LoRA adapter unloaded");
        self.forget_adapter(name)
    }

    /// After a start: loads the run-time adapters again; one that fails is dropped (said
    /// in the log), the others stay.
    async fn reload_adapters(&self) {
        let adapters = self.state.borrow().models[self.index]
            .runtime_adapters
            .clone();
        let key = engine_api_key(&self.launch);
        for a in adapters {
            let loaded = self
                .calls
                .load_adapter(
                    self.launch.port,
                    key.as_deref(),
                    &a.name,
                    &a.path,
                    ADAPTER_CALL,
                )
                .await;
            match loaded {
                Ok(()) => {
                    tracing::info!(model = %self.launch.name, adapter = %a.name, "LoRA adapter loaded again after the engine started");
                }
                Err(e) => {
                    tracing::error!(model = %self.launch.name, adapter = %a.name, path = %a.path, "could not load the run-time LoRA adapter again ({e}); it is no longer served");
                    let _ = self.forget_adapter(&a.name);
                }
            }
        }
    }

    /// Shutdown: the ordered stop through the guardian (SIGTERM to the main process, SIGKILL
    /// to whatever is left after the grace period), then wait until nothing is left.
    pub(super) async fn stop(&self, mut engine: Guarded, pumps: Pumps) -> RunEnd {
        let _ = machine::apply(&self.state, self.index, Event::Stop, |_| {});
        self.halt(&mut engine, pumps).await;
        update(&self.state, self.index, |m| m.pid = None);
        RunEnd::Shutdown
    }

    /// Stops the engine and waits until nothing of it is left.
    async fn halt(&self, engine: &mut Guarded, pumps: Pumps) {
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
    }

    /// An order to stop: no new requests (they get 503, or wait for a load), those in flight
    /// finish within the grace period, then the ordered stop; the model rests or starts
    /// again.
    async fn stop_for(&self, kind: StopKind, mut engine: Guarded, pumps: Pumps) -> RunEnd {
        let usage = self.usage();
        usage.drain();
        let _ = machine::apply(&self.state, self.index, Event::Stop, |_| {});
        let grace = self.settings.shutdown_grace;
        let in_flight = usage.in_flight();
        if in_flight > 0 {
            tracing::info!(model = %self.launch.name, "waiting for {in_flight} request(s) in flight to finish (up to {:.0} s)", grace.as_secs_f64());
            let mut sd = self.shutdown.clone();
            tokio::select! {
                _ = tokio::time::timeout(grace, usage.drained()) => {}
                _ = stopping(&mut sd) => {}
            }
        }
        self.halt(&mut engine, pumps).await;
        match kind {
            StopKind::Restart => {
                usage.undrain();
                update(&self.state, self.index, |m| m.pid = None);
                RunEnd::Again
            }
            StopKind::Rest(Rest::Retired) => {
                let _ = machine::apply(&self.state, self.index, Event::Halt, |m| m.pid = None);
                RunEnd::Retired
            }
            StopKind::Rest(rest) => {
                let event = if rest == Rest::Unloaded {
                    self.stats().unloaded();
                    Event::Unload
                } else {
                    Event::Halt
                };
                usage.undrain();
                let _ = machine::apply(&self.state, self.index, event, |m| m.pid = None);
                RunEnd::Parked
            }
        }
    }
}
