//! The sidecar's side of the control plane: subscribing to its service's snapshots (applying
//! or rejecting each, and saying which with an ACK or NACK), and registering its own instance
//! with heartbeats. Both reconnect on their own with capped, jittered backoff, and a control
//! plane outage never touches the snapshot being served. The channel itself is TLS, verified
//! against the operator's trust anchors ([`trust`]), authenticated by the workload certificate
//! ([`api`]); [`channel`] decides that from the flags.

pub mod advertise;
pub mod api;
pub mod channel;
pub mod push_stream;
pub mod register;
pub mod renew;
pub mod secret;
pub mod subscribe;
pub mod trust;

use crate::tls::identity::Identity;
use api::{Api, ApiError};
use channel::Channel;
use renew::Issuer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use trust::Trust;

/// Where the control plane is and who this sidecar is.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Base URL, e.g. `https://127.0.0.1:15010`.
    pub url: http::Uri,
    pub service: String,
    pub version: String,
    pub sidecar_id: String,
    /// How the channel is secured, and the credentials (whose `Debug` is redacted).
    pub channel: Channel,
    /// The local app, filled into every snapshot's inbound side (a DNS name is resolved like
    /// an endpoint's).
    pub app: Option<outrigger_config::snapshot::EndpointAddress>,
    /// The address other sidecars reach this one on; `None` = do not register.
    pub advertise: Option<SocketAddr>,
    /// The admin listener as told to the control plane (see [`reported_admin`]).
    pub admin: Option<SocketAddr>,
    pub trust_domain: String,
}

/// The clients of the control channel, built once at start.
pub struct Connection {
    /// The stream, ACK/NACK, registration, heartbeats and deregistration.
    pub api: Api,
    /// The roots the channel trusts (TLS only); applied snapshots extend them.
    pub trust: Option<Arc<Trust>>,
    /// With a bootstrap token the sidecar joins the mesh's mTLS: its identity (it is not ready
    /// without a certificate) and where certificates come from.
    pub identity: Option<(Arc<Identity>, Issuer)>,
}

impl ControlPlane {
    pub fn connect(&self) -> Result<Connection, ApiError> {
        match &self.channel {
            Channel::Tls {
                anchors,
                bootstrap_token,
            } => {
                let trust = Arc::new(
                    Trust::new(anchors.clone()).map_err(|e| ApiError::Tls(e.to_string()))?,
                );
                let identity = Arc::new(Identity::default());
                let api = Api::workload(&self.url, trust.clone(), identity.clone())?;
                let issuer = Issuer {
                    bootstrap: Some(Api::bootstrap(&self.url, trust.clone(), bootstrap_token)?),
                    renew: api.clone(),
                };
                Ok(Connection {
                    api,
                    trust: Some(trust),
                    identity: Some((identity, issuer)),
                })
            }
            Channel::Plaintext {
                operator_token,
                bootstrap_token,
            } => {
                let api = Api::plaintext(&self.url, operator_token.as_ref())?;
                let operator = operator_token.as_ref().map(|_| &api);
                let identity = dev_issuer(&self.url, operator, bootstrap_token.as_ref())?
                    .map(|issuer| (Arc::new(Identity::default()), issuer));
                Ok(Connection {
                    api,
                    trust: None,
                    identity,
                })
            }
        }
    }
}

/// Where certificates come from in `--insecure-dev-plaintext` mode, given the client that
/// carries the operator token (if one was given) and the bootstrap token (likewise). Without
/// TLS there is no client certificate to renew with, so a held certificate renews with the
/// operator token if there is one, else with the bootstrap token again. A sidecar with only an
/// operator token gets every certificate with it (the control plane signs any service's CSR
/// for an admin), so a dev sidecar in a strict mesh holds a certificate before it is ready, as
/// an https one does, instead of being ready while its peers refuse it. With neither token
/// nothing could get a certificate (or the snapshot), and the sidecar runs without an identity.
fn dev_issuer(
    url: &http::Uri,
    operator: Option<&Api>,
    bootstrap_token: Option<&secret::Secret>,
) -> Result<Option<Issuer>, ApiError> {
    Ok(match (bootstrap_token, operator) {
        (Some(token), _) => {
            let bootstrap = Api::plaintext_bootstrap(url, token)?;
            Some(Issuer {
                renew: operator.unwrap_or(&bootstrap).clone(),
                bootstrap: Some(bootstrap),
            })
        }
        (None, Some(operator)) => Some(Issuer {
            bootstrap: None,
            renew: operator.clone(),
        }),
        (None, None) => None,
    })
}

