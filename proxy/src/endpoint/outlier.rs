//! Outlier detection for one endpoint, as three small states: in service (counting consecutive
//! gateway failures), ejected (until a deadline that grows with each ejection), and on
//! probation (one probe request decides whether it returns or is ejected again).

use outrigger_config::OutlierDetection;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
pub struct Outlier {
    consecutive: AtomicU32,
    /// Fast check for the common case; the details are in `ejection`.
    ejected: AtomicBool,
    probe_in_flight: AtomicBool,
    ejection: Mutex<Ejection>,
}

#[derive(Default)]
struct Ejection {
    count: u32,
    until: Option<Instant>,
    restored_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Ejection time is over: the next request may be its probe.
    ProbeDue,
    Ejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Ejected,
    Restored,
}

impl Outlier {
    pub fn availability(&self, now: Instant) -> Availability {
        if !self.ejected.load(Ordering::Acquire) {
            return Availability::Available;
        }
        let e = self.ejection.lock().unwrap_or_else(PoisonError::into_inner);
        match e.until {
            Some(t) if now >= t && !self.probe_in_flight.load(Ordering::Acquire) => {
                Availability::ProbeDue
            }
            Some(_) => Availability::Ejected,
            None => Availability::Available,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Takes the single probe slot; true if this caller's request is the probe.
    pub fn claim_probe(&self) -> bool {
        self.probe_in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records an attempt's outcome. `gateway_failure`: connect failure, reset or 502/503/504.
    /// While ejected, only the probe's outcome counts. `may_eject` says whether the
    /// destination's ejection cap allows one more.
    pub fn record(
        &self,
        cfg: &OutlierDetection,
        gateway_failure: bool,
        probe: bool,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Transition> {
        let now = Instant::now();
        if self.ejected.load(Ordering::Acquire) {
            if !probe {
                return None;
            }
            let mut e = self.ejection.lock().unwrap_or_else(PoisonError::into_inner);
            self.probe_in_flight.store(false, Ordering::Release);
            if gateway_failure {
                e.count += 1;
                e.until = Some(now + ejection_time(cfg, e.count));
                return None;
            }
            e.until = None;
            e.restored_at = Some(now);
            self.consecutive.store(0, Ordering::Relaxed);
            self.ejected.store(false, Ordering::Release);
            return Some(Transition::Restored);
        }
        if !gateway_failure {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if cfg.consecutive_failures == 0 || n < cfg.consecutive_failures || !may_eject() {
            return None;
        }
        let mut e = self.ejection.lock().unwrap_or_else(PoisonError::into_inner);
        // An endpoint healthy for a whole maximum ejection starts its multiplier afresh.
        if e.restored_at
            .is_some_and(|t| now.saturating_duration_since(t) >= cfg.max_ejection)
        {
            e.count = 0;
        }
        e.count += 1;
        e.until = Some(now + ejection_time(cfg, e.count));
        self.consecutive.store(0, Ordering::Relaxed);
        self.ejected.store(true, Ordering::Release);
        Some(Transition::Ejected)
    }

    /// Gives back a probe slot whose request never reached the endpoint.
    pub fn release_probe(&self) {
        self.probe_in_flight.store(false, Ordering::Release);
    }
}

/// The probe slot an attempt holds. Consumed when the attempt's outcome is recorded; if the
/// attempt ends without one (the client went away mid-probe), dropping it gives the slot back,
/// so an abandoned probe never keeps an endpoint out for good.
pub struct ProbeSlot<'a>(Option<&'a Outlier>);

impl<'a> ProbeSlot<'a> {
    pub fn new(outlier: &'a Outlier, is_probe: bool) -> Self {
        Self(is_probe.then_some(outlier))
    }

    /// Whether this attempt is the probe; afterwards the slot is the caller's to settle.
    pub fn consume(&mut self) -> bool {
        self.0.take().is_some()
    }
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            o.release_probe();
        }
    }
}

fn ejection_time(cfg: &OutlierDetection, count: u32) -> Duration {
    cfg.base_ejection
        .saturating_mul(count)
        .min(cfg.max_ejection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierDetection {
        OutlierDetection::default()
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_probes_back() {
        let o = Outlier::default();
        for _ in 0..4 {
            assert_eq!(o.record(&cfg(), true, false, || true), None);
        }
        // A success in between resets the count.
        o.record(&cfg(), false, false, || true);
        for _ in 0..4 {
            o.record(&cfg(), true, false, || true);
        }
        assert_eq!(
            o.record(&cfg(), true, false, || true),
            Some(Transition::Ejected)
        );
        assert_eq!(o.availability(Instant::now()), Availability::Ejected);

        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(o.availability(Instant::now()), Availability::Ejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(o.availability(Instant::now()), Availability::ProbeDue);
        assert!(o.claim_probe());
        assert!(!o.claim_probe(), "only one probe at a time");
        assert_eq!(o.availability(Instant::now()), Availability::Ejected);
        // Non-probe results while ejected change nothing.
        assert_eq!(o.record(&cfg(), false, false, || true), None);
        // The probe fails: ejected again, for twice as long.
        assert_eq!(o.record(&cfg(), true, true, || true), None);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(o.availability(Instant::now()), Availability::Ejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(o.claim_probe());
        assert_eq!(
            o.record(&cfg(), false, true, || true),
            Some(Transition::Restored)
        );
        assert_eq!(o.availability(Instant::now()), Availability::Available);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_is_capped_and_the_cap_on_ejected_share_is_respected() {
        let o = Outlier::default();
        for _ in 0..5 {
            o.record(&cfg(), true, false, || false);
        }
        assert!(!o.is_ejected(), "the destination refused another ejection");
        assert_eq!(ejection_time(&cfg(), 20), Duration::from_secs(300));
        assert_eq!(ejection_time(&cfg(), 3), Duration::from_secs(90));
    }
}
