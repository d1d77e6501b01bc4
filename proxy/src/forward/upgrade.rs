//! HTTP/1.1 `Upgrade` tunnels (WebSocket): once both sides have switched protocols, bytes are
//! copied in both directions until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

pub fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (d, u) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
        if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
            tracing::debug!(error = %e, "upgraded tunnel closed with an error");
        }
    });
}
