//! The control plane's own TLS: it serves its API and push streams over HTTPS with a
//! certificate from the mesh CA (its SPIFFE id plus the names clients dial), asks every client
//! for a certificate without requiring one, and tells a verified workload certificate's
//! service to the API. It also writes the trust bundle to a file, which is what the operator
//! hands out as the trust anchors.
//!
//! The serving configuration is rebuilt when the bundle changes (new client roots, and the
//! serving certificate re-issued from the oldest root) and before the certificate reaches 70 %
//! of its lifetime; each handshake takes the configuration current at accept time.

mod tickets;

pub use tickets::{TicketError, TicketSecret};

use crate::ca::control_plane_identity;
use crate::state::Handle;
use arc_swap::ArcSwap;
use rcgen::{KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Of the serving certificate; it is re-issued well before, and on every bundle change.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// After a failed re-issue.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("session tickets: {0}")]
    Tickets(#[from] TicketError),
    #[error("the trust bundle has no usable root")]
    EmptyBundle,
    #[error("--server-name {0:?}: not a DNS name or IP address")]
    BadName(String),
    #[error("writing the trust bundle to {path}: {source}")]
    Bundle {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The names the serving certificate carries besides its SPIFFE id.
pub fn server_names(names: &[String]) -> Result<Vec<SanType>, TlsError> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            // rustls's own rule for a name a client can dial.
            Err(_) => rustls::pki_types::DnsName::try_from(n.as_str())
                .ok()
                .and_then(|_| n.as_str().try_into().ok())
                .map(SanType::DnsName)
                .ok_or_else(|| TlsError::BadName(n.clone())),
        })
        .collect()
}

/// The names to serve under when the operator gives none: loopback, and the listen IP.
pub fn default_names(listen: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !listen.is_unspecified() && !listen.is_loopback() {
        names.push(listen.to_string());
    }
    names
}

/// The serving configuration in force.
pub struct ServerTls {
    config: ArcSwap<ServerConfig>,
}

impl ServerTls {
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }
}

/// The service a verified client certificate names (`spiffe://<td>/service/<name>`), while
/// the certificate is within its validity period. A resumed session brings back the
/// certificate of the handshake it resumes without verifying it again, so its expiry is
/// checked here, on every connection.
pub fn workload_service(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if !parsed.validity().is_valid() {
        return None;
    }
    let san = parsed.subject_alternative_name().ok()??;
    let prefix = outrigger_config::identity(trust_domain, "");
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u
            .strip_prefix(&prefix)
            .filter(|s| !s.is_empty() && !s.contains('/'))
            .map(str::to_string),
        _ => None,
    })
}

/// The one serving certificate of a configuration (a new one means a new configuration).
#[derive(Debug)]
struct Serving(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Serving {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn roots(bundle: &[String]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for pem in bundle {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            let _ = store.add(cert);
        }
    }
    if store.is_empty() {
        return Err(TlsError::EmptyBundle);
    }
    Ok(Arc::new(store))
}

fn build(
    bundle: &[String],
    key: Arc<CertifiedKey>,
    secret: &TicketSecret,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Operators' CLIs come without a certificate; sidecars present theirs.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(bundle)?, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Serving(key)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ticketer = Arc::new(tickets::Tickets::new(secret, bundle));
    Ok(Arc::new(cfg))
}

/// A fresh key and its certificate from the CA; also when to renew it.
async fn issue(
    state: &Handle,
    names: &[SanType],
) -> Result<(Arc<CertifiedKey>, Duration), TlsError> {
    let key = KeyPair::generate()?;
    let (key, leaf) = state
        .server_certificate(key, names.to_vec(), SERVER_CERT_LIFETIME)
        .await?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| rustls::Error::General(format!("the issued certificate: {e}")))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)?;
    let left = (UNIX_EPOCH + Duration::from_secs(leaf.not_after_unix))
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Ok((
        Arc::new(CertifiedKey::new(chain, signing)),
        left.mul_f64(0.7),
    ))
}

