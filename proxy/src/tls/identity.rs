//! The workload identity: a key pair made in memory (never written, never logged), a CSR for
//! `spiffe://<trust-domain>/service/<name>`, and the certificate the mesh CA signs for it.
//!
//! The bootstrap token gets the first certificate; renewals (at 70 % of the lifetime, with a
//! fresh key) present the current certificate instead, so a short-lived token never limits how
//! long the sidecar stays in the mesh. If renewal fails the current certificate keeps serving
//! while retries back off; once it has expired only a token can get the sidecar back in, so
//! the bootstrap token (if still valid) is tried then. Handshakes read the current certificate
//! each time, so new connections pick up a renewal at once; the rest of the process learns of
//! it from [`Identity::subscribe`].

use crate::control_plane::api::Api;
use crate::control_plane::backoff;
use arc_swap::ArcSwapOption;
use prometheus::{IntCounterVec, IntGauge};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use serde::Deserialize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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

    fn failed(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

/// Presents the identity's current certificate as a TLS client (to the control plane).
#[derive(Debug)]
pub struct PresentCurrent(pub Arc<Identity>);

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

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("making the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error(transparent)]
    Api(#[from] crate::control_plane::api::ApiError),
    #[error("the CA's answer: {0}")]
    Answer(String),
    #[error("loading the key into rustls: {0}")]
    Key(#[from] rustls::Error),
}

/// The clients certificates are requested over.
pub struct Issuer {
    /// Carries the bootstrap token: for the first certificate, and after one has expired.
    pub bootstrap: Option<Api>,
    /// While a certificate is valid (over mTLS with it, or the operator token in dev mode).
    pub renew: Api,
}

impl Issuer {
    /// A valid certificate renews itself; the token is for getting in, or back in.
    fn for_holding(&self, held: Option<&Issued>, now: SystemTime) -> &Api {
        match (held, &self.bootstrap) {
            (Some(c), _) if c.not_after > now => &self.renew,
            (_, Some(bootstrap)) => bootstrap,
            (_, None) => &self.renew,
        }
    }
}

/// The metrics renewal keeps.
pub struct RenewalMetrics {
    pub expiry: IntGauge,
    pub renewals: IntCounterVec,
}

#[derive(Deserialize)]
struct Signed {
    certificate_chain: String,
    #[serde(default)]
    trust_bundle: Vec<String>,
    identity: String,
    not_after_unix: u64,
}

/// Keeps `identity` supplied with a valid certificate for `id`, forever.
pub fn spawn(identity: Arc<Identity>, issuer: Issuer, id: String, metrics: RenewalMetrics) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        // The expiry already warned about, so the log says it once per certificate.
        let mut warned: Option<SystemTime> = None;
        loop {
            let held = identity.current();
            let now = SystemTime::now();
            let expired = held.as_ref().filter(|c| c.not_after <= now);
            if let Some(c) = expired {
                if warned != Some(c.not_after) {
                    warned = Some(c.not_after);
                    tracing::warn!(
                        expired_at = %humantime::format_rfc3339_seconds(c.not_after),
                        "the workload certificate has expired; not ready (and peers refuse it) until a renewal succeeds"
                    );
                }
            }
            let api = issuer.for_holding(held.as_deref(), now);
            match request(api, &id).await {
                Ok(issued) => {
                    failures = 0;
                    let lifetime = issued
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    let expiry = issued
                        .not_after
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    metrics.expiry.set(expiry as i64);
                    metrics.renewals.with_label_values(&["ok"]).inc();
                    tracing::info!(identity = %issued.id, lifetime_s = lifetime.as_secs(), via = api.credential(), "workload certificate issued");
                    identity.publish(issued);
                    // A certificate issued already (nearly) expired, as with a skewed clock,
                    // must not turn this loop into a busy one.
                    tokio::time::sleep(renew_after(lifetime).max(Duration::from_secs(1))).await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    metrics.renewals.with_label_values(&["error"]).inc();
                    if held.is_some() {
                        tracing::warn!(error = %e, via = api.credential(), "could not renew the workload certificate; keeping the current one and retrying");
                    } else {
                        tracing::warn!(error = %e, via = api.credential(), "could not get a workload certificate; retrying");
                    }
                    identity.failed(e.to_string());
                    let mut wait = backoff(failures);
                    // Wake at the expiry, so the warning above comes on time.
                    if let Some(left) = held.as_ref().and_then(|c| {
                        c.not_after
                            .duration_since(SystemTime::now())
                            .ok()
                            .filter(|d| !d.is_zero())
                    }) {
                        wait = wait.min(left);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
}

/// When to renew a certificate that has `lifetime` left: at 70 % of it, leaving the other
/// 30 % for retries if the CA is away.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.7)
}

async fn request(ca: &Api, id: &str) -> Result<Issued, IdentityError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let body = serde_json::json!({ "csr": csr });
    let bytes = ca
        .call(http::Method::POST, "/v1/identity/certificates", Some(&body))
        .await?;
    let signed: Signed =
        serde_json::from_slice(&bytes).map_err(|e| IdentityError::Answer(e.to_string()))?;
    if signed.identity != id {
        return Err(IdentityError::Answer(format!(
            "issued for {}, asked for {id}",
            signed.identity
        )));
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(signed.certificate_chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| IdentityError::Answer(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(IdentityError::Answer("no certificate in the chain".into()));
    }
    let mut bundle = Vec::new();
    for pem in &signed.trust_bundle {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            bundle.push(c.map_err(|e| IdentityError::Answer(format!("trust bundle: {e}")))?);
        }
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = super::provider().key_provider.load_private_key(der)?;
    Ok(Issued {
        certified: Arc::new(CertifiedKey::new(chain, signing)),
        id: signed.identity,
        not_after: UNIX_EPOCH + Duration::from_secs(signed.not_after_unix),
        bundle,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    #[tokio::test(start_paused = true)]
    async fn renewal_comes_at_seventy_percent_of_the_lifetime() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(renew_after(day), Duration::from_secs(60_480));
        assert_eq!(renew_after(Duration::from_secs(10)), Duration::from_secs(7));
        // Under paused time the schedule is exact: nothing before 70 %, renewal right at it.
        let start = tokio::time::Instant::now();
        let renewal = tokio::time::sleep(renew_after(Duration::from_secs(100)));
        tokio::pin!(renewal);
        assert!(tokio::time::timeout(Duration::from_secs(69), &mut renewal)
            .await
            .is_err());
        renewal.await;
        assert_eq!(start.elapsed(), Duration::from_secs(70));
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

    #[test]
    fn the_token_is_for_the_first_certificate_and_after_expiry_only() {
        let url: http::Uri = "http://127.0.0.1:1".parse().expect("uri");
        let renew = Api::plaintext(&url, None).expect("api");
        let token = crate::control_plane::secret::Secret::new("otb");
        let bootstrap = Api::plaintext(&url, Some(&token)).expect("api");
        let issuer = Issuer {
            bootstrap: Some(bootstrap),
            renew,
        };
        let now = SystemTime::now();
        let valid = issued("spiffe://td/service/a", now + Duration::from_secs(1));
        let expired = issued("spiffe://td/service/a", now);
        assert_eq!(issuer.for_holding(None, now).credential(), "token");
        assert_eq!(
            issuer.for_holding(Some(&valid), now).credential(),
            "no credential"
        );
        assert_eq!(
            issuer.for_holding(Some(&expired), now).credential(),
            "token"
        );
        // Without a token (dev mode) there is only the one client.
        let dev = Issuer {
            bootstrap: None,
            renew: Api::plaintext(&url, None).expect("api"),
        };
        assert_eq!(
            dev.for_holding(Some(&expired), now).credential(),
            "no credential"
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
