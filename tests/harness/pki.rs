//! Keys, CSRs and certificates made in the test (rcgen): CSRs for the mesh CA to sign, and a CA
//! of the test's own that the mesh does not trust, for attack tests.

use std::path::{Path, PathBuf};

/// The identity a service's sidecars get: `spiffe://outrigger.local/service/<service>`.
pub fn spiffe_id(service: &str) -> String {
    format!(
        "spiffe://{}/service/{service}",
        crate::control::TRUST_DOMAIN
    )
}

/// A certificate (leaf first, then any chain) and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    /// When the leaf expires (seconds since the epoch), when known.
    pub not_after_unix: Option<u64>,
}

impl Identity {
    /// Writes `NAME.pem` and `NAME.key` (0600) into `dir`, for tools that want files (curl).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        (cert, key)
    }
}

/// A fresh P-256 key and a CSR for `uri` (its only SAN): (key PEM, CSR PEM).
pub fn csr(uri: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        uri.try_into().expect("an IA5 string URI"),
    )];
    let csr = params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("CSR PEM");
    (key.serialize_pem(), csr)
}

/// A CA of the test's own, not the mesh's.
pub struct ForeignCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl ForeignCa {
    pub fn new() -> Self {
        Self::named("not the mesh CA")
    }

    /// A CA whose subject's common name is `name` (two CAs of a test tell apart by name).
    pub fn named(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("self-signed root");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Signs with this CA, for certificates a test makes itself.
    pub fn issuer(&self) -> &rcgen::Issuer<'static, rcgen::KeyPair> {
        &self.issuer
    }

    /// A leaf naming `uri` (e.g. [`spiffe_id`]) as the mesh's own would, signed by this CA.
    pub fn leaf(&self, uri: &str) -> Identity {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            uri.try_into().expect("an IA5 string URI"),
        )];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after_unix: None,
        }
    }
}

impl ForeignCa {
    /// Answers a sidecar's `POST /v1/identity/certificates` body (`{"csr": PEM}`) as the mesh CA
    /// would: the leaf for the CSR's one URI SAN, this CA as the trust bundle, and an expiry
    /// `lifetime` from now. `None` for a body that is no such request. For scripted control
    /// planes that must hand a sidecar its certificate before it is ready.
    pub fn answer_csr(
        &self,
        body: &[u8],
        lifetime: std::time::Duration,
    ) -> Option<serde_json::Value> {
        let req: serde_json::Value = serde_json::from_slice(body).ok()?;
        let mut csr =
            rcgen::CertificateSigningRequestParams::from_pem(req["csr"].as_str()?).ok()?;
        let identity = match csr.params.subject_alt_names.as_slice() {
            [rcgen::SanType::URI(uri)] => uri.as_str().to_string(),
            _ => return None,
        };
        csr.params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let not_after = std::time::SystemTime::now() + lifetime;
        csr.params.not_after = not_after.into();
        let leaf = csr.signed_by(&self.issuer).ok()?;
        let not_after_unix = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        Some(serde_json::json!({
            "certificate_chain": leaf.pem(),
            "trust_bundle": [self.cert_pem],
            "identity": identity,
            "expires_at": "",
            "not_after_unix": not_after_unix,
        }))
    }
}

impl Default for ForeignCa {
    fn default() -> Self {
        Self::new()
    }
}
