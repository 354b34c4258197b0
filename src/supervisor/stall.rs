//! Hung-engine detection from progress (`MODELMUX_STALL_TIMEOUT`). vLLM's `/health` keeps
//! answering 200 through a decode deadlock: the API server is fine, its EngineCore is stuck.
//! What gives it away is the engine's own metrics: requests in its running batch and
//! counters of work done that stop moving.
//!
//! The engine's metrics are the signal, not the front's count of requests in flight: only
//! the engine knows whether a request is in its batch (rather than waiting for a slot) and
//! whether tokens come out. Its gauges and counters are updated by the API server from what
//! the EngineCore reports, so a stuck EngineCore leaves `running` above zero and the
//! counters still. An idle engine has nothing running and is never flagged; one whose
//! `/metrics` does not answer gives no evidence either way (a readiness probe that fails
//! is what catches an engine that answers nothing), and the missing readings neither
//! start nor reset the clock.
//!
//! The check runs beside the health probe of a ready engine, on its own connection to the
//! engine's loopback port: nothing on the request path. The metric names are the engine
//! profile's ([`crate::engines::ProgressMetrics`]); an engine without metrics
//! (llama-cpp-python) is not judged.

use std::time::Duration;

use tokio::time::Instant;

use crate::observability::scrape;

pub use crate::engines::ProgressMetrics;

/// Reading an engine's metrics with its profile's names ([`ProgressMetrics`], one set per
/// engine profile; `None` for a server without metrics, which is never judged).
impl ProgressMetrics {
    /// Reads one exposition: `None` unless it has the running gauge and at least one of
    /// the progress counters (an engine without them cannot be judged).
    pub fn read(&self, text: &str) -> Option<Reading> {
        let mut names = Vec::with_capacity(2 + self.progress.len());
        names.push(self.running);
        names.extend(self.generated);
        names.extend_from_slice(self.progress);
        let sums = scrape::sums(text, &names);
        let running = sums[0]?;
        let counters = &sums[1..];
        if counters.iter().all(Option::is_none) {
            return None;
        }
        Some(Reading {
            running,
            work: counters.iter().flatten().sum(),
            generated: self.generated.and(counters[0]),
        })
    }
}

/// What one look at an engine's metrics says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Requests in the running batch.
    pub running: f64,
    /// The progress counters added up: it moves whenever any of them moves.
    pub work: f64,
    /// Tokens generated so far, for messages.
    pub generated: Option<f64>,
}

/// An engine that has had requests running without progress for the whole timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// Requests running at the last look.
    pub running: f64,
    /// How long nothing moved.
    pub stuck_for: Duration,
    /// The generated-token counter that did not move.
    pub generated: Option<f64>,
}

impl Stall {
    /// Why the engine is restarted, for the log and `last_exit`.
    pub fn reason(&self, timeout: Duration) -> String {
        let n = self.running.round() as u64;
        let requests = if n == 1 { "request" } else { "requests" };
        let tokens = self
            .generated
            .map(|g| format!("generated tokens stuck at {g:.0}, "))
            .unwrap_or_default();
        format!(
            "hung: {n} {requests} running and no progress for {:.1} s ({tokens}MODELMUX_STALL_TIMEOUT={})",
            self.stuck_for.as_secs_f64(),
            timeout.as_secs_f64()
        )
    }
}

/// Follows one engine run's readings and says when it has stalled.
#[derive(Debug)]
pub struct StallWatch {
    timeout: Duration,
    /// The work counter at the last reading.
    last_work: Option<f64>,
    /// Since when requests have been running without the work counter moving.
    still_since: Option<Instant>,
}

impl StallWatch {
    /// A watch that flags an engine after `timeout` without progress.
    pub fn new(timeout: Duration) -> Self {
        StallWatch {
            timeout,
            last_work: None,
            still_since: None,
        }
    }

