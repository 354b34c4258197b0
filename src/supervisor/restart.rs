//! Restart policy: exponential back-off with jitter (about 1 s doubling to a 60 s cap, reset
//! after a long healthy run) and a budget of restarts per 10 minutes.

use std::collections::VecDeque;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

/// The window in which restarts are counted.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Longest back-off between restarts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run ready for this long resets the back-off.
pub const HEALTHY_RESET: Duration = Duration::from_secs(180);

/// One model's restart bookkeeping.
pub struct RestartPolicy {
    first_delay: Duration,
    max_restarts: u32,
    recent: VecDeque<Instant>,
    backoff: ExponentialBackoff,
}

fn schedule(first_delay: Duration) -> ExponentialBackoff {
    // backon stops after 3 tries and adds no jitter unless told otherwise.
    ExponentialBuilder::default()
        .with_min_delay(first_delay)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

impl RestartPolicy {
    /// A policy allowing `max_restarts` restarts per [`WINDOW`].
    pub fn new(first_delay: Duration, max_restarts: u32) -> Self {
        RestartPolicy {
            first_delay,
            max_restarts,
            recent: VecDeque::new(),
            backoff: schedule(first_delay),
        }
    }

    /// Called after a failure. `ready_for` is how long the engine had been ready (zero if it
    /// never was). Returns the delay before the next start, or `None` when the budget is
    /// spent and the model is failed.
    pub fn next_delay(&mut self, now: Instant, ready_for: Duration) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts as usize {
            return None;
        }
        if ready_for >= HEALTHY_RESET {
            self.backoff = schedule(self.first_delay);
        }
        self.recent.push_back(now);
        Some(self.backoff.next().unwrap_or(MAX_DELAY).min(MAX_DELAY))
    }

    /// Restarts counted in the current window (what the budget is measured against).
    pub fn recent(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_the_budget_runs_out() {
        let mut p = RestartPolicy::new(Duration::from_secs(1), 5);
        let now = Instant::now();
        let delays: Vec<Duration> = (0..5)
            .map(|_| p.next_delay(now, Duration::ZERO).unwrap())
            .collect();
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_secs(1 << i);
            // jitter adds up to one base delay on top
            assert!(*d >= base && *d <= base * 2, "restart {i}: {d:?}");
        }
        assert_eq!(p.next_delay(now, Duration::ZERO), None);
        // Ten minutes later the window has room again.
        assert!(
            p.next_delay(now + WINDOW + Duration::from_secs(1), Duration::ZERO)
                .is_some()
        );
    }

    #[test]
    fn a_long_healthy_run_resets_the_backoff() {
        let mut p = RestartPolicy::new(Duration::from_secs(1), 100);
        let now = Instant::now();
        for _ in 0..4 {
            p.next_delay(now, Duration::ZERO);
        }
        let d = p.next_delay(now, HEALTHY_RESET).unwrap();
        assert!(d <= Duration::from_secs(2), "{d:?}");
    }
}
