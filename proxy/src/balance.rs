//! Endpoint choice: power of two choices over peak-EWMA cost (or round robin), skipping
//! ejected endpoints, sending an endpoint whose ejection is over its single probe, and on a
//! retry preferring any endpoint other than the one that just failed.

use crate::endpoint::outlier::Availability;
use crate::routing::EndpointTarget;
use outrigger_config::LoadBalancer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    /// This request is the probe that decides an ejected endpoint's return.
    pub probe: bool,
}

/// Picks an endpoint, preferring `version` when given (a canary split chose it) and any
/// endpoint but `avoid` (the one the previous attempt failed on). Falls back step by step:
/// other versions, then the avoided endpoint itself, rather than failing.
pub fn pick(
    endpoints: &[EndpointTarget],
    (lb, decay): (LoadBalancer, Duration),
    rr: &AtomicUsize,
    avoid: Option<usize>,
    version: Option<usize>,
) -> Option<Pick> {
    let now = Instant::now();
    // A retry takes no round-robin turn of its own: if it did, with two endpoints and one
    // failing, the failing one would get every first attempt (each failure's retry moving
    // the counter on by one more).
    let turn = Turn {
        rr,
        advance: avoid.is_none(),
    };
    if let Some(v) = version {
        let p = pick_among(endpoints, (lb, decay), &turn, now, |i, e| {
            Some(i) != avoid && e.version == v
        });
        if p.is_some() {
            return p;
        }
    }
    pick_among(endpoints, (lb, decay), &turn, now, |i, _| Some(i) != avoid)
        .or_else(|| avoid.and_then(|_| pick_among(endpoints, (lb, decay), &turn, now, |_, _| true)))
}

/// The round-robin counter, and whether this pick moves it on.
struct Turn<'a> {
    rr: &'a AtomicUsize,
    advance: bool,
}

impl Turn<'_> {
    fn next(&self) -> usize {
        if self.advance {
            self.rr.fetch_add(1, Ordering::Relaxed)
        } else {
            self.rr.load(Ordering::Relaxed)
        }
    }
}

fn pick_among(
    endpoints: &[EndpointTarget],
    (lb, decay): (LoadBalancer, Duration),
    turn: &Turn<'_>,
    now: Instant,
    allowed: impl Fn(usize, &EndpointTarget) -> bool,
) -> Option<Pick> {
    for (i, e) in endpoints.iter().enumerate() {
        if allowed(i, e)
            && e.state.outlier.availability(now) == Availability::ProbeDue
            && e.state.outlier.claim_probe()
        {
            return Some(Pick {
                index: i,
                probe: true,
            });
        }
    }
    let usable = |i: usize, e: &EndpointTarget| {
        allowed(i, e) && e.state.outlier.availability(now) == Availability::Available
    };
    let n = endpoints
        .iter()
        .enumerate()
        .filter(|(i, e)| usable(*i, e))
        .count();
    if n == 0 {
        return None;
    }
    // The k-th usable endpoint, without collecting them.
    let nth = |k: usize| {
        endpoints
            .iter()
            .enumerate()
            .filter(|(i, e)| usable(*i, e))
            .nth(k)
            .map(|(i, _)| i)
    };
    let index = match lb {
        LoadBalancer::RoundRobin => nth(turn.next() % n)?,
        LoadBalancer::P2cEwma if n == 1 => nth(0)?,
        LoadBalancer::P2cEwma => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            let cost = |i: usize| {
                let s = &endpoints[i].state;
                s.ewma.cost(s.pending(), decay)
            };
            if cost(a) <= cost(b) {
                a
            } else {
                b
            }
        }
    };
    Some(Pick {
        index,
        probe: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointState;
    use std::sync::Arc;
    use std::time::Duration;

    const DECAY: Duration = Duration::from_secs(10);

    fn endpoints(n: usize) -> Vec<EndpointTarget> {
        (0..n)
            .map(|i| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                EndpointTarget::new(
                    addr,
                    0,
                    Arc::new(EndpointState::new(addr, Duration::from_millis(30))),
                )
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_avoids_the_slow_endpoint() {
        let eps = endpoints(3);
        let decay = Duration::from_secs(10);
        eps[0].state.ewma.observe(Duration::from_millis(300), decay);
        eps[1].state.ewma.observe(Duration::from_millis(30), decay);
        eps[2].state.ewma.observe(Duration::from_millis(30), decay);
        let rr = AtomicUsize::new(0);
        let mut slow = 0;
        for _ in 0..3000 {
            if pick(&eps, (LoadBalancer::P2cEwma, DECAY), &rr, None, None).map(|p| p.index)
                == Some(0)
            {
                slow += 1;
            }
        }
        // P2C only picks the slow one when both choices are it: never with distinct choices.
        assert_eq!(slow, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_cycles_and_retries_prefer_another_endpoint() {
        let eps = endpoints(3);
        let rr = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                pick(&eps, (LoadBalancer::RoundRobin, DECAY), &rr, None, None).map(|p| p.index)
            })
            .collect();
        assert_eq!(
            picks,
            [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
        for _ in 0..100 {
            assert_ne!(
                pick(&eps, (LoadBalancer::P2cEwma, DECAY), &rr, Some(1), None).map(|p| p.index),
                Some(1)
            );
        }
        let one = endpoints(1);
        assert_eq!(
            pick(&one, (LoadBalancer::P2cEwma, DECAY), &rr, Some(0), None).map(|p| p.index),
            Some(0)
        );
        assert_eq!(
            pick(&[], (LoadBalancer::P2cEwma, DECAY), &rr, None, None),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_chosen_version_is_preferred_and_falls_back_when_empty() {
        let mut eps = endpoints(3);
        eps[2].version = 1;
        let rr = AtomicUsize::new(0);
        for _ in 0..50 {
            assert_eq!(
                pick(&eps, (LoadBalancer::P2cEwma, DECAY), &rr, None, Some(1)).map(|p| p.index),
                Some(2)
            );
            assert_ne!(
                pick(&eps, (LoadBalancer::P2cEwma, DECAY), &rr, None, Some(0)).map(|p| p.index),
                Some(2)
            );
        }
        // A retry avoiding the only v1 endpoint goes to another version rather than failing.
        assert_ne!(
            pick(&eps, (LoadBalancer::P2cEwma, DECAY), &rr, Some(2), Some(1)).map(|p| p.index),
            Some(2)
        );
        assert!(pick(&eps, (LoadBalancer::P2cEwma, DECAY), &rr, None, Some(7)).is_some());
    }
}
