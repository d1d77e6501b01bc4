//! What starts a shutdown (SIGTERM, SIGINT, or `POST /shutdown` on the admin port), and how a
//! sidecar leaves its callers before it drains.

use crate::lifecycle::Lifecycle;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

pub async fn requested(lifecycle: &Lifecycle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = sigterm => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = lifecycle.shutdown_requested() => tracing::info!("shutdown requested on the admin port"),
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = lifecycle.shutdown_requested() => {}
    }
}

/// How long a sidecar that left the registry keeps serving as before: the control plane pushes
/// the smaller endpoint set at once, and callers apply it well within this, so no new request
/// meets a listener that has stopped accepting.
pub const CALLERS_LEARN: Duration = Duration::from_secs(1);

/// The start of a shutdown, in the order callers need it: readiness drops, then the instance
/// leaves the registry (`deregister`, true if it was registered), then callers get
/// [`CALLERS_LEARN`] (no later than `deadline`) to stop picking it. Draining comes after.
pub async fn leave<F>(lifecycle: &Lifecycle, deregister: F, deadline: Instant)
where
    F: Future<Output = bool>,
{
    lifecycle.start_draining();
    if deregister.await {
        tokio::time::sleep_until((Instant::now() + CALLERS_LEARN).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn readiness_drops_before_deregistration_and_callers_get_time_to_learn() {
        let lifecycle = Lifecycle::new(None);
        let far = Instant::now() + Duration::from_secs(30);
        let draining_when_deregistered = AtomicBool::new(false);
        let start = Instant::now();
        leave(
            &lifecycle,
            async {
                draining_when_deregistered.store(lifecycle.is_draining(), Ordering::SeqCst);
                true
            },
            far,
        )
        .await;
        assert!(
            draining_when_deregistered.load(Ordering::SeqCst),
            "readiness must drop before the instance leaves the registry"
        );
        assert_eq!(start.elapsed(), CALLERS_LEARN);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unregistered_sidecar_drains_at_once_and_the_deadline_caps_the_wait() {
        let lifecycle = Lifecycle::new(None);
        let start = Instant::now();
        leave(&lifecycle, async { false }, start + Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(lifecycle.is_draining());

        let start = Instant::now();
        let short = Duration::from_millis(300);
        leave(&lifecycle, async { true }, start + short).await;
        assert_eq!(start.elapsed(), short);
    }
}
