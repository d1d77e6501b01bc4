//! A local token-bucket rate limit, per route or in front of the local app, and the step on
//! the request path that applies it (429 `rate-limited`).
//!
//! Not `tower::limit::RateLimit`: it makes callers wait for the next period instead of
//! refusing at once, and has no burst.

use crate::error::ProxyError;
use outrigger_config::RateLimit;
use prometheus::IntCounter;
use std::sync::{Mutex, PoisonError};
use tokio::time::Instant;

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(cfg: &RateLimit) -> Self {
        let burst = f64::from(cfg.burst);
        Self {
            rate: cfg.requests_per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn try_acquire(&self) -> bool {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The rate-limit step: on when the route has a limit and its bucket is empty.
pub fn admit(bucket: Option<&TokenBucket>, refused: &IntCounter) -> Result<(), ProxyError> {
    match bucket {
        Some(b) if !b.try_acquire() => {
            refused.inc();
            Err(ProxyError::RateLimited)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_step_refuses_and_counts_past_the_burst() {
        let b = TokenBucket::new(&RateLimit {
            requests_per_second: 1.0,
            burst: 2,
        });
        let refused = IntCounter::new("refused", "refused").expect("counter");
        assert_eq!(admit(Some(&b), &refused), Ok(()));
        assert_eq!(admit(Some(&b), &refused), Ok(()));
        assert_eq!(admit(Some(&b), &refused), Err(ProxyError::RateLimited));
        assert_eq!(refused.get(), 1);
        assert_eq!(admit(None, &refused), Ok(()), "no limit, no refusal");
    }

    #[tokio::test(start_paused = true)]
    async fn allows_burst_then_the_rate() {
        let b = TokenBucket::new(&RateLimit {
            requests_per_second: 10.0,
            burst: 5,
        });
        assert_eq!((0..10).filter(|_| b.try_acquire()).count(), 5);
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(
            (0..20).filter(|_| b.try_acquire()).count(),
            5,
            "refill is capped at the burst"
        );
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!((0..20).filter(|_| b.try_acquire()).count(), 3);
    }
}
