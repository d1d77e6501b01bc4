//! Wall-clock time for what must be stored or written into certificates (token expiries, leaf
//! validity), that still follows tokio's clock when a test pauses and advances it.
//!
//! Expiries outlive the process, so they are wall-clock times; monotonic time would not
//! survive a restart and stops while a machine sleeps. In production tokio's clock is the
//! real one and [`now`] is plain `SystemTime::now()`. Under paused tokio time the clock runs
//! ahead of the real one by however far a test advanced it, and [`now`] moves with it, so
//! expiry logic is tested without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current wall-clock time (see the module docs).
pub fn now() -> SystemTime {
    // Read tokio's clock first: unpaused, it can then only be behind the real clock, and the
    // lead below is zero.
    let tokio_now = tokio::time::Instant::now().into_std();
    let real_now = std::time::Instant::now();
    SystemTime::now() + tokio_now.saturating_duration_since(real_now)
}

/// Whole seconds since the Unix epoch (0 before it: clocks are not set that far back).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `secs` after the Unix epoch.
pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// RFC 3339 in UTC, whole seconds, as the API shows times.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(from_unix(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let before = now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let after = now();
        let moved = after.duration_since(before).unwrap_or_default();
        assert!(moved >= Duration::from_secs(3599), "{moved:?}");
        assert!(moved < Duration::from_secs(3660), "{moved:?}");
    }

    #[test]
    fn is_the_system_clock_outside_paused_time() {
        let a = SystemTime::now();
        let b = now();
        let c = SystemTime::now();
        assert!(a <= b && b <= c);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix(from_unix(1_700_000_000)), 1_700_000_000);
    }
}
