//! Peak-EWMA latency: jumps up to a slow sample at once, decays back down over time. Slow
//! endpoints are noticed immediately and forgiven gradually, which is what a balancer wants.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

pub struct PeakEwma {
    state: Mutex<State>,
}

struct State {
    /// Estimate in nanoseconds.
    estimate: f64,
    at: Instant,
}

impl PeakEwma {
    pub fn new(default_rtt: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                estimate: default_rtt.as_nanos() as f64,
                at: Instant::now(),
            }),
        }
    }

    pub fn observe(&self, rtt: Duration, decay: Duration) {
        let now = Instant::now();
        let rtt = rtt.as_nanos() as f64;
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if rtt > s.estimate {
            s.estimate = rtt;
        } else {
            let elapsed = now.saturating_duration_since(s.at).as_nanos() as f64;
            let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            s.estimate = s.estimate * w + rtt * (1.0 - w);
        }
        s.at = now;
    }

    /// Expected cost of sending one more request: latency × (outstanding + 1). The estimate
    /// also decays while no samples arrive, so an endpoint the balancer stopped choosing
    /// (after one slow answer) looks cheaper over time and is tried again.
    pub fn cost(&self, pending: usize, decay: Duration) -> f64 {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = Instant::now().saturating_duration_since(s.at).as_nanos() as f64;
        let w = (-idle / decay.as_nanos().max(1) as f64).exp();
        s.estimate * w * (pending as f64 + 1.0)
    }

    pub fn estimate(&self) -> Duration {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Duration::from_nanos(s.estimate as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peaks_at_once_and_decays_slowly() {
        let decay = Duration::from_secs(10);
        let e = PeakEwma::new(Duration::from_millis(30));
        e.observe(Duration::from_millis(300), decay);
        assert_eq!(e.estimate(), Duration::from_millis(300));
        // One decay period later a fast sample pulls it down by 1 - 1/e, not to the sample.
        tokio::time::advance(decay).await;
        e.observe(Duration::from_millis(10), decay);
        let est = e.estimate().as_secs_f64() * 1000.0;
        assert!(
            (est - (300.0 * 0.3679 + 10.0 * 0.6321)).abs() < 1.0,
            "{est}"
        );
        // Outstanding requests multiply the cost.
        assert!(e.cost(3, decay) > 3.9 * e.cost(0, decay));
        // An endpoint nobody samples any more gets cheaper with idle time.
        let before = e.cost(0, decay);
        tokio::time::advance(decay).await;
        assert!(e.cost(0, decay) < before * 0.4);
    }
}
