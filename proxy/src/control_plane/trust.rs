//! Which control plane the sidecar believes. The operator's trust anchors are the root of that
//! belief; once the channel is authenticated, two more sources may extend it: the trust bundle
//! of the latest applied snapshot (during a root rotation it carries the new root before the
//! control plane's certificate is signed by it) and the bundle the CA sent with the workload
//! certificate. The control plane's certificate is checked with ordinary WebPKI host-name/IP
//! verification against the union, rebuilt when a source changes and read lock-free per
//! handshake, so no handshake parses PEM.

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("reading the trust anchors file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the trust anchors ({origin}) are not valid PEM: {reason}")]
    Pem { origin: String, reason: String },
    #[error("the trust anchors ({origin}) hold no certificate")]
    Empty { origin: String },
    #[error(
        "certificate {index} of the trust anchors ({origin}) cannot be a trust anchor: {reason}"
    )]
    Unusable {
        origin: String,
        index: usize,
        reason: String,
    },
}

/// The operator's roots for the control plane: never empty, each usable as a trust anchor.
#[derive(Clone)]
pub struct Anchors(Arc<[CertificateDer<'static>]>);

impl Anchors {
    /// `value` is PEM text when it starts with `-----BEGIN` (an environment variable filled
    /// from a Secret), else the path of a PEM file.
    pub fn load(value: &str) -> Result<Self, AnchorError> {
        let text = value.trim_start();
        if text.starts_with("-----BEGIN") {
            return Self::from_pem("inline PEM", text.as_bytes());
        }
        let pem = std::fs::read(value).map_err(|source| AnchorError::Read {
            path: value.to_string(),
            source,
        })?;
        Self::from_pem(value, &pem)
    }

    fn from_pem(origin: &str, pem: &[u8]) -> Result<Self, AnchorError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| AnchorError::Pem {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(AnchorError::Empty {
                origin: origin.to_string(),
            });
        }
        let mut store = RootCertStore::empty();
        for (index, cert) in certs.iter().enumerate() {
            store.add(cert.clone()).map_err(|e| AnchorError::Unusable {
                origin: origin.to_string(),
                index,
                reason: e.to_string(),
            })?;
        }
        Ok(Self(certs.into()))
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.0
    }
}

impl std::fmt::Debug for Anchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Anchors({} certificates)", self.0.len())
    }
}

/// The sources that extend the anchors, as last set.
#[derive(Default)]
struct Extra {
    pushed: Vec<String>,
    issued: Vec<CertificateDer<'static>>,
}

/// Verifies the control plane's certificate against the current root set.
pub struct Trust {
    anchors: Anchors,
    provider: Arc<CryptoProvider>,
    /// Serialises rebuilds; never touched by a handshake.
    extra: Mutex<Extra>,
    current: ArcSwap<WebPkiServerVerifier>,
}

impl Trust {
    pub fn new(anchors: Anchors) -> Result<Self, rustls::server::VerifierBuilderError> {
        let provider = crate::tls::provider();
        let current = build(&anchors, &Extra::default(), &provider)?;
        Ok(Self {
            anchors,
            provider,
            extra: Mutex::new(Extra::default()),
            current: ArcSwap::new(current),
        })
    }

    /// The bundle of the snapshot just applied (PEM strings, as pushed).
    pub fn set_pushed(&self, bundle: &[String]) {
        let mut extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        if extra.pushed != bundle {
            extra.pushed = bundle.to_vec();
            self.rebuild(&extra);
        }
    }

