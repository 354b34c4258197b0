//! A model's admission queue: at most `capacity` requests hold a slot at once; up to
//! `max_waiting` more wait for one, first in, first out, each until its own deadline.
//!
//! [`Queue::acquire`] with a deadline returns a [`Slot`], held for as long as the work
//! lasts, or a typed [`QueueRefusal`]. An on-demand model's load ([`crate::demand`]) is
//! waited for after the slot, within the same deadline. The number waiting is kept in a
//! shared counter that `/metrics` reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// `max_waiting` requests were already waiting.
    Full,
    /// The deadline passed while waiting.
    TimedOut,
}

/// A held slot; dropping it frees the slot for the next in line.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// A FIFO of requests waiting for one of `capacity` slots.
#[derive(Debug)]
pub struct Queue {
    slots: Arc<Semaphore>,
    capacity: usize,
    max_waiting: usize,
    waiting: Arc<AtomicUsize>,
}

/// Takes one waiter off the count when the wait ends, however it ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Queue {
    /// A queue with `capacity` slots (at least one) and room for `max_waiting` waiters.
    pub fn new(capacity: usize, max_waiting: usize) -> Self {
        let capacity = capacity.max(1);
        Queue {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            max_waiting,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A slot if one is free and nobody waits for one (waiters keep their turn).
    pub fn try_acquire(&self) -> Option<Slot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| Slot { _permit: permit })
    }

    /// A slot, waiting in line until `deadline` if none is free.
    pub async fn acquire(&self, deadline: Instant) -> Result<Slot, QueueRefusal> {
        if let Some(slot) = self.try_acquire() {
            return Ok(slot);
        }
        // Count first, then check: two racing requests cannot both take the last place.
        if self.waiting.fetch_add(1, Relaxed) >= self.max_waiting {
            self.waiting.fetch_sub(1, Relaxed);
            return Err(QueueRefusal::Full);
        }
        let _waiting = Waiting(&self.waiting);
        // The semaphore is fair: permits go to waiters in the order they asked.
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            // Closed never happens (the semaphore is never closed); treat it as a timeout.
            Ok(Err(_)) | Err(_) => Err(QueueRefusal::TimedOut),
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// The shared counter of waiters (for metrics).
    pub fn waiting_gauge(&self) -> Arc<AtomicUsize> {
        self.waiting.clone()
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test]
    async fn slots_are_handed_out_first_come_first_served() {
        let q = Arc::new(Queue::new(1, 3));
        let held = q.acquire(far()).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (waiter, tx) = (q.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                let slot = waiter.acquire(far()).await.unwrap();
                tx.send(i).unwrap();
                tokio::task::yield_now().await;
                drop(slot);
            }));
            // Let each one take its place in line before the next arrives.
            while q.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(q.acquire(far()).await.unwrap_err(), QueueRefusal::Full);
        assert!(q.try_acquire().is_none(), "no jumping the line");
        assert_eq!((q.in_use(), q.waiting()), (1, 3));
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        let order: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(order, [0, 1, 2]);
        assert_eq!((q.in_use(), q.waiting()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_deadline_and_leaves_the_line() {
        let q = Queue::new(1, 1);
        let _held = q.try_acquire().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            q.acquire(deadline).await.unwrap_err(),
            QueueRefusal::TimedOut
        );
        assert_eq!(q.waiting(), 0);
        // A zero-length queue refuses at once.
        let none = Queue::new(1, 0);
        let _held = none.try_acquire().unwrap();
        assert_eq!(none.acquire(far()).await.unwrap_err(), QueueRefusal::Full);
    }
}
