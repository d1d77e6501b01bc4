//! A retry budget per destination: retries may add at most `ratio` extra load on top of the
//! original requests, plus a small fixed reserve so low-traffic destinations can still retry.
//! Without it, a failing upstream sees its load multiplied by the attempt count exactly when
//! it can least afford it (a retry storm).
//!
//! Counts live in a ring of time buckets covering the window. The ring is rotated lazily on
//! every access rather than by a background task, so an idle budget costs nothing and tests
//! can drive it with paused tokio time.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

const BUCKETS: usize = 10;
/// The ratio is kept in parts per million so the limit is integer arithmetic: a float product
/// such as `0.2 * 1000` must allow exactly 200, not 199 after rounding.
const PPM: u128 = 1_000_000;

/// Retries allowed over the sliding `window`: `ratio` × requests + `min_per_second` × window
/// seconds. `Send + Sync`; share it with an `Arc` across all requests to a destination.
#[derive(Debug)]
pub struct RetryBudget {
    ratio_ppm: u128,
    reserve: u64,
    bucket_len: Duration,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct Ring {
    buckets: [Bucket; BUCKETS],
    current: usize,
    current_start: Instant,
}

impl RetryBudget {
    pub fn new(cfg: &outrigger_config::RetryBudget) -> Self {
        // `f64::max` maps NaN to 0 and the `as` cast saturates, so an unvalidated ratio can
        // neither panic nor wrap.
        let ratio_ppm = (cfg.ratio.max(0.0) * 1e6).round() as u128;
        let reserve = u128::from(cfg.min_per_second) * cfg.window.as_millis() / 1_000;
        Self {
            ratio_ppm,
            reserve: u64::try_from(reserve).unwrap_or(u64::MAX),
            // A zero window would divide by zero when rotating; validation forbids it, but a
            // floor keeps the request path panic-free whatever it is given.
            bucket_len: (cfg.window / BUCKETS as u32).max(Duration::from_millis(1)),
            ring: Mutex::new(Ring {
                buckets: [Bucket::default(); BUCKETS],
                current: 0,
                current_start: Instant::now(),
            }),
        }
    }

    /// Records an original request that could be retried; it earns `ratio` of a retry.
    pub fn deposit(&self) {
        let mut ring = self.ring();
        let bucket = ring.current_mut();
        bucket.requests = bucket.requests.saturating_add(1);
    }

    /// Asks to retry once; on `true` the retry is counted against the budget.
    pub fn try_withdraw(&self) -> bool {
        let mut ring = self.ring();
        let (requests, retries) = ring.totals();
        let earned = u128::from(requests) * self.ratio_ppm / PPM;
        let allowed = u64::try_from(earned)
            .unwrap_or(u64::MAX)
            .saturating_add(self.reserve);
        if retries >= allowed {
            return false;
        }
        let bucket = ring.current_mut();
        bucket.retries = bucket.retries.saturating_add(1);
        true
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // The ring holds plain counters, so a panic elsewhere cannot leave it meaningfully
        // inconsistent; refusing every retry forever would be worse.
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.rotate(Instant::now(), self.bucket_len);
        ring
    }
}

impl Ring {
    fn rotate(&mut self, now: Instant, len: Duration) {
        let elapsed = now.saturating_duration_since(self.current_start);
        let len_ns = len.as_nanos();
        let steps = elapsed.as_nanos() / len_ns;
        if steps == 0 {
            return;
        }
        if steps >= BUCKETS as u128 {
            self.buckets = [Bucket::default(); BUCKETS];
        } else {
            for _ in 0..steps {
                self.current = (self.current + 1) % BUCKETS;
                self.buckets[self.current] = Bucket::default();
            }
        }
        // Stay aligned to bucket boundaries: restarting the bucket at `now` would stretch
        // buckets under sparse traffic and so keep counts for longer than the window.
        let into_bucket = u64::try_from(elapsed.as_nanos() % len_ns).unwrap_or(0);
        self.current_start = now
            .checked_sub(Duration::from_nanos(into_bucket))
            .unwrap_or(now);
    }

    fn current_mut(&mut self) -> &mut Bucket {
        &mut self.buckets[self.current]
    }

    fn totals(&self) -> (u64, u64) {
        self.buckets.iter().fold((0, 0), |(q, r), b| {
            (q.saturating_add(b.requests), r.saturating_add(b.retries))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn budget(ratio: f64, min_per_second: u32, window_secs: u64) -> RetryBudget {
        RetryBudget::new(&outrigger_config::RetryBudget {
            ratio,
            min_per_second,
            window: Duration::from_secs(window_secs),
        })
    }

    fn withdraw_all(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
            assert!(n <= 1_000_000, "budget never ran out");
        }
        n
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RetryBudget>();
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_alone_allows_min_per_second_times_window() {
        let b = budget(0.2, 10, 10);
        assert_eq!(withdraw_all(&b), 100);
        // Still refused later in the same window.
        advance(Duration::from_secs(5)).await;
        assert!(!b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_add_ratio_on_top_of_reserve() {
        let b = budget(0.2, 10, 10);
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(withdraw_all(&b), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_after_the_window() {
        let b = budget(0.2, 10, 10);
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(withdraw_all(&b), 300);
        advance(Duration::from_secs(9)).await;
        assert!(!b.try_withdraw(), "refilled before the window passed");
        advance(Duration::from_secs(1)).await;
        // The deposits have expired with the retries, so only the reserve comes back.
        assert_eq!(withdraw_all(&b), 100);
        advance(Duration::from_secs(60)).await;
        assert_eq!(withdraw_all(&b), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn old_buckets_expire_one_at_a_time() {
        let b = budget(0.0, 1, 10);
        // 10 retries spent in the first bucket...
        assert_eq!(withdraw_all(&b), 10);
        // ...come back together once that bucket leaves the ring, and not before.
        advance(Duration::from_millis(9_999)).await;
        assert!(!b.try_withdraw());
        advance(Duration::from_millis(1)).await;
        assert_eq!(withdraw_all(&b), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_window_and_zero_ratio() {
        let b = RetryBudget::new(&outrigger_config::RetryBudget {
            ratio: 0.0,
            min_per_second: 4,
            window: Duration::from_millis(2_500),
        });
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(withdraw_all(&b), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_failure_never_exceeds_budget_over_any_window() {
        const TICK_MS: u64 = 10;
        const TICKS: usize = 6_000; // 60 s at 100 requests/s, one request per tick
        const WINDOW: usize = 1_000; // ticks in 10 s
        let b = budget(0.2, 10, 10);
        let mut granted = Vec::with_capacity(TICKS);
        for _ in 0..TICKS {
            b.deposit();
            // Every request fails and wants two retries.
            let mut g = 0u64;
            for _ in 0..2 {
                if b.try_withdraw() {
                    g += 1;
                }
            }
            granted.push(g);
            advance(Duration::from_millis(TICK_MS)).await;
        }
        // Every 10 s window ending at each tick: retries ≤ 0.2 × requests + 100, in integers.
        let mut in_window = 0u64;
        for end in 0..TICKS {
            in_window += granted[end];
            if end >= WINDOW {
                in_window -= granted[end - WINDOW];
            }
            let requests = (end + 1).min(WINDOW) as u64;
            assert!(
                5 * in_window <= requests + 500,
                "window ending at tick {end}: {in_window} retries for {requests} requests"
            );
            // The budget is not merely refusing everything: once full, windows get close to it.
            if end >= WINDOW {
                assert!(in_window >= 250, "window ending at {end}: only {in_window}");
            }
        }
    }
}