    /// Takes one reading made at `now`; `Some` once requests have been running for the
    /// whole timeout without any progress counter moving.
    pub fn observe(&mut self, now: Instant, reading: Reading) -> Option<Stall> {
        let moved = self.last_work != Some(reading.work);
        self.last_work = Some(reading.work);
        if reading.running <= 0.0 {
            // Idle: nothing to wait for, whatever the counters do.
            self.still_since = None;
            return None;
        }
        if moved || self.still_since.is_none() {
            // Progress now, or requests that were not running at the last look: the clock
            // starts here (the request may be older, so this errs on the side of waiting).
            self.still_since = Some(now);
            return None;
        }
        let stuck_for = now.duration_since(self.still_since?);
        (stuck_for >= self.timeout).then_some(Stall {
            running: reading.running,
            stuck_for,
            generated: reading.generated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::Engine;

    fn names(engine: Engine) -> ProgressMetrics {
        engine.profile().metrics.expect("has metrics").progress
    }

    fn r(running: f64, work: f64) -> Reading {
        Reading {
            running,
            work,
            generated: Some(work),
        }
    }

    /// Feeds readings one second apart; returns the second of the first stall.
    fn first_stall(timeout: u64, readings: &[Reading]) -> Option<usize> {
        let mut w = StallWatch::new(Duration::from_secs(timeout));
        let t0 = Instant::now();
        readings
            .iter()
            .enumerate()
            .find_map(|(i, x)| w.observe(t0 + Duration::from_secs(i as u64), *x).map(|_| i))
    }

    #[test]
    fn requests_running_with_still_counters_stall_after_the_timeout() {
        let frozen = [
            r(0.0, 5.0),
            r(2.0, 9.0),
            r(2.0, 9.0),
            r(2.0, 9.0),
            r(2.0, 9.0),
        ];
        // Nothing moved from second 1 (the last progress) for 3 s: flagged at second 4.
        assert_eq!(first_stall(3, &frozen), Some(4));
    }

    #[test]
    fn an_idle_engine_is_never_flagged() {
        assert_eq!(first_stall(1, &[r(0.0, 7.0); 20]), None);
    }

    #[test]
    fn a_slow_engine_that_keeps_moving_is_not_flagged() {
        let slow: Vec<Reading> = (0..20).map(|i| r(1.0, f64::from(i / 2))).collect();
        assert_eq!(first_stall(3, &slow), None);
    }

    #[test]
    fn going_idle_resets_the_clock() {
        let mut seq = vec![
            r(1.0, 3.0),
            r(1.0, 3.0),
            r(0.0, 3.0),
            r(1.0, 3.0),
            r(1.0, 3.0),
        ];
        assert_eq!(first_stall(2, &seq), None);
        seq.push(r(1.0, 3.0));
        assert_eq!(first_stall(2, &seq), Some(5));
    }

    #[test]
    fn missing_readings_neither_start_nor_reset_the_clock() {
        let mut w = StallWatch::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.observe(t0, r(1.0, 4.0)), None);
        // The metrics did not answer for 30 s; the counter has not moved meanwhile.
        let stall = w
            .observe(t0 + Duration::from_secs(30), r(1.0, 4.0))
            .unwrap();
        assert_eq!(stall.stuck_for, Duration::from_secs(30));
        assert_eq!(
            stall.reason(Duration::from_secs(10)),
            "hung: 1 request running and no progress for 30.0 s (generated tokens stuck at 4, MODELMUX_STALL_TIMEOUT=10)"
        );
    }

    #[test]
    fn vllm_metrics_are_read_from_every_label_set() {
        let text = "\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name=\"m\",engine=\"0\"} 1.0
vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 2.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name=\"m\",engine=\"0\"} 10.0
vllm:generation_tokens_created{model_name=\"m\",engine=\"0\"} 1.7e+09
vllm:prompt_tokens_total{model_name=\"m\",engine=\"0\"} 5.0
vllm:request_success_total{model_name=\"m\",engine=\"0\",finished_reason=\"stop\"} 2.0
vllm:request_success_total{model_name=\"m\",engine=\"0\",finished_reason=\"abort\"} 1.0
";
        let vllm = names(Engine::Vllm);
        assert_eq!(
            vllm.read(text),
            Some(Reading {
                running: 3.0,
                work: 18.0,
                generated: Some(10.0)
            })
        );
        // Another engine's metrics, or none: no reading, so no verdict.
        assert_eq!(vllm.read("sglang:num_running_reqs 1\n"), None);
        assert_eq!(vllm.read("vllm:num_requests_running 1\n"), None);
    }

    #[test]
    fn each_profile_reads_its_own_servers_series() {
        // As each server writes them (SGLang's prometheus_client with a model_name label,
        // TGI's metrics-exporter-prometheus without `_total`, llama.cpp's own writer).
        let sglang = "\
sglang:num_running_reqs{model_name=\"m\"} 2.0
sglang:num_used_tokens{model_name=\"m\"} 310.0
sglang:gen_throughput{model_name=\"m\"} 41.5
sglang:generation_tokens_total{model_name=\"m\"} 100.0
";
        let tgi = "\
tgi_batch_current_size 3
tgi_batch_inference_success{method=\"prefill\"} 2
tgi_batch_inference_success{method=\"decode\"} 57
tgi_request_success 1
";
        let llamacpp = "\
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
llamacpp:n_decode_total 12
llamacpp:prompt_tokens_total 9
llamacpp:tokens_predicted_total 0
";
        for (engine, text, running, work) in [
            (Engine::Sglang, sglang, 2.0, 451.5),
            (Engine::Tgi, tgi, 3.0, 60.0),
            (Engine::Llamacpp, llamacpp, 1.0, 21.0),
        ] {
            let r = names(engine)
                .read(text)
                .unwrap_or_else(|| panic!("{engine}"));
            assert_eq!((r.running, r.work), (running, work), "{engine}");
            // Their token counters move only when a request ends: not named as stuck.
            assert_eq!(r.generated, None, "{engine}");
            // vLLM's names are not theirs: no reading, no verdict.
            assert_eq!(names(Engine::Vllm).read(text), None, "{engine}");
        }
        // llama-cpp-python has no metrics: its engines are never judged.
        assert!(Engine::LlamacppPython.profile().metrics.is_none());
    }
}
