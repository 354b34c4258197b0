//! The HTTP front: one OpenAI-compatible port that routes each request by its JSON
//! `"model"` to the right engine. It never touches a process; it reads [`crate::state`].
//!
//! The rules live in one place and the wires only move bytes:
//!
//! - [`policy`]: request facts in, "admit" or a typed [`refusal::Refusal`] out (auth,
//!   local paths, engine control paths, lookup, `/predict`, readiness, the queue).
//! - [`refusal`]: refusals rendered as hyper responses and as raw bytes.
//! - [`headers`]: the hop-by-hop rule set for both directions; request ids.
//! - [`access`]: one record per request: in-flight gauge, access line, metrics.
//! - [`local`]: the paths the front answers itself, and the engine control paths.
//! - [`queue`]: per-model concurrency slots and their FIFO queue.
//! - [`wire`]: the pass-through HTTP/1.1 wire (the common request, fast).
//! - [`general`]: hyper for everything the pass-through wire hands over, and the health
//!   listener; hyper-util's client to the engines.
//! - [`workers`]: one single-threaded runtime per core accepting on the front's socket.
//! - [`health`]: `/health`, `/livez`, `/metrics`, `/v1/models`.
//! - [`page`]: the status page at `/` for browsers, and its JSON at `/status`.
//! - [`auth`], [`errors`], [`sse`]: the API key, OpenAI-shaped errors, SSE keepalives.

pub mod access;
pub mod auth;
pub mod early;
pub mod errors;
pub mod general;
pub mod headers;
pub mod health;
pub mod local;
pub mod page;
pub mod policy;
pub mod queue;
pub mod refusal;
pub mod sse;
pub mod wire;
pub mod workers;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;
use crate::observability::metrics::Metrics;
use crate::plan::LaunchPlan;
use crate::state::{MAX_MODELS, RoutingTable, StateRx};

/// The front's limits (SPEC §2).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client may take to send a request's head.
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Time a client may pause while sending a body.
    pub body_timeout: Duration,
    /// Time a client may take none of a response's waiting bytes before it is cut off.
    pub send_timeout: Duration,
    /// Client connections held at once.
    pub max_connections: usize,
    /// Time a request may wait for a concurrency slot.
    pub queue_timeout: Duration,
    /// Silence in a stream after which an SSE comment goes out; `None` when off.
    pub sse_keepalive: Option<Duration>,
}

impl Limits {
    /// The limits `settings` give.
    pub fn from_settings(s: &Settings) -> Self {
        Limits {
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
            body_timeout: s.body_timeout,
            send_timeout: s.send_timeout,
            max_connections: s.max_connections,
            queue_timeout: s.queue_timeout,
            sse_keepalive: s.sse_keepalive,
        }
    }
}

/// Everything the handlers share.
pub struct App {
    /// The supervisor's latest snapshot (the routing table is part of it).
    pub state: StateRx,
    /// Request metrics.
    pub metrics: Metrics,
    /// Required bearer key, if any.
    pub api_key: Option<String>,
    /// Largest accepted body.
    pub max_body: usize,
    /// `created` of `/v1/models` entries (start time).
    pub created: u64,
    /// `MODEL_DEPLOY_HEALTH_ENDPOINT`.
    pub health_endpoint: String,
    /// Time limits and the connection limit.
    pub limits: Limits,
    /// Per model (by its index in the snapshot, made when first used): its queue.
    queues: Box<[OnceLock<Option<queue::Queue>>]>,
    /// hyper-util's pooled client to the engines (the general wire).
    pub engines: general::EngineClient,
    /// Request id generator.
    pub ids: headers::RequestIds,
    /// The admin API (`/admin/...`).
    pub admin: Arc<AdminApi>,
    /// On-demand loads go through it.
    pub control: crate::supervisor::Control,
}

impl App {
    /// Builds the shared state from the plan and the settings.
    pub fn new(
        plan: &LaunchPlan,
        settings: &Settings,
        state: StateRx,
        admin: Arc<AdminApi>,
    ) -> Self {
        let metrics = Metrics::new(plan.models.iter().map(|m| m.name.as_str()));
        let control = admin.runtime().control().clone();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        App {
            admin,
            control,
            state,
            metrics,
            api_key: settings.api_key.clone(),
            max_body: settings.max_body_bytes,
            created,
            health_endpoint: settings.health_endpoint.clone(),
            limits: Limits::from_settings(settings),
            queues: (0..MAX_MODELS).map(|_| OnceLock::new()).collect(),
            engines: general::engine_client(),
            ids: headers::RequestIds::new(),
        }
    }

    /// The routing table now (the live runtime's: reloads and run-time adapters included).
    pub fn table(&self) -> Arc<RoutingTable> {
        self.state.borrow().table.clone()
    }

    /// The name of the model at `index`, for messages and logs.
    pub fn model_name(&self, index: usize) -> String {
        self.state
            .borrow()
            .models
            .get(index)
            .map_or_else(|| "-".to_string(), |m| m.name.clone())
    }

    /// Model `index`'s queue, when it has `max_concurrency`. Made when first asked for: a
    /// model a reload adds or changes gets a new index, so an index's limits never change.
    pub fn queue(&self, index: usize) -> Option<&queue::Queue> {
        let cell = self.queues.get(index)?;
        cell.get_or_init(|| {
            let snapshot = self.state.borrow();
            let m = snapshot.models.get(index)?;
            let q = queue::Queue::new(m.max_concurrency? as usize, m.max_queue as usize);
            self.metrics.track_queue(index, q.waiting_gauge());
            Some(q)
        })
        .as_ref()
    }
}

/// Resolves once `stop` turns true (never holding its lock across an await).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves the health listener (`HEALTH_CHECK_PORT` when it differs from `PORT`): health,
/// liveness and metrics only, until `stop` turns true. Its connections have the front's
/// limits: `MODELMUX_HEADER_TIMEOUT` from the accept, and at most
/// `MODELMUX_MAX_CONNECTIONS` open (counted apart from the front's, so that a flood of
/// either cannot shut the other out).
pub async fn serve_health(listener: TcpListener, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accepting a health connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, stop) = (app.clone(), stop.clone());
        if open.load(Relaxed) >= app.limits.max_connections {
            tokio::spawn(wire::turn_away(stream, app));
            continue;
        }
        open.fetch_add(1, Relaxed);
        let counted = Counted(open.clone());
        tokio::spawn(async move {
            let clock = general::io::Clock::new(Some(tokio::time::Instant::now()));
            let io = general::io::Rewind::new(bytes::Bytes::new(), stream, clock.clone());
            general::conn::serve(io, clock, app, true, stop).await;
            drop(counted);
        });
    }
}

/// One open health connection, counted until dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The admin API as the front holds it.
pub type AdminApi = crate::admin::Admin<Arc<crate::admin::live::Live>>;
