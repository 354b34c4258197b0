//! The controller: one task that holds every engine task's orders and decides what each
//! engine does next: on-demand loads (making room by unloading the least recently used idle
//! models), idle unloads, operators' commands, run-time adapters and a reload's changes.
//! Engine tasks carry the orders out and publish what happens through the state machine; the
//! controller reads the state and never changes a phase itself.
//!
//! One `impl Controller` is spread over these files, one behaviour each:
//!
//! - this file: the controller's state, its engine tasks and its main loop (requests,
//!   state changes, the idle tick), and shutdown's answers to what is left.
//! - [`loads`]: the queue of loads (on-demand requests, operators' starts, reloads) and
//!   their admission, first come, first served, one sizing engine per GPU at a time.
//! - [`room`]: whether a queued model fits, and making room by unloading the least
//!   recently used idle on-demand models.
//! - [`idle`]: unloading on-demand models idle for their `idle_unload`.
//! - [`operator`]: operators' start, stop and restart commands.
//! - [`adapters`]: loading and unloading LoRA adapters at run time.
//! - [`reload`]: applying a reload: retiring, replacing and adding models.

mod adapters;
mod idle;
mod loads;
mod operator;
mod reload;
mod room;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::calls::EngineCalls;
use super::commands::{CommandError, Request};
use super::engine::{EngineTask, Failure};
use super::ledger::Gpus;
use super::orders::Order;
use super::probe::Prober;
use super::reaper::Reaper;
use crate::config::{LoadMode, Settings};
use crate::plan::{LaunchPlan, ModelLaunch};
use crate::state::{Phase, Snapshot, StateTx};

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
            api_key: None,
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
