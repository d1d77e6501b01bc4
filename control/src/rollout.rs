//! Root rotation's second half: a new root waits in the trust bundle until every connected
//! sidecar has acknowledged a snapshot whose bundle holds it, and only then signs. A sidecar
//! is never handed a peer certificate from a root it does not trust yet. Sidecars that are
//! not connected are not waited for: they get the new bundle on their stream when they come
//! back, and meanwhile the control plane's own certificate comes from the oldest root, which
//! they still trust.

use crate::push::{Sidecars, Trust};
use crate::state::Handle;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A fallback for wake-ups: ACKs, connects and new views wake the task at once.
const RECHECK: Duration = Duration::from_secs(1);

/// The connected sidecars that do not trust the pending root yet.
pub fn lagging(trust: &[Trust]) -> Vec<&Trust> {
    trust
        .iter()
        .filter(|t| t.connected && !t.trusts_pending)
        .collect()
}

/// Activates a pending root as soon as no connected sidecar lags; runs until shutdown.
pub async fn run(state: Handle, sidecars: Arc<Sidecars>, mut shutdown: watch::Receiver<bool>) {
    let mut views = state.subscribe();
    loop {
        let changed = sidecars.changed.notified();
        tokio::pin!(changed);
        // Registered before the check, so a change during it is not missed.
        changed.as_mut().enable();
        if let Ok(ca) = state.ca_state().await {
            if let Some((id, pem)) = ca.pending {
                let trust = sidecars.trust(&pem);
                let lag = lagging(&trust);
                if lag.is_empty() {
                    match state.activate(id.clone()).await {
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(root = %id, error = %e, "cannot activate the new root")
                        }
                    }
                } else {
                    tracing::debug!(root = %id, lagging = lag.len(), "new root waits for sidecars to trust it");
                }
            }
        }
        tokio::select! {
            _ = changed => {}
            r = views.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RECHECK) => {}
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, connected: bool, trusts: bool) -> Trust {
        Trust {
            id: id.into(),
            service: "payment".into(),
            connected,
            acked_version: Some(1),
            trusts_pending: trusts,
        }
    }

    #[test]
    fn only_connected_sidecars_that_do_not_trust_the_root_lag() {
        let all = [
            t("a", true, true),
            t("b", true, false),
            t("c", false, false),
        ];
        let ids: Vec<&str> = lagging(&all).iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["b"]);
        assert!(lagging(&[t("a", true, true), t("c", false, false)]).is_empty());
    }
}
