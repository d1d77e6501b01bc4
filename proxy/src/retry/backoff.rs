//! How long to wait before a retry: exponential growth so a struggling upstream gets more room
//! with each failure, a cap so a request never stalls for long, and jitter so the many clients
//! that failed at the same moment do not all come back at the same moment.

use std::time::Duration;

/// Exponential backoff with "equal jitter", from a route's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(cfg: &outrigger_config::Backoff) -> Self {
        Self {
            base: cfg.base,
            max: cfg.max,
        }
    }

    /// The delay before retry number `retry` (1 is the first retry; 0 is treated as 1).
    ///
    /// The ceiling is `base * 2^(retry - 1)`, at most `max`; the delay is uniformly random in
    /// `[ceiling / 2, ceiling]`. Keeping half of the ceiling fixed means a retry never comes
    /// back immediately, while the random half still spreads synchronized clients apart.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let floor = ceiling / 2;
        // Durations beyond u64 nanoseconds (centuries) only lose jitter range, never bounds.
        let spread = u64::try_from((ceiling - floor).as_nanos()).unwrap_or(u64::MAX);
        floor + Duration::from_nanos(fastrand::u64(0..=spread))
    }

    fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1);
        // Past 2^31 (or on multiplication overflow) the product is far beyond any sane `max`,
        // so falling back to `max` is exact rather than an approximation.
        1u32.checked_shl(doublings)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn backoff(base_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(&outrigger_config::Backoff {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
        })
    }

    #[test]
    fn delays_stay_within_equal_jitter_bounds() {
        let b = backoff(25, 250);
        for retry in 1..=20u32 {
            let ceiling_ms = (25u64 << (retry - 1)).min(250);
            let ceiling = Duration::from_millis(ceiling_ms);
            for _ in 0..200 {
                let d = b.delay(retry);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "retry {retry}: {d:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn cap_holds_for_huge_retry_numbers() {
        let b = backoff(25, 250);
        let max = Duration::from_millis(250);
        for retry in [11, 31, 32, 33, 64, 1_000, u32::MAX] {
            for _ in 0..50 {
                let d = b.delay(retry);
                assert!(d <= max && d >= max / 2, "retry {retry}: {d:?}");
            }
        }
        // A base so large that doubling overflows `Duration` must still cap, not panic.
        let huge = Backoff::new(&outrigger_config::Backoff {
            base: Duration::from_secs(u64::MAX / 2),
            max: Duration::from_secs(u64::MAX),
        });
        assert!(huge.delay(3) <= Duration::from_secs(u64::MAX));
    }

    #[test]
    fn retry_zero_is_treated_as_the_first_retry() {
        let b = backoff(100, 1_000);
        for _ in 0..50 {
            let d = b.delay(0);
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }

    #[test]
    fn jitter_varies() {
        let b = backoff(25, 250);
        let seen: HashSet<Duration> = (0..100).map(|_| b.delay(3)).collect();
        assert!(seen.len() > 10, "only {} distinct delays", seen.len());
    }

    #[test]
    fn defaults_start_small() {
        let b = Backoff::new(&outrigger_config::Backoff::default());
        assert!(b.delay(1) <= Duration::from_millis(25));
        assert!(b.delay(10) <= Duration::from_millis(250));
    }
}
