//! Durations in config are human strings (`250ms`, `15s`, `1m`), never bare numbers, so a
//! reader never has to guess the unit.
//!
//! Every duration also has an upper bound, checked at validation: the proxy adds them to
//! `Instant`s, multiplies them and turns them into deadlines, and a value of centuries would
//! overflow there (a panic on the request path) long after validation said yes. The bounds are
//! per family of fields and far above any useful setting, so they only ever catch typos and
//! abuse; each leaves orders of magnitude of headroom below any overflow.

use std::time::Duration;

pub use humantime_serde::option;
pub use humantime_serde::{deserialize, serialize};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A family of duration fields and the longest value it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Deadlines: route, per-try, inbound and connect timeouts, the shutdown drain.
    Timeout,
    /// Waits inserted into a request: retry backoff, injected fault delays, and the latency
    /// assumed for an endpoint without samples.
    Delay,
    /// Spans of time state is kept over: retry-budget and percentile windows, EWMA decay,
    /// outlier ejections.
    Window,
}

impl Family {
    pub const fn max(self) -> Duration {
        match self {
            Family::Timeout | Family::Window => DAY,
            Family::Delay => HOUR,
        }
    }
}

/// `d` as an operator would write it (`1day`, `1h`).
pub fn display(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_accepted_durations_cannot_overflow_an_instant_or_a_multiplier() {
        let now = std::time::Instant::now();
        for f in [Family::Timeout, Family::Delay, Family::Window] {
            assert!(now.checked_add(f.max()).is_some());
            // Outlier ejection multiplies by the ejection count (saturating), backoff by 2^n
            // (checked): both are then capped by another bounded field.
            assert!(f.max().checked_mul(1 << 16).is_some());
        }
        assert_eq!(display(Family::Timeout.max()), "1day");
        assert_eq!(display(Family::Delay.max()), "1h");
    }
}
