//! The controller: one task that holds every engine task's orders and decides what each
//! engine does next: on-demand loads (making room by unloading the least recently used idle
//! models), idle unloads, operators' commands, run-time adapters and a reload's changes.
//! Engine tasks carry the orders out and publish what happens through the state machine; the
//! controller reads the state and never changes a phase itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::calls::EngineCalls;
use super::commands::{Accepted, Command, CommandError, ReloadPlan, ReloadReport, Request};
use super::engine::{EngineTask, Failure};
use super::ledger::{self, Candidate, Entry, Eviction, Gpus, Holding};
use super::orders::{AdapterError, Order, Rest};
use super::probe::Prober;
use super::reaper::Reaper;
use crate::config::{LoadMode, Settings, UnloadMode};
use crate::plan::{LaunchPlan, ModelLaunch};
use crate::state::{MAX_MODELS, ModelStatus, Phase, RuntimeAdapter, Snapshot, StateTx};

/// How often idle on-demand models are looked for.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// One model's engine task, as the controller reaches it.
struct Slot {
    launch: ModelLaunch,
    orders: mpsc::UnboundedSender<Order>,
}

/// A load that waits for room.
#[derive(Debug, Clone, Copy)]
struct Pending {
    index: usize,
    /// An operator's start or a reload: kept even when no request waits for it.
    sticky: bool,
    /// Its engine is being stopped first (an operator's restart): wait for that.
    after_stop: bool,
}

/// The controller's state.
pub(super) struct Controller {
    pub settings: Arc<Settings>,
    pub reaper: Reaper,
    pub state: StateTx,
    pub shutdown: watch::Receiver<bool>,
    pub failures: mpsc::UnboundedSender<Failure>,
    pub prober: Prober,
    pub calls: EngineCalls,
    pub gpus: Gpus,
    pub requests: mpsc::UnboundedReceiver<Request>,
    pub to_self: mpsc::UnboundedSender<Request>,
    slots: Vec<Slot>,
    tasks: JoinSet<()>,
    pending: Vec<Pending>,
    /// Start or wake ordered, not yet seen in the state.
    launching: HashSet<usize>,
    /// Unload ordered, not yet done: the phase it ends in.
    evicting: HashMap<usize, Phase>,
    /// Adapter names being loaded now.
    reserved: HashSet<String>,
    /// Bumped whenever the set of launches changes (a reload).
    generation: u64,
}

