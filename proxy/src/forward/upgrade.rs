//! HTTP/1.1 `Upgrade` tunnels (WebSocket): once both sides have switched protocols, bytes are
//! copied in both directions until both sides close, or nothing moves for the tunnel idle
//! timeout.

use crate::peer::TunnelHold;
use crate::tunnel::{copy_until_idle, Ended};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// `idled` counts a tunnel closed for idleness. `hold` keeps the client's connection counted
/// (its slot, the listener's drain) until the tunnel ends.
pub fn tunnel(
    (downstream, hold): (OnUpgrade, TunnelHold),
    upstream: OnUpgrade,
    idle: Duration,
    idled: prometheus::IntCounter,
) {
    tokio::spawn(async move {
        let _hold = hold;
        let (d, u) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
        match copy_until_idle(&mut d, &mut u, idle).await {
            Ended::Done(..) => {}
            Ended::Idle => idled.inc(),
            Ended::Failed(e) => tracing::debug!(error = %e, "upgraded tunnel closed with an error"),
        }
    });
}