/// The admin address to tell the control plane: the bound one, except that an unspecified IP
/// (`0.0.0.0`) is no place to connect to, so the advertised IP (or loopback) stands in.
pub fn reported_admin(bound: SocketAddr, advertise: Option<SocketAddr>) -> SocketAddr {
    let mut a = bound;
    if a.ip().is_unspecified() {
        a.set_ip(
            advertise
                .map(|x| x.ip())
                .filter(|ip| !ip.is_unspecified())
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        );
    }
    a
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
    fn the_reported_admin_address_is_one_to_connect_to() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert_eq!(
            reported_admin(a("127.0.0.1:15000"), None),
            a("127.0.0.1:15000")
        );
        assert_eq!(
            reported_admin(a("0.0.0.0:15000"), None),
            a("127.0.0.1:15000")
        );
        assert_eq!(
            reported_admin(a("0.0.0.0:15000"), Some(a("10.1.2.3:15006"))),
            a("10.1.2.3:15000")
        );
        assert_eq!(
            reported_admin(a("10.9.9.9:15000"), Some(a("10.1.2.3:15006"))),
            a("10.9.9.9:15000")
        );
    }

    #[test]
    fn a_dev_sidecar_gets_its_certificates_with_whatever_token_it_has() {
        use crate::tls::identity::tests::issued;
        use secret::Secret;
        use std::time::SystemTime;
        let url: http::Uri = "http://127.0.0.1:1".parse().expect("uri");
        let (admin, otb) = (Secret::new("admin"), Secret::new("otb"));
        let operator = Api::plaintext(&url, Some(&admin)).expect("api");
        let now = SystemTime::now();
        let valid = issued("spiffe://td/service/a", now + Duration::from_secs(60));
        let expired = issued("spiffe://td/service/a", now);
        // The credential for: no certificate yet, a valid one, an expired one.
        let via = |issuer: Option<Issuer>| {
            let issuer = issuer.expect("the sidecar gets an identity");
            [None, Some(&valid), Some(&expired)]
                .map(|held| issuer.for_holding(held, now).credential())
        };

        // Only the operator token: it gets every certificate, so the sidecar is not ready
        // without one (rather than ready and refused by strict peers).
        let only_operator = dev_issuer(&url, Some(&operator), None).expect("issuer");
        assert_eq!(via(only_operator), ["operator token"; 3]);
        // A bootstrap token gets in (and back in after an expiry); the operator token renews.
        let both = dev_issuer(&url, Some(&operator), Some(&otb)).expect("issuer");
        assert_eq!(
            via(both),
            ["bootstrap token", "operator token", "bootstrap token"]
        );
        // Only a bootstrap token: nothing else to renew with.
        let only_bootstrap = dev_issuer(&url, None, Some(&otb)).expect("issuer");
        assert_eq!(via(only_bootstrap), ["bootstrap token"; 3]);
        // Neither: no way to a certificate, no identity.
        assert!(dev_issuer(&url, None, None).expect("issuer").is_none());

        // connect() follows it: an operator-token-only dev sidecar has an identity to wait for.
        let cp = ControlPlane {
            url: url.clone(),
            service: "a".into(),
            version: "v1".into(),
            sidecar_id: "a-1".into(),
            channel: Channel::Plaintext {
                operator_token: Some(admin),
                bootstrap_token: None,
            },
            app: None,
            advertise: None,
            admin: None,
            trust_domain: "td".into(),
        };
        let connection = cp.connect().expect("connect");
        assert_eq!(connection.api.credential(), "operator token");
        let (_, issuer) = connection.identity.expect("an identity");
        assert!(issuer.bootstrap.is_none());
        assert_eq!(issuer.renew.credential(), "operator token");
    }

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
