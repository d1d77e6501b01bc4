//! rustls configurations, built when a snapshot arrives (never per connection): the inbound
//! server config (requires a client certificate from the mesh CA) and one client config per
//! destination identity. Both present the current workload certificate through a resolver, so
//! a renewal needs no rebuild.

use super::identity::{Identity, PresentCurrent};
use super::verify::SpiffeServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
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

/// The roots a snapshot trusts: the store rustls verifies with, and the certificates it was
/// made of, which tell one trust bundle from another.
#[derive(Clone)]
pub struct Roots {
    pub store: Arc<RootCertStore>,
    pub certs: Arc<[CertificateDer<'static>]>,
}

/// The trusted roots: the pushed bundle, else what the CA sent with the certificate.
pub fn roots(bundle_pem: &[String], identity: &Identity) -> Result<Roots, TlsConfigError> {
    let mut store = RootCertStore::empty();
    let mut certs = Vec::new();
    for pem in bundle_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            if store.add(cert.clone()).is_ok() {
                certs.push(cert);
            }
        }
    }
    if store.is_empty() {
        if let Some(i) = identity.current() {
            for c in &i.bundle {
                if store.add(c.clone()).is_ok() {
                    certs.push(c.clone());
                }
            }
        }
    }
    if store.is_empty() {
        return Err(TlsConfigError::EmptyBundle);
    }
    Ok(Roots {
        store: Arc::new(store),
        certs: certs.into(),
    })
}

pub fn server(identity: Arc<Identity>, roots: &Roots) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = super::provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots.store.clone(), provider.clone())
            .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(PresentCurrent(identity)));
    cfg.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        super::OPAQUE_ALPN.to_vec(),
    ];
    Ok(Arc::new(cfg))
}

/// What an outbound mTLS connection was made to accept: the peer identity and the roots. A
/// pooled connection is only ever used under the same (see `client::h2`); the workload's own
/// certificate is not part of it, as handshakes always present the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTrust {
    pub expected: Arc<str>,
    pub roots: Arc<[CertificateDer<'static>]>,
}

/// The client side of mTLS to one destination.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub trust: PeerTrust,
}

pub fn client(
    identity: Arc<Identity>,
    roots: &Roots,
    expected: &str,
) -> Result<ClientTls, TlsConfigError> {
    let provider = super::provider();
    let algs = provider.signature_verification_algorithms;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            roots.store.clone(),
            expected.to_string(),
            algs,
        )))
        .with_client_cert_resolver(Arc::new(PresentCurrent(identity)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ClientTls {
        config: Arc::new(cfg),
        trust: PeerTrust {
            expected: expected.into(),
            roots: roots.certs.clone(),
        },
    })
}
