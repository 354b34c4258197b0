//! Prometheus metrics, kept in atomics so that the proxy hot path never takes a lock.
//! Model state and restarts are read from the state snapshot at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::state::{MAX_MODELS, Phase, Snapshot};

/// Histogram bucket bounds in seconds (requests run from milliseconds to minutes).
const BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A fixed-bucket histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, model: &str) {
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{model=\"{model}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{model=\"{model}\",le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {count}");
    }
}

/// One model's loads, unloads and load times (SPEC §9): an engine started until ready, or
/// woken; stopped or put to sleep when idle or to make room.
#[derive(Default)]
pub struct LoadStats {
    /// Engines started until ready, and wakes.
    pub loads: AtomicU64,
    /// Unloads: stops and sleeps of an idle on-demand model.
    pub unloads: AtomicU64,
    /// Seconds from start (or wake) to ready.
    pub seconds: Histogram,
}

impl std::fmt::Debug for LoadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadStats")
            .field("loads", &self.loads.load(Relaxed))
            .field("unloads", &self.unloads.load(Relaxed))
            .finish()
    }
}

impl LoadStats {
    /// Counts a load that took `took`.
    pub fn loaded(&self, took: Duration) {
        self.loads.fetch_add(1, Relaxed);
        self.seconds.observe(took);
    }

    /// Counts an unload.
    pub fn unloaded(&self) {
        self.unloads.fetch_add(1, Relaxed);
    }
}

/// Per-model request metrics.
pub struct ModelMetrics {
    by_code: Box<[AtomicU64; 600]>,
    /// Request duration, first byte sent to last byte received.
    pub duration: Histogram,
    /// Time to the first body byte of streamed responses.
    pub ttfb: Histogram,
    /// Requests under way.
    pub inflight: AtomicI64,
    /// Requests waiting for a concurrency slot (the model's queue keeps it).
    queued: OnceLock<Arc<AtomicUsize>>,
    /// Requests waiting for the model's on-demand load or wake.
    pub loading: AtomicUsize,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            by_code: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            duration: Histogram::default(),
            ttfb: Histogram::default(),
            inflight: AtomicI64::new(0),
            queued: OnceLock::new(),
            loading: AtomicUsize::new(0),
        }
    }
}

impl ModelMetrics {
    /// Requests waiting now: for a concurrency slot, or for an on-demand load or wake.
    pub fn queued_now(&self) -> usize {
        self.queued.get().map_or(0, |q| q.load(Relaxed)) + self.loading.load(Relaxed)
    }

    /// Requests answered so far, whatever their status.
    pub fn answered(&self) -> u64 {
        self.by_code.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Counts a finished request with its status code.
    pub fn count(&self, status: u16) {
        if let Some(c) = self.by_code.get(status as usize) {
            c.fetch_add(1, Relaxed);
        }
    }
}

/// A client time limit that cut a connection (SPEC §2's `MODELMUX_*_TIMEOUT` rows).
#[derive(Debug, Clone, Copy)]
pub enum ClientLimit {
    /// A head not sent within `MODELMUX_HEADER_TIMEOUT` (dropped without an answer).
    Header,
    /// A body paused past `MODELMUX_BODY_TIMEOUT` (408).
    Body,
    /// A response not taken within `MODELMUX_SEND_TIMEOUT` (reset).
    Send,
}

impl ClientLimit {
    const ALL: [ClientLimit; 3] = [ClientLimit::Header, ClientLimit::Body, ClientLimit::Send];

    fn as_str(self) -> &'static str {
        match self {
            ClientLimit::Header => "header",
            ClientLimit::Body => "body",
            ClientLimit::Send => "send",
        }
    }
}

