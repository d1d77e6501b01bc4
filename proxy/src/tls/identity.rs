//! The workload identity: a key pair made in memory (never written, never logged), a CSR for
//! `spiffe://<trust-domain>/service/<name>`, and the certificate the mesh CA signs for it with
//! the bootstrap token. Renewed at 70 % of its lifetime with a fresh key; if renewal fails the
//! current certificate keeps serving while retries back off, and a metric says so. Handshakes
//! read the current certificate each time, so new connections pick up a renewal at once.

use crate::control_plane::api::Api;
use crate::state::Shared;
use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The certificate in force.
pub struct Issued {
    pub certified: Arc<CertifiedKey>,
    pub id: String,
    pub not_after: SystemTime,
    /// The CA's roots as it answered; the pushed snapshot's bundle takes precedence.
    pub bundle: Vec<CertificateDer<'static>>,
}

#[derive(Default)]
pub struct Identity {
    current: ArcSwapOption<Issued>,
}

impl Identity {
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.current.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
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

#[derive(Deserialize)]
struct Signed {
    certificate_chain: String,
    #[serde(default)]
    trust_bundle: Vec<String>,
    identity: String,
    not_after_unix: u64,
}

/// Keeps `identity` supplied with a valid certificate, forever.
pub fn spawn(
    identity: Arc<Identity>,
    ca: Api,
    service: String,
    trust_domain: String,
    shared: Arc<Shared>,
) {
    tokio::spawn(async move {
        let id = outrigger_config::identity(&trust_domain, &service);
        let mut failures = 0u32;
        loop {
            match request(&ca, &id).await {
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
                    shared.metrics.identity_expiry.set(expiry as i64);
                    shared
                        .metrics
                        .identity_renewals
                        .with_label_values(&["ok"])
                        .inc();
                    tracing::info!(identity = %issued.id, lifetime_s = lifetime.as_secs(), "workload certificate issued");
                    identity.current.store(Some(Arc::new(issued)));
                    shared.recompile();
                    tokio::time::sleep(renew_after(lifetime)).await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    shared
                        .metrics
                        .identity_renewals
                        .with_label_values(&["error"])
                        .inc();
                    tracing::warn!(error = %e, "could not get a workload certificate; keeping the current one and retrying");
                    tokio::time::sleep(crate::control_plane::backoff(failures)).await;
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
mod tests {
    use super::*;

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
}