impl Controller {
    /// A controller for `plan`'s models, with their engine tasks started.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: &LaunchPlan,
        settings: Arc<Settings>,
        reaper: Reaper,
        state: StateTx,
        shutdown: watch::Receiver<bool>,
        failures: mpsc::UnboundedSender<Failure>,
        requests: mpsc::UnboundedReceiver<Request>,
        to_self: mpsc::UnboundedSender<Request>,
    ) -> Controller {
        let gpus = Gpus {
            sizes: plan
                .gpus
                .iter()
                .map(|g| (g.id.clone(), g.memory_total))
                .collect(),
            limit: plan.gpu_memory_limit,
        };
        let mut c = Controller {
            settings,
            reaper,
            state,
            shutdown,
            failures,
            prober: Prober::default(),
            calls: EngineCalls::default(),
            gpus,
            requests,
            to_self,
            slots: Vec::new(),
            tasks: JoinSet::new(),
            pending: Vec::new(),
            launching: HashSet::new(),
            evicting: HashMap::new(),
            reserved: HashSet::new(),
            generation: 0,
        };
        for (index, launch) in plan.models.iter().enumerate() {
            c.spawn_task(index, launch.clone(), launch.load == LoadMode::Always);
        }
        c
    }

    /// Starts the engine task of the model at `index`.
    fn spawn_task(&mut self, index: usize, launch: ModelLaunch, autostart: bool) {
        let (orders_tx, orders) = mpsc::unbounded_channel();
        let task = EngineTask {
            index,
            launch: launch.clone(),
            settings: self.settings.clone(),
            reaper: self.reaper.clone(),
            state: self.state.clone(),
            shutdown: self.shutdown.clone(),
            failures: self.failures.clone(),
            prober: self.prober.clone(),
            calls: self.calls.clone(),
            progress: launch.engine.profile().metrics.map(|m| m.progress),
            orders,
            autostart,
        };
        self.tasks.spawn(task.run());
        debug_assert_eq!(index, self.slots.len());
        self.slots.push(Slot {
            launch,
            orders: orders_tx,
        });
    }

    /// Runs until shutdown, then waits for every engine task.
    pub async fn run(mut self) {
        let mut state = self.state.subscribe();
        let mut tick = tokio::time::interval(IDLE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sd = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = sd.wait_for(|s| *s) => break,
                request = self.requests.recv() => match request {
                    Some(r) => self.handle(r),
                    None => break,
                },
                changed = state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => self.unload_idle(),
            }
            self.settle();
            self.admit();
        }
        // Answer what is left, then let every engine task stop its engine.
        self.requests.close();
        while let Ok(r) = self.requests.try_recv() {
            refuse(r);
        }
        while self.tasks.join_next().await.is_some() {}
    }

    fn snapshot(&self) -> tokio::sync::watch::Ref<'_, Snapshot> {
        self.state.borrow()
    }

    fn order(&self, index: usize, order: Order) {
        let _ = self.slots[index].orders.send(order);
    }

    /// Forgets starts and unloads that the state shows are under way or done.
    fn settle(&mut self) {
        let s = self.state.borrow();
        self.launching.retain(|&i| {
            matches!(
                s.models[i].state,
                Phase::Unloaded | Phase::Sleeping | Phase::Stopped | Phase::Failed | Phase::Waiting
            ) && !s.models[i].retired
        });
        self.evicting.retain(|&i, target| {
            let phase = s.models[i].state;
            phase != *target
                && !matches!(
                    phase,
                    Phase::Unloaded | Phase::Stopped | Phase::Failed | Phase::Restarting
                )
        });
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Load(index) => self.want(index, false),
            Request::Command(command, reply) => {
                let _ = reply.send(self.command(command));
            }
            Request::AddAdapter {
                model,
                adapter,
                reply,
            } => self.add_adapter(&model, adapter, reply),
            Request::RemoveAdapter {
                model,
                adapter,
                reply,
            } => self.remove_adapter(&model, &adapter, reply),
            Request::AdapterDone(name) => {
                self.reserved.remove(&name);
            }
            Request::Launches(reply) => {
                let s = self.snapshot();
                let live = s
                    .live()
                    .map(|(i, _)| self.slots[i].launch.clone())
                    .collect();
                let _ = reply.send((self.generation, live));
            }
            Request::Apply(plan, reply) => {
                let _ = reply.send(self.apply(*plan));
            }
        }
    }

    /// Queues a load of `index` unless it is loaded, loading or queued.
    fn want(&mut self, index: usize, sticky: bool) {
        if index >= self.slots.len() {
            return;
        }
        if let Some(p) = self.pending.iter_mut().find(|p| p.index == index) {
            p.sticky |= sticky;
            return;
        }
        if self.launching.contains(&index) {
            return;
        }
        let refuse = {
            let s = self.snapshot();
            let m = &s.models[index];
            let idle = matches!(
                m.state,
                Phase::Unloaded | Phase::Sleeping | Phase::Stopped | Phase::Failed | Phase::Waiting
            );
            // An operator's stop holds until an operator's start.
            m.retired || !idle || (m.state == Phase::Stopped && !sticky)
        };
        if refuse {
            return;
        }
        self.pending.push(Pending {
            index,
            sticky,
            after_stop: false,
        });
    }

    /// The ledger's entries for every model but `except`.
    fn entries(&self, s: &Snapshot, except: usize) -> Vec<(usize, Holding)> {
        s.models
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != except)
            .map(|(i, m)| (i, ledger::holding(m, self.launching.contains(&i))))
            .filter(|(_, h)| *h != Holding::None)
            .collect()
    }

    /// Starts or wakes queued models for which there is room now, unloading idle on-demand
    /// models to make room; first come, first served.
    fn admit(&mut self) {
        if *self.shutdown.borrow() {
            return;
        }
        let mut k = 0;
        while k < self.pending.len() {
            let Pending {
                index,
                sticky,
                after_stop,
            } = self.pending[k];
            let go = {
                let s = self.snapshot();
                let m = &s.models[index];
                let waiting_request = m.usage.in_flight() > 0;
                let idle = matches!(
                    m.state,
                    Phase::Unloaded
                        | Phase::Sleeping
                        | Phase::Stopped
                        | Phase::Failed
                        | Phase::Waiting
                );
                if m.retired {
                    Decision::Drop
                } else if !idle && after_stop {
                    Decision::Wait
                } else if !idle {
                    Decision::Drop
                } else if !sticky && !waiting_request {
                    // Nobody waits for it any more (timed out, went away).
                    Decision::Drop
                } else if self.busy_neighbour(&s, index) {
                    Decision::Wait
                } else {
                    self.room(&s, index)
                }
            };
            match go {
                Decision::Drop => {
                    self.pending.remove(k);
                }
                Decision::Wait => k += 1,
                Decision::Evict(victims) => {
                    for (victim, how) in victims {
                        self.evict(victim, how, index);
                    }
                    k += 1;
                }
                Decision::Go => {
                    self.pending.remove(k);
                    let phase = self.snapshot().models[index].state;
                    let order = if phase == Phase::Sleeping {
                        Order::Wake
                    } else {
                        Order::Start
                    };
                    let name = self.slots[index].launch.name.clone();
                    tracing::info!(model = %name, "{} it", if phase == Phase::Sleeping { "waking" } else { "loading" });
                    self.snapshot().models[index].usage.touch();
                    self.launching.insert(index);
                    self.order(index, order);
                }
            }
        }
    }

    /// True while an engine on one of the model's GPUs is starting or waking (one engine
    /// sizes its memory at a time on a GPU), or while an engine that had its port is still
    /// there (a reload replaced it).
    fn busy_neighbour(&self, s: &Snapshot, index: usize) -> bool {
        let me = &self.slots[index].launch;
        s.models.iter().enumerate().any(|(i, m)| {
            if i == index {
                return false;
            }
            let other = &self.slots[i].launch;
            let same_port = other.port == me.port
                && m.retired
                && (m.pid.is_some() || m.state == Phase::Stopping);
            let shares_gpu = other.gpus.iter().any(|g| me.gpus.contains(g));
            let sizing = !m.retired
                && (self.launching.contains(&i)
                    || matches!(m.state, Phase::Starting | Phase::Waking)
                    || (m.state == Phase::Waiting && m.load == LoadMode::Always));
            same_port || (shares_gpu && sizing)
        })
    }

    /// Whether the model fits now, after unloading some idle models, or not yet.
    fn room(&self, s: &Snapshot, index: usize) -> Decision {
        let held = self.entries(s, index);
        let entries: Vec<Entry> = held
            .iter()
            .map(|&(i, holding)| Entry {
                launch: &self.slots[i].launch,
                holding,
            })
            .collect();
        let me = &self.slots[index].launch;
        if self.gpus.fits(me, &entries) {
            return Decision::Go;
        }
        if !self.evicting.is_empty() {
            // Room is being made; look again when it is.
            return Decision::Wait;
        }
        let candidates: Vec<Candidate> = held
            .iter()
            .enumerate()
            .filter_map(|(at, &(i, _))| {
                let m = &s.models[i];
                let idle = m.usage.in_flight() == 0 && !m.usage.draining();
                let unloadable = !m.retired
                    && m.load == LoadMode::OnDemand
                    && matches!(m.state, Phase::Ready | Phase::Sleeping)
                    && !self.launching.contains(&i);
                (idle && unloadable).then_some(Candidate {
                    at,
                    idle_for: m.usage.idle_for(),
                    unload: m.unload,
                })
            })
            .collect();
        match ledger::victims(&self.gpus, me, &entries, &candidates) {
            Some(v) => Decision::Evict(v.into_iter().map(|(at, how)| (held[at].0, how)).collect()),
            None => Decision::Wait,
        }
    }

    /// Unloads an idle model to make room for `for_model`; skipped if a request got to it
    /// first.
    fn evict(&mut self, victim: usize, how: Eviction, for_model: usize) {
        let (phase, usage) = {
            let s = self.snapshot();
            (s.models[victim].state, s.models[victim].usage.clone())
        };
        if !usage.try_drain_idle() {
            return;
        }
        let (victim_name, new_name) = (
            self.slots[victim].launch.name.clone(),
            self.slots[for_model].launch.name.clone(),
        );
        let order = match (how, phase) {
            (Eviction::Sleep, Phase::Ready) => Order::Sleep,
            _ => Order::Stop(Rest::Unloaded),
        };
        let target = if matches!(order, Order::Sleep) {
            Phase::Sleeping
        } else {
            Phase::Unloaded
        };
        tracing::info!(model = %victim_name, "unloading it ({}) to make room for {new_name}; it was idle for {:.1} s", if target == Phase::Sleeping { "sleep" } else { "stop" }, usage.idle_for().as_secs_f64());
        self.evicting.insert(victim, target);
        self.order(victim, order);
    }

    /// Unloads on-demand models idle for their `idle_unload`.
    fn unload_idle(&mut self) {
        let due: Vec<(usize, UnloadMode, f64)> = {
            let s = self.snapshot();
            s.live()
                .filter(|(i, m)| {
                    m.load == LoadMode::OnDemand
                        && m.state == Phase::Ready
                        && !self.evicting.contains_key(i)
                        && !self.launching.contains(i)
                        && m.usage.in_flight() == 0
                        && m.usage.idle_for().as_secs_f64() >= self.slots[*i].launch.idle_unload
                })
                .map(|(i, m)| (i, m.unload, m.usage.idle_for().as_secs_f64()))
                .collect()
        };
        for (i, unload, idle) in due {
            let usage = self.snapshot().models[i].usage.clone();
            if !usage.try_drain_idle() {
                continue;
            }
            let name = self.slots[i].launch.name.clone();
            tracing::info!(model = %name, "idle for {idle:.1} s; unloading it ({})", unload.as_str());
            let (order, target) = match unload {
                UnloadMode::Sleep => (Order::Sleep, Phase::Sleeping),
                UnloadMode::Stop => (Order::Stop(Rest::Unloaded), Phase::Unloaded),
            };
            self.evicting.insert(i, target);
            self.order(i, order);
        }
    }

    /// The index of a served model, or the error that lists them.
    fn find(&self, name: &str) -> Result<usize, CommandError> {
        let s = self.snapshot();
        s.index_of(name).ok_or_else(|| CommandError::UnknownModel {
            name: name.to_string(),
            available: s
                .live()
                .map(|(_, m)| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn command(&mut self, command: Command) -> Result<Accepted, CommandError> {
        if *self.shutdown.borrow() {
            return Err(CommandError::ShuttingDown);
        }
        let name = match &command {
            Command::Restart(n) | Command::Stop(n) | Command::Start(n) => n.clone(),
        };
        let index = self.find(&name)?;
        let (phase, load) = {
            let s = self.snapshot();
            (s.models[index].state, s.models[index].load)
        };
        let has_engine = matches!(
            phase,
            Phase::Starting
                | Phase::Ready
                | Phase::Sleeping
                | Phase::Waking
                | Phase::Restarting
                | Phase::Stopping
        );
        match command {
            Command::Stop(_) => {
                self.pending.retain(|p| p.index != index);
                self.launching.remove(&index);
                self.order(index, Order::Stop(Rest::Stopped));
                tracing::info!(model = %name, "stopping it (operator)");
            }
            Command::Restart(_) if has_engine && load == LoadMode::Always => {
                self.order(index, Order::Restart);
                tracing::info!(model = %name, "restarting it (operator)");
            }
            Command::Restart(_) if has_engine => {
                // An on-demand engine gets its room back through the ledger: stop, then
                // load again.
                self.order(index, Order::Stop(Rest::Unloaded));
                self.pending.retain(|p| p.index != index);
                self.pending.push(Pending {
                    index,
                    sticky: true,
                    after_stop: true,
                });
                tracing::info!(model = %name, "restarting it (operator)");
            }
            Command::Restart(_) | Command::Start(_) => {
                if !has_engine || phase == Phase::Stopping {
                    self.want(index, true);
                    tracing::info!(model = %name, "starting it (operator)");
                }
            }
        }
        Ok(Accepted {
            model: name,
            state: phase,
        })
    }

    fn add_adapter(
        &mut self,
        model: &str,
        mut adapter: RuntimeAdapter,
        reply: oneshot::Sender<Result<(), CommandError>>,
    ) {
        let index = match self.find(model) {
            Ok(i) => i,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let checked = (|| {
            let launch = &self.slots[index].launch;
            if launch.engine != crate::engines::Engine::Vllm {
                return Err(CommandError::Invalid(format!(
                    "model {model} runs engine {}; adapters are loaded at run time through vLLM's runtime LoRA API only: list them in fine_tune_weights and reload",
                    launch.engine.profile().name
                )));
            }
            if !launch.runtime_lora {
                return Err(CommandError::Invalid(format!(
                    "model {model} was started without --enable-lora, so its engine cannot load adapters; add --enable-lora (and --max-lora-rank if the adapters need it) to its params and reload"
                )));
            }
            let name = adapter.name.trim();
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err(CommandError::Invalid(
                    "the adapter's \"name\" must be 1 to 256 characters without control characters"
                        .into(),
                ));
            }
            if self.snapshot().table.contains(name) || self.reserved.contains(name) {
                return Err(CommandError::Conflict(format!(
                    "the name {name:?} is already served; unload that adapter first or pick another name"
                )));
            }
            let mut warnings = Vec::new();
            let path = crate::config::resolve_path(
                &adapter.path,
                &self.settings.model_root,
                "path",
                &mut warnings,
            )
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
            Ok(RuntimeAdapter {
                name: name.to_string(),
                path,
            })
        })();
        adapter = match checked {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.reserved.insert(adapter.name.clone());
        let (tx, rx) = oneshot::channel();
        let name = adapter.name.clone();
        self.order(index, Order::AddAdapter(adapter, tx));
        let done = self.to_self.clone();
        tokio::spawn(async move {
            let result = rx
                .await
                .unwrap_or(Err(AdapterError::NotRunning(Phase::Stopping)));
            let _ = done.send(Request::AdapterDone(name));
            let _ = reply.send(result.map_err(adapter_error));
        });
    }

    fn remove_adapter(
        &mut self,
        model: &str,
        adapter: &str,
        reply: oneshot::Sender<Result<(), CommandError>>,
    ) {
        let index = match self.find(model) {
            Ok(i) => i,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        {
            let s = self.snapshot();
            let m = &s.models[index];
            if m.adapters.iter().any(|a| a == adapter) {
                let _ = reply.send(Err(CommandError::Conflict(format!(
                    "adapter {adapter:?} is part of model {model}'s configuration (fine_tune_weights or --lora-modules); remove it there and reload"
                ))));
                return;
            }
            if !m.runtime_adapters.iter().any(|a| a.name == adapter) {
                let _ = reply.send(Err(CommandError::UnknownAdapter(format!(
                    "model {model} has no adapter {adapter:?} loaded at run time"
                ))));
                return;
            }
        }
        let (tx, rx) = oneshot::channel();
        self.order(index, Order::RemoveAdapter(adapter.to_string(), tx));
        tokio::spawn(async move {
            let result = rx
                .await
                .unwrap_or(Err(AdapterError::NotRunning(Phase::Stopping)));
            let _ = reply.send(result.map_err(adapter_error));
        });
    }

    /// Applies a reload computed against this generation of launches.
    fn apply(&mut self, plan: ReloadPlan) -> Result<ReloadReport, CommandError> {
        if *self.shutdown.borrow() {
            return Err(CommandError::ShuttingDown);
        }
        if plan.based_on != self.generation {
            return Err(CommandError::Conflict(
                "another reload changed the models meanwhile; reload again".into(),
            ));
        }
        let adding = plan.restart.len() + plan.start.len();
        if self.slots.len() + adding > MAX_MODELS {
            return Err(CommandError::Invalid(format!(
                "this run has held {} models; a reload may not take it past {MAX_MODELS}; restart modelmux",
                self.slots.len()
            )));
        }
        self.generation += 1;
        let mut report = ReloadReport {
            unchanged: plan.unchanged.clone(),
            ..Default::default()
        };
        for name in &plan.stop {
            if let Ok(i) = self.find(name) {
                self.retire(i);
                report.stopped.push(name.clone());
            }
        }
        for launch in plan.restart {
            let Ok(old) = self.find(&launch.name) else {
                continue;
            };
            let (adapters, was_up) = {
                let s = self.snapshot();
                let m = &s.models[old];
                let up = !matches!(m.state, Phase::Unloaded | Phase::Stopped | Phase::Failed);
                (m.runtime_adapters.clone(), up)
            };
            self.retire(old);
            report.restarted.push(launch.name.clone());
            let sticky = launch.load == LoadMode::Always || was_up;
            self.add(launch, adapters, sticky);
        }
        for launch in plan.start {
            report.started.push(launch.name.clone());
            let sticky = launch.load == LoadMode::Always;
            self.add(launch, Vec::new(), sticky);
        }
        tracing::info!(
            "reload: started [{}], stopped [{}], restarted [{}], unchanged [{}]",
            report.started.join(", "),
            report.stopped.join(", "),
            report.restarted.join(", "),
            report.unchanged.join(", ")
        );
        Ok(report)
    }

    /// Takes a model out of service at once (no new requests reach it) and stops its
    /// engine after its requests in flight.
    fn retire(&mut self, index: usize) {
        self.pending.retain(|p| p.index != index);
        self.launching.remove(&index);
        self.state.send_modify(|s| {
            s.models[index].retired = true;
            s.rebuild_table();
        });
        self.order(index, Order::Stop(Rest::Retired));
    }

    /// Adds a model (a new index) and, if `start`, queues its start.
    fn add(&mut self, launch: ModelLaunch, adapters: Vec<RuntimeAdapter>, start: bool) {
        let index = self.slots.len();
        let phase = match launch.load {
            LoadMode::Always => Phase::Waiting,
            LoadMode::OnDemand => Phase::Unloaded,
        };
        let mut status = ModelStatus::from_launch(&launch, phase);
        status.runtime_adapters = adapters;
        self.state.send_modify(|s| {
            s.models.push(status);
            s.rebuild_table();
        });
        self.spawn_task(index, launch, false);
        if start {
            self.want(index, true);
        }
    }
}

/// What to do with a queued load now.
enum Decision {
    /// Start or wake it.
    Go,
    /// Unload these first.
    Evict(Vec<(usize, Eviction)>),
    /// Not yet.
    Wait,
    /// Forget it.
    Drop,
}

/// An adapter failure as a command error.
fn adapter_error(e: AdapterError) -> CommandError {
    match e {
        AdapterError::NotRunning(_) => CommandError::Conflict(format!("cannot now: {e}")),
        AdapterError::Unknown => CommandError::UnknownAdapter(e.to_string()),
        AdapterError::Engine(super::calls::CallError::Refused { status, message })
            if (400..500).contains(&status) =>
        {
            CommandError::Invalid(format!("the engine refused it: {message}"))
        }
        AdapterError::Engine(e) => CommandError::Engine(format!("the engine failed: {e}")),
    }
}

/// Answers a request that came in as modelmux shuts down.
fn refuse(r: Request) {
    match r {
        Request::Command(_, reply) => {
            let _ = reply.send(Err(CommandError::ShuttingDown));
        }
        Request::AddAdapter { reply, .. } | Request::RemoveAdapter { reply, .. } => {
            let _ = reply.send(Err(CommandError::ShuttingDown));
        }
        Request::Apply(_, reply) => {
            let _ = reply.send(Err(CommandError::ShuttingDown));
        }
        Request::Load(_) | Request::AdapterDone(_) | Request::Launches(_) => {}
    }
}