    /// The bundle the CA returned with the workload certificate.
    pub fn set_issued(&self, bundle: &[CertificateDer<'static>]) {
        let mut extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        if extra.issued != bundle {
            extra.issued = bundle.to_vec();
            self.rebuild(&extra);
        }
    }

    fn rebuild(&self, extra: &Extra) {
        match build(&self.anchors, extra, &self.provider) {
            Ok(v) => self.current.store(v),
            // Unreachable while the anchors are non-empty; the previous set stays in force.
            Err(e) => tracing::warn!(error = %e, "cannot rebuild the control plane's root set"),
        }
    }
}

fn build(
    anchors: &Anchors,
    extra: &Extra,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::server::VerifierBuilderError> {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(anchors.certs().iter().cloned());
    for pem in &extra.pushed {
        // A root this process cannot use is left out; the others still count.
        let (_, ignored) = store
            .add_parsable_certificates(CertificateDer::pem_slice_iter(pem.as_bytes()).flatten());
        if ignored > 0 {
            tracing::warn!(ignored, "a root of the pushed trust bundle is unusable");
        }
    }
    store.add_parsable_certificates(extra.issued.iter().cloned());
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone()).build()
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("anchors", &self.anchors)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    /// A test CA: its issuer, and its certificate as PEM.
    pub(crate) struct TestCa {
        pub issuer: Issuer<'static, KeyPair>,
        pub pem: String,
        pub der: CertificateDer<'static>,
    }

    pub(crate) fn ca(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signed");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IPs) from `ca`.
    pub(crate) fn leaf(ca: &TestCa, names: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .signed_by(&key, &ca.issuer)
            .expect("sign")
            .der()
            .clone()
    }

    fn verify(trust: &Trust, cert: &CertificateDer<'_>, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).expect("server name");
        trust
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn temp_file(contents: &[u8]) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "outrigger-anchors-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, contents).expect("write temp file");
        p
    }

    #[test]
    fn anchors_are_pem_text_or_a_path() {
        let (a, b) = (ca("a"), ca("b"));
        let text = format!("{}{}", a.pem, b.pem);
        let inline = Anchors::load(&format!("\n  {text}")).expect("inline PEM");
        assert_eq!(inline.certs(), &[a.der.clone(), b.der.clone()]);
        let path = temp_file(text.as_bytes());
        let from_file = Anchors::load(path.to_str().expect("utf-8 path"));
        let _ = std::fs::remove_file(&path);
        assert_eq!(from_file.expect("file").certs(), inline.certs());
        assert_eq!(format!("{inline:?}"), "Anchors(2 certificates)");
    }

    #[test]
    fn empty_missing_or_broken_anchors_are_errors() {
        let empty = temp_file(b"");
        let e = Anchors::load(empty.to_str().expect("utf-8 path"));
        let _ = std::fs::remove_file(&empty);
        assert!(matches!(e, Err(AnchorError::Empty { .. })), "{e:?}");

        // A key is no certificate: nothing to trust.
        let key = KeyPair::generate().expect("key").serialize_pem();
        let e = Anchors::load(&key);
        assert!(matches!(e, Err(AnchorError::Empty { .. })), "{e:?}");

        let e = Anchors::load("/nonexistent/outrigger/anchors.pem");
        assert!(
            matches!(&e, Err(AnchorError::Read { path, .. }) if path.contains("nonexistent")),
            "{e:?}"
        );

        let e = Anchors::load("-----BEGIN CERTIFICATE-----\nnot base64!\n");
        assert!(matches!(e, Err(AnchorError::Pem { .. })), "{e:?}");

        let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let e = Anchors::load(junk);
        assert!(
            matches!(e, Err(AnchorError::Unusable { index: 0, .. })),
            "{e:?}"
        );
    }

    #[test]
    fn the_control_plane_is_verified_by_name_against_the_anchors() {
        let anchor = ca("anchor");
        let trust = Trust::new(Anchors::load(&anchor.pem).expect("anchors")).expect("trust");
        let cp = leaf(&anchor, &["localhost", "127.0.0.1"]);
        verify(&trust, &cp, "localhost").expect("by DNS name");
        verify(&trust, &cp, "127.0.0.1").expect("by IP");
        let e = verify(&trust, &cp, "elsewhere.example").expect_err("another name");
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{e:?}"
        );
        let stranger = leaf(&ca("stranger"), &["localhost"]);
        let e = verify(&trust, &stranger, "localhost").expect_err("another CA");
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{e:?}"
        );
    }

    #[test]
    fn roots_added_at_run_time_are_trusted_and_dropped_with_their_source() {
        let anchor = ca("anchor");
        let (rotated, issued, other) = (ca("rotated"), ca("issued"), ca("other"));
        let trust = Trust::new(Anchors::load(&anchor.pem).expect("anchors")).expect("trust");
        let by_rotated = leaf(&rotated, &["localhost"]);
        let by_issued = leaf(&issued, &["localhost"]);
        let by_other = leaf(&other, &["localhost"]);
        assert!(verify(&trust, &by_rotated, "localhost").is_err());

        // A snapshot's bundle brings the new root; the anchors stay trusted beside it.
        trust.set_pushed(&[anchor.pem.clone(), rotated.pem.clone()]);
        verify(&trust, &by_rotated, "localhost").expect("pushed root");
        verify(&trust, &leaf(&anchor, &["localhost"]), "localhost").expect("anchor");
        assert!(verify(&trust, &by_other, "localhost").is_err());

        // The latest snapshot's bundle replaces the previous one.
        trust.set_pushed(std::slice::from_ref(&anchor.pem));
        assert!(verify(&trust, &by_rotated, "localhost").is_err());

        trust.set_issued(std::slice::from_ref(&issued.der));
        verify(&trust, &by_issued, "localhost").expect("root sent with the certificate");
        assert!(verify(&trust, &by_other, "localhost").is_err());

        // Garbage in a pushed bundle costs only itself.
        trust.set_pushed(&["not pem".into(), rotated.pem.clone()]);
        verify(&trust, &by_rotated, "localhost").expect("the usable root still counts");
    }
}
