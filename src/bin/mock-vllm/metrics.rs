//! mock-vllm's `GET /metrics`: what vLLM's V1 engine exports, in the text format Python's
//! `prometheus_client` writes (counters as `_total` with a `_created` gauge beside them,
//! labels `model_name` and `engine`), kept up to date by the requests the mock serves.
//!
//! - `vllm:num_requests_running` / `vllm:num_requests_waiting`: requests being answered /
//!   waiting for a slot; `--max-num-seqs N` (vLLM's flag) allows N at once (default: no limit).
//! - `vllm:kv_cache_usage_perc`: running / max-num-seqs (256 when not given).
//! - `vllm:prompt_tokens_total` (1 per request), `vllm:generation_tokens_total` (1 per
//!   stream chunk, 4 per plain answer), `vllm:request_success_total{finished_reason}`.
//! - `vllm:time_to_first_token_seconds`: a histogram with vLLM's buckets.
//! - `MOCK_METRICS_DELAY_MS`: `/metrics` answers only after this long (a slow engine).

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// vLLM V1's time-to-first-token buckets (seconds).
const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's finish reasons, as `finished_reason` label values.
const REASONS: [&str; 3] = ["stop", "length", "abort"];

/// The engine's counters and gauges.
pub struct EngineMetrics {
    labels: String,
    created: f64,
    delay: Duration,
    slots: Option<Arc<Semaphore>>,
    max_num_seqs: usize,
    running: AtomicI64,
    waiting: AtomicI64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    finished: [AtomicU64; REASONS.len()],
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_sum_micros: AtomicU64,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Python prints it: `2.0`, `0.35`.
fn py(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

impl EngineMetrics {
    /// Metrics for the served name `model_name`; `max_num_seqs` from `--max-num-seqs`.
    pub fn new(model_name: &str, max_num_seqs: Option<usize>) -> Self {
        let delay = std::env::var("MOCK_METRICS_DELAY_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        EngineMetrics {
            labels: format!("model_name=\"{}\",engine=\"0\"", escape(model_name)),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            delay,
            slots: max_num_seqs.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            max_num_seqs: max_num_seqs.unwrap_or(256).max(1),
            running: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            finished: Default::default(),
            ttft_buckets: Default::default(),
            ttft_count: AtomicU64::new(0),
            ttft_sum_micros: AtomicU64::new(0),
        }
    }

    /// Starts a request: waits for a slot (counted as waiting meanwhile), then counts it
    /// as running until the returned guard is dropped.
    pub async fn begin(self: &Arc<Self>) -> Running {
        let permit = match &self.slots {
            Some(slots) => {
                self.waiting.fetch_add(1, Relaxed);
                let permit = slots.clone().acquire_owned().await.ok();
                self.waiting.fetch_sub(1, Relaxed);
                permit
            }
            None => None,
        };
        self.running.fetch_add(1, Relaxed);
        self.prompt_tokens.fetch_add(1, Relaxed);
        Running {
            metrics: self.clone(),
            started: Instant::now(),
            first_token: false,
            finished: false,
            _permit: permit,
        }
    }

    /// The exposition, after `MOCK_METRICS_DELAY_MS`.
    pub async fn render(&self) -> String {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let l = &self.labels;
        let running = self.running.load(Relaxed).max(0) as f64;
        let mut out = String::with_capacity(8192);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (sample, value) in samples {
                let _ = writeln!(out, "{sample} {}", py(*value));
            }
        };
        family(
            "python_info",
            "gauge",
            "Python platform information",
            &[(
                "python_info{implementation=\"CPython\",major=\"3\",minor=\"12\",patchlevel=\"3\",version=\"3.12.3\"}".into(),
                1.0,
            )],
        );
        let gauges = [
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                running,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                self.waiting.load(Relaxed).max(0) as f64,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                (running / self.max_num_seqs as f64).min(1.0),
            ),
        ];
        for (name, help, v) in gauges {
            family(name, "gauge", help, &[(format!("{name}{{{l}}}"), v)]);
        }
        let counters = [
            (
                "vllm:prompt_tokens",
                "Number of prefill tokens processed.",
                &self.prompt_tokens,
            ),
            (
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                &self.generation_tokens,
            ),
        ];
        for (name, help, c) in counters {
            let total = format!("{name}_total");
            family(
                &total,
                "counter",
                help,
                &[(format!("{total}{{{l}}}"), c.load(Relaxed) as f64)],
            );
            let created = format!("{name}_created");
            family(
                &created,
                "gauge",
                help,
                &[(format!("{created}{{{l}}}"), self.created)],
            );
        }
        let success = "Count of successfully processed requests.";
        let by_reason = |suffix: &str, value: &dyn Fn(usize) -> f64| -> Vec<(String, f64)> {
            (0..REASONS.len())
                .map(|i| {
                    let reason = REASONS[i];
                    (
                        format!(
                            "vllm:request_success_{suffix}{{{l},finished_reason=\"{reason}\"}}"
                        ),
                        value(i),
                    )
                })
                .collect()
        };
        let totals = by_reason("total", &|i| self.finished[i].load(Relaxed) as f64);
        family("vllm:request_success_total", "counter", success, &totals);
        let created = by_reason("created", &|_| self.created);
        family("vllm:request_success_created", "gauge", success, &created);

        let ttft = "vllm:time_to_first_token_seconds";
        let mut samples = Vec::with_capacity(TTFT_BUCKETS.len() + 3);
        let mut cumulative = 0;
        for (bound, c) in TTFT_BUCKETS.iter().zip(&self.ttft_buckets) {
            cumulative += c.load(Relaxed);
            samples.push((
                format!("{ttft}_bucket{{{l},le=\"{}\"}}", py(*bound)),
                cumulative as f64,
            ));
        }
        let count = self.ttft_count.load(Relaxed) as f64;
        samples.push((format!("{ttft}_bucket{{{l},le=\"+Inf\"}}"), count));
        samples.push((format!("{ttft}_count{{{l}}}"), count));
        let sum = self.ttft_sum_micros.load(Relaxed) as f64 / 1e6;
        samples.push((format!("{ttft}_sum{{{l}}}"), sum));
        let help = "Histogram of time to first token in seconds.";
        family(ttft, "histogram", help, &samples);
        family(
            &format!("{ttft}_created"),
            "gauge",
            help,
            &[(format!("{ttft}_created{{{l}}}"), self.created)],
        );
        out
    }
}

/// One request in progress; dropping it ends it (`abort` unless [`Running::finish`]).
pub struct Running {
    metrics: Arc<EngineMetrics>,
    started: Instant,
    first_token: bool,
    finished: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Running {
    /// Counts `n` generated tokens; the first call records the time to first token.
    pub fn generated(&mut self, n: u64) {
        let m = &self.metrics;
        if !self.first_token {
            self.first_token = true;
            let secs = self.started.elapsed().as_secs_f64();
            if let Some(i) = TTFT_BUCKETS.iter().position(|b| secs <= *b) {
                m.ttft_buckets[i].fetch_add(1, Relaxed);
            }
            m.ttft_count.fetch_add(1, Relaxed);
            m.ttft_sum_micros.fetch_add((secs * 1e6) as u64, Relaxed);
        }
        m.generation_tokens.fetch_add(n, Relaxed);
    }

    /// The request ended normally (`finished_reason="stop"`).
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.running.fetch_sub(1, Relaxed);
        let reason = if self.finished { 0 } else { 2 };
        m.finished[reason].fetch_add(1, Relaxed);
    }
}
