//! Fault injection per route: delay some requests, abort some with a status. For tests,
//! demos and game days; injected faults are counted and marked `x-outrigger-error:
//! fault-injected`.

use crate::error::ProxyError;
use outrigger_config::Fault;
use prometheus::IntCounter;
use std::time::Duration;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Roll {
    pub delay: Option<Duration>,
    pub abort: Option<http::StatusCode>,
}

fn hit(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}

pub fn roll(f: &Fault) -> Roll {
    Roll {
        delay: f
            .delay
            .as_ref()
            .filter(|d| hit(d.percent))
            .map(|d| d.duration),
        abort: f
            .abort
            .as_ref()
            .filter(|a| hit(a.percent))
            .and_then(|a| http::StatusCode::from_u16(a.status).ok()),
    }
}

/// The fault step: delays and aborts as the route's fault section asks, counting each.
pub async fn inject(
    fault: Option<&Fault>,
    delays: &IntCounter,
    aborts: &IntCounter,
) -> Result<(), ProxyError> {
    let Some(f) = fault else {
        return Ok(());
    };
    let roll = roll(f);
    if let Some(d) = roll.delay {
        delays.inc();
        tokio::time::sleep(d).await;
    }
    match roll.abort {
        Some(status) => {
            aborts.inc();
            Err(ProxyError::FaultInjected(status.as_u16()))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::{FaultAbort, FaultDelay};

    #[tokio::test(start_paused = true)]
    async fn the_step_delays_then_aborts_and_counts_both() {
        let f = Fault {
            delay: Some(FaultDelay {
                percent: 100.0,
                duration: Duration::from_millis(300),
            }),
            abort: Some(FaultAbort {
                percent: 100.0,
                status: 418,
            }),
        };
        let c = |n: &str| IntCounter::new(n, n).expect("counter");
        let (delays, aborts) = (c("delays"), c("aborts"));
        let start = tokio::time::Instant::now();
        assert_eq!(
            inject(Some(&f), &delays, &aborts).await,
            Err(ProxyError::FaultInjected(418))
        );
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!((delays.get(), aborts.get()), (1, 1));
        assert_eq!(inject(None, &delays, &aborts).await, Ok(()));
    }

    #[test]
    fn percentages_hold() {
        let f = Fault {
            delay: Some(FaultDelay {
                percent: 100.0,
                duration: Duration::from_millis(5),
            }),
            abort: Some(FaultAbort {
                percent: 25.0,
                status: 503,
            }),
        };
        let aborted = (0..10_000).filter(|_| roll(&f).abort.is_some()).count();
        assert!((2200..2800).contains(&aborted), "{aborted}");
        assert_eq!(roll(&f).delay, Some(Duration::from_millis(5)));
        let none = Fault {
            delay: Some(FaultDelay {
                percent: 0.0,
                duration: Duration::from_secs(1),
            }),
            abort: None,
        };
        assert!((0..1000).all(|_| roll(&none) == Roll::default()));
    }
}
