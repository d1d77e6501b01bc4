//! The sidecar's side of the control plane: subscribing to its service's snapshots (applying
//! or rejecting each, and saying which with an ACK or NACK), and registering its own instance
//! with heartbeats. Both reconnect on their own with capped, jittered backoff, and a control
//! plane outage never touches the snapshot being served.

pub mod api;
pub mod register;
pub mod subscribe;

use std::net::SocketAddr;
use std::time::Duration;

/// Where the control plane is and who this sidecar is.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Base URL, e.g. `http://127.0.0.1:15010`.
    pub url: http::Uri,
    pub service: String,
    pub version: String,
    pub sidecar_id: String,
    /// Bearer token for writes (acks, registration). Never logged.
    pub token: Option<String>,
    /// The local app, filled into every snapshot's inbound side.
    pub app: Option<SocketAddr>,
    /// The address other sidecars reach this one on; `None` = do not register.
    pub advertise: Option<SocketAddr>,
    /// Proves to the mesh CA which service this sidecar may get a certificate for; with it
    /// the sidecar joins the mesh's mTLS. Never logged.
    pub bootstrap_token: Option<String>,
    pub trust_domain: String,
}

/// Exponential backoff with full jitter, capped: the pattern for every reconnect here.
pub(crate) fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100);
    let cap = Duration::from_secs(5);
    let ceiling = base.saturating_mul(1u32 << failures.min(6)).min(cap);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(ms / 2 + fastrand::u64(..=ms / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for f in 0..20 {
            let d = backoff(f);
            assert!(d <= Duration::from_secs(5));
            assert!(d >= Duration::from_millis(50));
        }
        assert!(backoff(0) <= Duration::from_millis(100));
        assert!(backoff(10) >= Duration::from_millis(2500));
    }
}
