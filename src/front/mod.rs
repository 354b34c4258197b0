//! The HTTP front: routing by model, the proxy hot path, OCI's `/predict`, errors, auth,
//! health and metrics. It never touches a process; it reads [`crate::state`] only.
//!
//! - [`conn`]: connections; the pass-through path for the common request, hyper for the rest.
//! - [`proxy`]: the general proxy (every rule and error), behind hyper and the router.
//! - [`body`]: size-limited reads and the metered pass-through response body.
//! - [`upstream`]: connections to the engines, driven by the response body.
//! - [`workers`]: one single-threaded runtime per core accepting on the front's socket.
//! - [`route`]: the `route` header rules of `/predict`.
//! - [`health`]: `/health`, `/livez`, `/metrics`, `/v1/models`.
//! - [`page`]: the status page at `/` for browsers, and its JSON at `/status`.
//! - [`auth`], [`errors`]: API key and OpenAI-shaped errors.

pub mod auth;
pub mod body;
pub mod conn;
pub mod errors;
pub mod health;
pub mod page;
pub mod proxy;
pub mod route;
pub mod upstream;
pub mod workers;

use axum::Router;
use axum::http::HeaderValue;
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::observability::metrics::Metrics;
use crate::plan::LaunchPlan;
use crate::state::{RoutingTable, StateRx};

/// Everything the handlers share.
pub struct App {
    /// Names to engines.
    pub table: RoutingTable,
    /// The supervisor's latest snapshot.
    pub state: StateRx,
    /// Request metrics.
    pub metrics: Metrics,
    /// Keep-alive HTTP/1.1 connections to the engines (never through an HTTP proxy).
    pub upstream: Arc<upstream::Upstream>,
    /// Required bearer key, if any.
    pub api_key: Option<String>,
    /// Largest accepted body.
    pub max_body: usize,
    /// `created` of `/v1/models` entries (start time).
    pub created: u64,
    id_prefix: u32,
    id_counter: AtomicU64,
}

impl App {
    /// Builds the shared state from the plan and the settings.
    pub fn new(plan: &LaunchPlan, settings: &Settings, state: StateRx) -> Self {
        let table = RoutingTable::from_plan(plan);
        let metrics = Metrics::new(table.models.iter().map(|r| &*r.model));
        let upstream = upstream::Upstream::new(table.models.len());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        App {
            table,
            state,
            metrics,
            upstream,
            api_key: settings.api_key.clone(),
            max_body: settings.max_body_bytes,
            created: now.as_secs(),
            id_prefix: now.subsec_nanos() ^ std::process::id().rotate_left(16),
            id_counter: AtomicU64::new(0),
        }
    }

    /// A fresh request id: unique within this process, cheap to make.
    pub fn new_request_id(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.make_request_id()).expect("ascii")
    }

    /// A fresh request id as bytes, `mmx-PPPPPPPP-NNNNNNNNNNNN` (process prefix, counter).
    pub fn make_request_id(&self) -> [u8; 25] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut id = *b"mmx-00000000-000000000000";
        for i in 0..8 {
            id[11 - i] = HEX[(self.id_prefix >> (4 * i)) as usize & 0xf];
        }
        for i in 0..12 {
            id[24 - i] = HEX[(n >> (4 * i)) as usize & 0xf];
        }
        id
    }
}

/// The routes of the health listener (a subset of the front's).
fn health_routes(health_endpoint: &str) -> Router<Arc<App>> {
    let mut r = Router::new()
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/metrics", get(health::metrics));
    if health_endpoint != "/health" && health_endpoint != "/livez" && health_endpoint != "/metrics"
    {
        r = r.route(health_endpoint, get(health::health));
    }
    r
}

/// The front's router.
pub fn router(app: Arc<App>, health_endpoint: &str) -> Router {
    health_routes(health_endpoint)
        .route("/v1/models", get(health::list_models))
        .route("/v1/models/{*id}", get(health::get_model))
        .route("/", any(page::root))
        .route("/status", any(page::status))
        .fallback(proxy::handle)
        .with_state(app)
}

/// The health listener's router: health, liveness and metrics only.
pub fn health_router(app: Arc<App>, health_endpoint: &str) -> Router {
    health_routes(health_endpoint)
        .fallback(|| async {
            errors::error(
                axum::http::StatusCode::NOT_FOUND,
                "the health port serves /health, /livez and /metrics",
            )
        })
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
