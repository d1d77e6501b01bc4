//! The workload identity held: the certificate in force and its key (made in memory, never
//! written, never logged), whether it is missing, valid or expired, and the resolver that
//! presents it on every handshake, so new connections pick up a renewal at once; the rest of
//! the process learns of it from [`Identity::subscribe`]. Getting and renewing it from the
//! mesh CA is `control_plane::renew`'s job.

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::sync::watch;

/// The certificate in force.
pub struct Issued {
    pub certified: Arc<CertifiedKey>,
    pub id: String,
    pub not_after: SystemTime,
    /// The CA's roots as it answered; the pushed snapshot's bundle takes precedence.
    pub bundle: Vec<CertificateDer<'static>>,
}

/// Where the certificate stands, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    /// None issued yet; `error` is why the last attempt failed.
    Missing {
        error: Option<String>,
    },
    Valid,
    Expired {
        at: SystemTime,
        error: Option<String>,
    },
}

pub struct Identity {
    /// Read on every handshake: lock-free.
    current: ArcSwapOption<Issued>,
    /// Tells the rest of the process about each new certificate.
    published: watch::Sender<Option<Arc<Issued>>>,
    /// Why the last request for a certificate failed; cleared by a success.
    last_error: Mutex<Option<String>>,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            published: watch::channel(None).0,
            last_error: Mutex::new(None),
        }
    }
}

impl Identity {
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.current.load_full()
    }

    /// A certificate is held (it may have expired: see [`Identity::status`]).
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn status(&self, now: SystemTime) -> CertStatus {
        let error = || {
            self.last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        match self.current.load().as_ref() {
            None => CertStatus::Missing { error: error() },
            Some(c) if c.not_after <= now => CertStatus::Expired {
                at: c.not_after,
                error: error(),
            },
            Some(_) => CertStatus::Valid,
        }
    }

    /// Sees every certificate from now on (the current one counts as seen).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Issued>>> {
        self.published.subscribe()
    }

    /// Returns once a certificate is held: the calls that must present one wait here instead
    /// of failing until the first certificate arrives.
    pub async fn held(&self) {
        let mut rx = self.subscribe();
        // The sender lives in `self`, so this cannot see it dropped.
        let _ = rx.wait_for(Option::is_some).await;
    }

    pub(crate) fn publish(&self, issued: Issued) {
        let issued = Arc::new(issued);
        self.current.store(Some(issued.clone()));
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.published.send_replace(Some(issued));
    }

    pub(crate) fn failed(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

/// Presents whatever certificate the identity holds right now, on every handshake: as a
/// client (to the control plane and peer sidecars) and as a server (inbound mTLS), so a
/// renewal needs no configuration rebuilt.
#[derive(Debug)]
pub struct PresentCurrent(pub Arc<Identity>);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity")
    }
}

impl rustls::server::ResolvesServerCert for PresentCurrent {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|i| i.certified.clone())
    }
}

impl ResolvesClientCert for PresentCurrent {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|i| i.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.is_ready()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::time::Duration;

    /// A self-signed certificate for `id` ending at `not_after`, as if issued.
    pub(crate) fn issued(id: &str, not_after: SystemTime) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
        let cert = params.self_signed(&key).expect("cert");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .expect("key");
        Issued {
            certified: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
            id: id.into(),
            not_after,
            bundle: Vec::new(),
        }
    }

    #[test]
    fn status_tells_missing_valid_and_expired_apart() {
        let id = Identity::default();
        let now = SystemTime::now();
        assert_eq!(id.status(now), CertStatus::Missing { error: None });
        id.failed("refused".into());
        assert_eq!(
            id.status(now),
            CertStatus::Missing {
                error: Some("refused".into())
            }
        );
        let end = now + Duration::from_secs(60);
        id.publish(issued("spiffe://td/service/a", end));
        assert_eq!(id.status(now), CertStatus::Valid);
        id.failed("CA away".into());
        assert_eq!(
            id.status(end),
            CertStatus::Expired {
                at: end,
                error: Some("CA away".into())
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_when_the_first_certificate_is_published() {
        let id = Arc::new(Identity::default());
        let mut renewals = id.subscribe();
        let waiter = tokio::spawn({
            let id = id.clone();
            async move { id.held().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        id.publish(issued(
            "spiffe://td/service/a",
            SystemTime::now() + Duration::from_secs(60),
        ));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("task");
        tokio::time::timeout(Duration::from_secs(1), renewals.changed())
            .await
            .expect("renewal published")
            .expect("sender alive");
        assert!(renewals.borrow_and_update().is_some());
        // Already held: returns at once.
        tokio::time::timeout(Duration::from_millis(1), id.held())
            .await
            .expect("held");
    }
}
