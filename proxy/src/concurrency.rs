//! The per-destination concurrency limit: how many requests may be in flight and how many may
//! wait for a slot, and why a request was turned away ([`Overload`], which also names the
//! upstream connection bound the client enforces). Past a bound the request fails at once (503
//! `overloaded`) instead of joining an unbounded queue.
//!
//! Not `tower::limit::ConcurrencyLimit` with `load_shed`: the former queues without bound or
//! deadline, and the latter sheds as soon as no slot is free, with no queue at all. This is
//! both: a bounded queue that waits at most until the request's deadline.

use outrigger_config::Limits;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// `max_pending_requests` were already waiting.
    Pending,
    /// A slot did not free up before the request's deadline.
    Deadline,
    /// `max_connections` upstream connections are open.
    Connections,
}

impl Overload {
    pub fn as_str(self) -> &'static str {
        match self {
            Overload::Pending => "pending",
            Overload::Deadline => "deadline",
            Overload::Connections => "connections",
        }
    }
}

/// Slots for requests in flight to one destination, with a bounded queue for a free one.
pub struct ConcurrencyLimit {
    in_flight: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_pending: usize,
}

impl ConcurrencyLimit {
    pub fn new(limits: &Limits) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(limits.max_requests as usize)),
            waiting: AtomicUsize::new(0),
            max_pending: limits.max_pending_requests as usize,
        }
    }

    /// A slot for one request in flight, held until its response ends.
    pub async fn acquire(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Overload> {
        if let Ok(p) = self.in_flight.clone().try_acquire_owned() {
            return Ok(p);
        }
        let _place = Waiting::join(&self.waiting, self.max_pending).ok_or(Overload::Pending)?;
        let got = tokio::time::timeout_at(deadline, self.in_flight.clone().acquire_owned()).await;
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Overload::Deadline),
        }
    }
}

/// A place in the queue, given back when the waiter leaves for any reason (a slot, the
/// deadline, or its client hanging up and the request being dropped mid-wait).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn join(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn queue_is_bounded_and_waiters_get_freed_slots() {
        let b = Arc::new(ConcurrencyLimit::new(&Limits {
            max_connections: 10,
            max_pending_requests: 1,
            max_requests: 2,
        }));
        let far = Instant::now() + Duration::from_secs(60);
        let p1 = b.acquire(far).await.expect("slot 1");
        let _p2 = b.acquire(far).await.expect("slot 2");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(far).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        // One is waiting; the next finds the queue full at once.
        assert_eq!(b.acquire(far).await.err(), Some(Overload::Pending));
        drop(p1);
        assert_eq!(waiter.await.expect("task"), Ok(()));
        let soon = Instant::now() + Duration::from_millis(10);
        let _p3 = b.acquire(far).await.expect("freed by the waiter's drop");
        assert_eq!(b.acquire(soon).await.err(), Some(Overload::Deadline));
    }
}
