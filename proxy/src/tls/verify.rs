//! SPIFFE peer verification. Mesh certificates name a workload by a URI SAN
//! (`spiffe://<trust-domain>/service/<name>`), not a DNS name, so the chain is checked
//! against the mesh's trust bundle with webpki and then the URI is compared with the identity
//! the destination must have.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// The peer proved a certificate from the mesh CA, but for another identity.
#[derive(Debug, thiserror::Error)]
#[error("peer identity {found:?} is not the expected {expected}")]
pub struct PeerIdentityMismatch {
    pub expected: String,
    pub found: Option<String>,
}

/// The SPIFFE URI SAN of a certificate, if it has exactly one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some(u.to_string())
        }
        _ => None,
    });
    let first = uris.next()?;
    uris.next().is_none().then_some(first)
}

/// Verifies an upstream sidecar: chain to the bundle, then its identity.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: String,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            roots,
            expected,
            algs,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let found = spiffe_id(end_entity);
        if found.as_deref() != Some(self.expected.as_str()) {
            let e = PeerIdentityMismatch {
                expected: self.expected.clone(),
                found,
            };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(e)),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Whether an error chain holds a [`PeerIdentityMismatch`].
pub fn is_identity_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<PeerIdentityMismatch>().is_some() {
            return true;
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
            err.downcast_ref::<rustls::Error>()
        {
            if inner.downcast_ref::<PeerIdentityMismatch>().is_some() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if is_identity_mismatch(inner) {
                    return true;
                }
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        der: CertificateDer<'static>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca { params, key, der }
    }

    fn leaf(ca: &Ca, uris: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let issuer = Issuer::new(ca.params.clone(), &ca.key);
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    fn verifier(ca: &Ca, expected: &str) -> SpiffeServerVerifier {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let algs = crate::tls::provider().signature_verification_algorithms;
        SpiffeServerVerifier::new(Arc::new(roots), expected.to_string(), algs)
    }

    fn verify(
        v: &SpiffeServerVerifier,
        cert: &CertificateDer<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
    }

    const PAYMENT: &str = "spiffe://outrigger.local/service/payment";

    #[test]
    fn the_spiffe_id_is_the_single_spiffe_uri() {
        let ca = ca();
        assert_eq!(spiffe_id(&leaf(&ca, &[PAYMENT])).as_deref(), Some(PAYMENT));
        assert_eq!(
            spiffe_id(&leaf(
                &ca,
                &[PAYMENT, "spiffe://outrigger.local/service/order"]
            )),
            None
        );
        assert_eq!(spiffe_id(&leaf(&ca, &["https://example.com/"])), None);
        assert_eq!(spiffe_id(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn a_peer_must_chain_to_the_bundle_and_name_the_expected_identity() {
        let mesh = ca();
        assert!(verify(&verifier(&mesh, PAYMENT), &leaf(&mesh, &[PAYMENT])).is_ok());

        let wrong = verify(
            &verifier(&mesh, PAYMENT),
            &leaf(&mesh, &["spiffe://outrigger.local/service/order"]),
        )
        .expect_err("another identity");
        assert!(is_identity_mismatch(&wrong), "{wrong}");

        let other = ca();
        let foreign =
            verify(&verifier(&mesh, PAYMENT), &leaf(&other, &[PAYMENT])).expect_err("another CA");
        assert!(
            !is_identity_mismatch(&foreign),
            "an unknown CA is not an identity mismatch: {foreign}"
        );
    }
}
