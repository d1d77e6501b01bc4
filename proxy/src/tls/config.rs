//! rustls configurations, built when a snapshot arrives (never per connection): the inbound
//! server config (requires a client certificate from the mesh CA) and one client config per
//! destination identity. Both present the current workload certificate through a resolver, so
//! a renewal needs no rebuild.

use super::identity::Identity;
use super::verify::SpiffeServerVerifier;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("the trust bundle has no usable root")]
    EmptyBundle,
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Presents whatever certificate the identity holds right now.
#[derive(Debug)]
struct Current(Arc<Identity>);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|i| i.certified.clone())
    }
}

impl ResolvesClientCert for Current {
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

/// The trusted roots: the pushed bundle, else what the CA sent with the certificate.
pub fn roots(
    bundle_pem: &[String],
    identity: &Identity,
) -> Result<Arc<RootCertStore>, TlsConfigError> {
    let mut store = RootCertStore::empty();
    for pem in bundle_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            let _ = store.add(cert);
        }
    }
    if store.is_empty() {
        if let Some(i) = identity.current() {
            for c in &i.bundle {
                let _ = store.add(c.clone());
            }
        }
    }
    if store.is_empty() {
        return Err(TlsConfigError::EmptyBundle);
    }
    Ok(Arc::new(store))
}

pub fn server(
    identity: Arc<Identity>,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = super::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Current(identity)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub fn client(
    identity: Arc<Identity>,
    roots: Arc<RootCertStore>,
    expected: &str,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = super::provider();
    let algs = provider.signature_verification_algorithms;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            roots,
            expected.to_string(),
            algs,
        )))
        .with_client_cert_resolver(Arc::new(Current(identity)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}
