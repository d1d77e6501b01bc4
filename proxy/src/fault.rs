//! Fault injection per route: delay some requests, abort some with a status. For tests,
//! demos and game days; injected faults are counted and marked `x-outrigger-error:
//! fault-injected`.

use outrigger_config::Fault;
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

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::{FaultAbort, FaultDelay};

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