/// All metrics: one entry per model (by its index in the snapshot, made when first used)
/// plus one for requests that reached no model. Names come from the snapshot.
pub struct Metrics {
    models: Box<[OnceLock<ModelMetrics>]>,
    unrouted: ModelMetrics,
    /// Failed scrapes of each engine's own metrics.
    pub engine_scrape_errors: super::scrape::ScrapeErrors,
    /// Client connections cut by each time limit, in [`ClientLimit::ALL`]'s order.
    client_timeouts: [AtomicU64; 3],
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Metrics for these models, in plan order.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let names: Vec<&str> = names.into_iter().collect();
        Metrics {
            models: (0..MAX_MODELS).map(|_| OnceLock::new()).collect(),
            unrouted: ModelMetrics::default(),
            engine_scrape_errors: super::scrape::ScrapeErrors::new(names),
            client_timeouts: Default::default(),
        }
    }

    /// Counts a client connection cut by `limit`.
    pub fn client_timed_out(&self, limit: ClientLimit) {
        self.client_timeouts[limit as usize].fetch_add(1, Relaxed);
    }

    /// Reports the length of model `index`'s queue from `waiting` (kept by the queue).
    pub fn track_queue(&self, index: usize, waiting: Arc<AtomicUsize>) {
        let _ = self.model(Some(index)).queued.set(waiting);
    }

    /// The metrics of the model at `index`, or of "no model".
    pub fn model(&self, index: Option<usize>) -> &ModelMetrics {
        index
            .and_then(|i| self.models.get(i))
            .map_or(&self.unrouted, |m| m.get_or_init(ModelMetrics::default))
    }

    /// Prometheus text exposition, for the models the snapshot serves.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(8192);
        let empty = ModelMetrics::default();
        let live: Vec<(String, &ModelMetrics, &crate::state::ModelStatus)> = snapshot
            .live()
            .map(|(i, s)| {
                let m = self.models.get(i).and_then(OnceLock::get).unwrap_or(&empty);
                (escape(&s.name), m, s)
            })
            .collect();
        out.push_str(
            "# HELP modelmux_requests_total Requests answered, by model and status code.\n",
        );
        out.push_str("# TYPE modelmux_requests_total counter\n");
        let unrouted = (String::new(), &self.unrouted);
        for (name, m) in live
            .iter()
            .map(|(n, m, _)| (n.clone(), *m))
            .chain([unrouted])
        {
            for (code, c) in m.by_code.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "modelmux_requests_total{{model=\"{name}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP modelmux_client_timeouts_total Client connections cut by a time limit: \
             header (MODELMUX_HEADER_TIMEOUT), body (MODELMUX_BODY_TIMEOUT, answered 408), \
             send (MODELMUX_SEND_TIMEOUT).\n",
        );
        out.push_str("# TYPE modelmux_client_timeouts_total counter\n");
        for limit in ClientLimit::ALL {
            let n = self.client_timeouts[limit as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "modelmux_client_timeouts_total{{limit=\"{}\"}} {n}",
                limit.as_str()
            );
        }
        out.push_str("# HELP modelmux_request_duration_seconds Time from request to the end of the response.\n");
        out.push_str("# TYPE modelmux_request_duration_seconds histogram\n");
        for (name, m, _) in &live {
            m.duration
                .render(&mut out, "modelmux_request_duration_seconds", name);
        }
        out.push_str("# HELP modelmux_time_to_first_byte_seconds Time to the first body byte of streamed responses.\n");
        out.push_str("# TYPE modelmux_time_to_first_byte_seconds histogram\n");
        for (name, m, _) in &live {
            m.ttfb
                .render(&mut out, "modelmux_time_to_first_byte_seconds", name);
        }
        out.push_str("# HELP modelmux_inflight_requests Requests under way.\n");
        out.push_str("# TYPE modelmux_inflight_requests gauge\n");
        for (name, m, _) in &live {
            let _ = writeln!(
                out,
                "modelmux_inflight_requests{{model=\"{name}\"}} {}",
                m.inflight.load(Relaxed)
            );
        }
        out.push_str(
            "# HELP modelmux_queue_length Requests waiting for a concurrency slot (max_concurrency) or for an on-demand load.\n",
        );
        out.push_str("# TYPE modelmux_queue_length gauge\n");
        for (name, m, _) in &live {
            let queued = m.queued_now();
            let _ = writeln!(out, "modelmux_queue_length{{model=\"{name}\"}} {queued}");
        }
        out.push_str("# HELP modelmux_model_state 1 for the state each model is in.\n");
        out.push_str("# TYPE modelmux_model_state gauge\n");
        for (name, _, s) in &live {
            for phase in Phase::ALL {
                let v = u8::from(s.state == phase);
                let _ = writeln!(
                    out,
                    "modelmux_model_state{{model=\"{name}\",state=\"{}\"}} {v}",
                    phase.as_str()
                );
            }
        }
        out.push_str("# HELP modelmux_model_restarts_total Engine restarts.\n");
        out.push_str("# TYPE modelmux_model_restarts_total counter\n");
        for (name, _, s) in &live {
            let _ = writeln!(
                out,
                "modelmux_model_restarts_total{{model=\"{name}\"}} {}",
                s.restarts
            );
        }
        out.push_str("# HELP modelmux_model_loads_total Engines started until ready, and woken from sleep.\n");
        out.push_str("# TYPE modelmux_model_loads_total counter\n");
        for (name, _, s) in &live {
            let _ = writeln!(
                out,
                "modelmux_model_loads_total{{model=\"{name}\"}} {}",
                s.loads.loads.load(Relaxed)
            );
        }
        out.push_str("# HELP modelmux_model_unloads_total On-demand models unloaded (stopped or put to sleep) when idle or to make room.\n");
        out.push_str("# TYPE modelmux_model_unloads_total counter\n");
        for (name, _, s) in &live {
            let _ = writeln!(
                out,
                "modelmux_model_unloads_total{{model=\"{name}\"}} {}",
                s.loads.unloads.load(Relaxed)
            );
        }
        out.push_str(
            "# HELP modelmux_model_load_seconds Time from an engine's start (or wake) to ready.\n",
        );
        out.push_str("# TYPE modelmux_model_load_seconds histogram\n");
        for (name, _, s) in &live {
            s.loads
                .seconds
                .render(&mut out, "modelmux_model_load_seconds", name);
        }
        out
    }
}
