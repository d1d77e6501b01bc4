//! Getting and renewing the workload certificate from the mesh CA: a fresh key pair in memory
//! and a CSR for `spiffe://<trust-domain>/service/<name>` each time.
//!
//! The bootstrap token gets the first certificate; renewals (at 70 % of the lifetime, with a
//! fresh key) present the current certificate instead, so a short-lived token never limits how
//! long the sidecar stays in the mesh. If renewal fails the current certificate keeps serving
//! while retries back off; once it has expired only a token can get the sidecar back in, so
//! the bootstrap token (if still valid) is tried then.

use super::api::Api;
use super::backoff;
use crate::tls::identity::{Identity, Issued};
use prometheus::{IntCounterVec, IntGauge};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("making the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error(transparent)]
    Api(#[from] super::api::ApiError),
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
    pub(crate) fn for_holding(&self, held: Option<&Issued>, now: SystemTime) -> &Api {
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
    let signing = crate::tls::provider().key_provider.load_private_key(der)?;
    Ok(Issued {
        certified: Arc::new(CertifiedKey::new(chain, signing)),
        id: signed.identity,
        not_after: UNIX_EPOCH + Duration::from_secs(signed.not_after_unix),
        bundle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity::tests::issued;

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
    fn the_token_is_for_the_first_certificate_and_after_expiry_only() {
        let url: http::Uri = "http://127.0.0.1:1".parse().expect("uri");
        let renew = Api::plaintext(&url, None).expect("api");
        let token = super::super::secret::Secret::new("otb");
        let bootstrap = Api::plaintext_bootstrap(&url, &token).expect("api");
        let issuer = Issuer {
            bootstrap: Some(bootstrap),
            renew,
        };
        let now = SystemTime::now();
        let valid = issued("spiffe://td/service/a", now + Duration::from_secs(1));
        let expired = issued("spiffe://td/service/a", now);
        assert_eq!(
            issuer.for_holding(None, now).credential(),
            "bootstrap token"
        );
        assert_eq!(
            issuer.for_holding(Some(&valid), now).credential(),
            "no credential"
        );
        assert_eq!(
            issuer.for_holding(Some(&expired), now).credential(),
            "bootstrap token"
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
}