/// Writes the bundle where operators pick it up, replacing the file in one step so a reader
/// never sees half of it.
pub fn write_bundle(path: &Path, bundle: &[String]) -> Result<(), TlsError> {
    let err = |source| TlsError::Bundle {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    for pem in bundle {
        text.push_str(pem.trim_end());
        text.push('\n');
    }
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Issues the first serving certificate, writes the bundle, and keeps both current until
/// shutdown. `None` for `names` means no TLS (the development flag): only the bundle file.
pub async fn start(
    state: Handle,
    names: Option<Vec<SanType>>,
    bundle_file: PathBuf,
    secret: TicketSecret,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Arc<ServerTls>>, TlsError> {
    let mut views = state.subscribe();
    let mut bundle = views.borrow_and_update().mtls.trust_bundle.clone();
    write_bundle(&bundle_file, &bundle)?;
    let Some(names) = names else {
        tokio::spawn(keep_bundle_file(views, bundle, bundle_file, shutdown));
        return Ok(None);
    };
    let (key, mut renew_in) = issue(&state, &names).await?;
    let tls = Arc::new(ServerTls {
        config: ArcSwap::new(build(&bundle, key, &secret)?),
    });
    tracing::info!(
        identity = %control_plane_identity(state_trust_domain(&views).as_str()),
        "serving over TLS with a certificate from the mesh CA"
    );
    let held = tls.clone();
    let mut shutdown = shutdown;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = views.changed() => {
                    if r.is_err() { return }
                    let now = views.borrow_and_update().mtls.trust_bundle.clone();
                    if now == bundle { continue }
                    bundle = now;
                }
                _ = tokio::time::sleep(renew_in) => {}
                _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => return,
            }
            renew_in = match issue(&state, &names).await.and_then(|(key, renew)| {
                held.config.store(build(&bundle, key, &secret)?);
                Ok(renew)
            }) {
                Ok(renew) => {
                    tracing::info!(roots = bundle.len(), "serving certificate re-issued");
                    renew
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot re-issue the serving certificate; keeping the current one");
                    RETRY
                }
            };
            // Only now: a client that reads the new bundle must find a certificate it
            // verifies. After a root drop the old certificate chains to the dropped root, so
            // the file changes after the serving certificate does, never before.
            if let Err(e) = write_bundle(&bundle_file, &bundle) {
                tracing::error!(error = %e, "cannot write the trust bundle file");
            }
        }
    });
    Ok(Some(tls))
}

fn state_trust_domain(views: &watch::Receiver<Arc<crate::state::View>>) -> String {
    views.borrow().mtls.trust_domain.clone()
}

async fn keep_bundle_file(
    mut views: watch::Receiver<Arc<crate::state::View>>,
    mut bundle: Vec<String>,
    path: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = views.changed() => if r.is_err() { return },
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => return,
        }
        let now = views.borrow_and_update().mtls.trust_bundle.clone();
        if now != bundle {
            bundle = now;
            if let Err(e) = write_bundle(&path, &bundle) {
                tracing::error!(error = %e, "cannot write the trust bundle file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_names_or_ips() -> Result<(), TlsError> {
        let sans = server_names(&["localhost".into(), "10.0.0.7".into(), "::1".into()])?;
        assert!(matches!(&sans[0], SanType::DnsName(d) if d.as_str() == "localhost"));
        assert!(matches!(sans[1], SanType::IpAddress(ip) if ip.to_string() == "10.0.0.7"));
        assert!(matches!(sans[2], SanType::IpAddress(ip) if ip.is_loopback()));
        assert!(matches!(
            server_names(&["not a name".into()]),
            Err(TlsError::BadName(_))
        ));
        assert_eq!(default_names([0, 0, 0, 0].into()).len(), 3);
        assert_eq!(
            default_names([10, 1, 2, 3].into())
                .last()
                .map(String::as_str),
            Some("10.1.2.3")
        );
        Ok(())
    }

    #[test]
    fn only_service_identities_of_the_trust_domain_name_a_workload(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let cert_until = |uri: &str, year: i32| -> Result<CertificateDer<'static>, rcgen::Error> {
            let key = KeyPair::generate()?;
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(year, 1, 1);
            Ok(p.self_signed(&key)?.der().clone())
        };
        let cert = |uri: &str| cert_until(uri, 4000);
        let td = "outrigger.local";
        assert_eq!(
            workload_service(&cert("spiffe://outrigger.local/service/order")?, td).as_deref(),
            Some("order")
        );
        assert_eq!(
            workload_service(
                &cert_until("spiffe://outrigger.local/service/order", 2001)?,
                td
            ),
            None,
            "an expired certificate, as a resumed session may carry, names no one"
        );
        for other in [
            "spiffe://evil.example/service/order",
            "spiffe://outrigger.local/control-plane",
            "spiffe://outrigger.local/service/",
            "spiffe://outrigger.local/service/a/b",
        ] {
            assert_eq!(workload_service(&cert(other)?, td), None, "{other}");
        }
        Ok(())
    }

    #[test]
    fn the_bundle_file_is_replaced_whole() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("trust-bundle.pem");
        write_bundle(&path, &["A\n".into(), "B".into()])?;
        assert_eq!(std::fs::read_to_string(&path)?, "A\nB\n");
        write_bundle(&path, &["C".into()])?;
        assert_eq!(std::fs::read_to_string(&path)?, "C\n");
        assert!(!path.with_extension("pem.tmp").exists());
        Ok(())
    }
}
