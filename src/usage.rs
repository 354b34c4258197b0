//! Requests in flight per model, and when it was last used: what the supervisor needs to
//! know before it unloads, stops or restarts an engine (SPEC §8, §9: a model with requests
//! in flight is never unloaded; a stopped model's requests finish first).
//!
//! The front takes a [`Lease`] for every request it passes to an engine and holds it until
//! the response is over. The supervisor *drains* a model before it stops or unloads it: from
//! then on no new lease is given (the front waits or answers 503), and it waits until the
//! leases out are back. The count and the "draining" mark live in one atomic word, so a
//! lease and a drain can never both win: [`Usage::try_drain_idle`] succeeds only when no
//! lease is out at that instant, and every later lease sees the mark.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The mark in the count's top bit: no new leases.
const DRAINING: usize = 1 << (usize::BITS - 1);

/// One model's requests in flight and last use.
#[derive(Debug)]
pub struct Usage {
    /// Leases out, plus [`DRAINING`] while the model is being drained.
    count: AtomicUsize,
    /// Milliseconds since [`epoch`] when a lease was last taken or given back.
    last_used: AtomicU64,
    /// Wakes drains when the last lease comes back.
    idle: Notify,
}

/// The clock `last_used` counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            count: AtomicUsize::new(0),
            last_used: AtomicU64::new(now_ms()),
            idle: Notify::new(),
        }
    }
}

/// A request in flight; giving it back (dropping it) marks the model used now.
#[derive(Debug)]
pub struct Lease(Arc<Usage>);

impl Drop for Lease {
    fn drop(&mut self) {
        let usage = &self.0;
        usage.last_used.store(now_ms(), SeqCst);
        let before = usage.count.fetch_sub(1, SeqCst);
        if before & !DRAINING == 1 {
            usage.idle.notify_waiters();
        }
    }
}

impl Usage {
    /// A new, idle, unused model.
    pub fn new() -> Arc<Usage> {
        Arc::new(Usage::default())
    }

    /// A lease for one request, unless the model is being drained.
    pub fn lease(self: &Arc<Self>) -> Option<Lease> {
        let before = self.count.fetch_add(1, SeqCst);
        if before & DRAINING != 0 {
            let after = self.count.fetch_sub(1, SeqCst);
            if after & !DRAINING == 1 {
                self.idle.notify_waiters();
            }
            return None;
        }
        self.last_used.store(now_ms(), SeqCst);
        Some(Lease(self.clone()))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.count.load(SeqCst) & !DRAINING
    }

    /// True while the model is being drained.
    pub fn draining(&self) -> bool {
        self.count.load(SeqCst) & DRAINING != 0
    }

    /// How long since a request last started or ended.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_used.load(SeqCst)))
    }

    /// Counts as used now (a load that nobody asked for by request, such as an admin
    /// start, gets its full idle time).
    pub fn touch(&self) {
        self.last_used.store(now_ms(), SeqCst);
    }

    /// Stops new leases; those out keep going. See [`Usage::drained`].
    pub fn drain(&self) {
        self.count.fetch_or(DRAINING, SeqCst);
    }

    /// Drains the model only if no request is in flight at this instant (idle unload,
    /// swapping); true when it did.
    pub fn try_drain_idle(&self) -> bool {
        self.count
            .compare_exchange(0, DRAINING, SeqCst, SeqCst)
            .is_ok()
    }

    /// Gives leases again.
    pub fn undrain(&self) {
        self.count.fetch_and(!DRAINING, SeqCst);
    }

    /// Resolves when no lease is out (immediately if none is).
    pub async fn drained(&self) {
        loop {
            let wake = self.idle.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            wake.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_and_a_drain_refuses_new_ones() {
        let u = Usage::new();
        let a = u.lease().unwrap();
        let b = u.lease().unwrap();
        assert_eq!(u.in_flight(), 2);
        assert!(!u.try_drain_idle(), "requests in flight");
        u.drain();
        assert!(u.draining());
        assert!(u.lease().is_none());
        assert_eq!(u.in_flight(), 2);
        drop((a, b));
        assert_eq!(u.in_flight(), 0);
        u.undrain();
        assert!(u.lease().is_some());
        assert!(u.try_drain_idle());
        assert!(u.lease().is_none());
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_lease() {
        let u = Usage::new();
        let lease = u.lease().unwrap();
        u.drain();
        let waiter = {
            let u = u.clone();
            tokio::spawn(async move { u.drained().await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        drop(lease);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("drained after the last lease")
            .unwrap();
    }

    #[test]
    fn a_lease_and_a_drain_race_without_both_winning() {
        for _ in 0..200 {
            let u = Usage::new();
            let u2 = u.clone();
            let t = std::thread::spawn(move || u2.lease().map(std::mem::forget).is_some());
            let drained = u.try_drain_idle();
            let leased = t.join().unwrap();
            // A lease that came first makes the drain fail; one that came after is refused.
            assert!(!(leased && drained), "both won");
            assert!(leased || drained);
        }
    }
}
