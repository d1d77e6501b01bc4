//! Leaf certificates: checking a sidecar's CSR and signing it.
//!
//! A CSR is signed only if it parses, its signature verifies (proof that the sender holds the
//! key) and its subject alternative names are exactly the one SPIFFE URI the caller's token
//! allows. Nothing else from the CSR is copied: subject, key usages, CA flag and validity are
//! set here, so a CSR cannot ask for more than a workload identity.

use super::root::{offset_time, serial, Signer};
use super::{hex, CaError};
use crate::clock;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyUsagePurpose, PublicKey, PublicKeyData, SanType,
};
use std::time::{Duration, SystemTime};
use x509_parser::prelude::FromDer;

/// CSRs are a few hundred bytes; anything much larger is not one.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Leaves are dated back this much, for peers whose clocks are a little behind ours.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Why a CSR was refused: the caller's mistake, never ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("malformed CSR: {0}")]
    Malformed(String),
    #[error("the CSR's signature does not verify with its public key")]
    BadSignature,
    #[error(
        "the CSR must name exactly one subject alternative name, the URI {expected}; it names {got}"
    )]
    WrongIdentity { expected: String, got: String },
}

/// A signed leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub pem: String,
    /// Hex, as stored.
    pub serial: String,
    pub not_after_unix: u64,
}

/// The CSR's public key, if the CSR is well-formed, verifies, and asks for `identity` alone.
pub fn check_csr(pem: &str, identity: &str) -> Result<PublicKey, CsrError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::Malformed(format!(
            "larger than {MAX_CSR_BYTES} bytes"
        )));
    }
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| CsrError::Malformed("not PEM".into()))?;
    if !block.label.ends_with("CERTIFICATE REQUEST") {
        return Err(CsrError::Malformed(format!(
            "a PEM {:?} block, not a CERTIFICATE REQUEST",
            block.label
        )));
    }
    let der = block.contents.as_slice();
    let params = CertificateSigningRequestParams::from_der(&der.into()).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
        rcgen::Error::CouldNotParseCertificationRequest => {
            CsrError::Malformed("not a PKCS#10 certificate request".into())
        }
        other => CsrError::Malformed(other.to_string()),
    })?;
    // rcgen names the key's algorithm after the CSR's signature algorithm; a key of another
    // curve signed with the same hash would be mislabelled in the leaf. Insist they agree.
    let (_, request) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    if request.certification_request_info.subject_pki.raw
        != params.public_key.subject_public_key_info().as_slice()
    {
        return Err(CsrError::Malformed(
            "the key's algorithm does not match the signature algorithm".into(),
        ));
    }
    let sans = &params.params.subject_alt_names;
    match sans.as_slice() {
        [SanType::URI(uri)] if uri.as_str() == identity => Ok(params.public_key),
        _ => Err(CsrError::WrongIdentity {
            expected: identity.to_string(),
            got: describe(sans),
        }),
    }
}

/// The one URI SAN a well-formed, verifying CSR asks for (an operator's CSR names its own
/// service; a workload's is held to its credential by [`check_csr`]).
pub fn requested_identity(pem: &str) -> Result<String, CsrError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| CsrError::Malformed("not PEM".into()))?;
    let params = CertificateSigningRequestParams::from_der(&block.contents.as_slice().into())
        .map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
            other => CsrError::Malformed(other.to_string()),
        })?;
    match params.params.subject_alt_names.as_slice() {
        [SanType::URI(uri)] => Ok(uri.as_str().to_string()),
        sans => Err(CsrError::WrongIdentity {
            expected: "one spiffe:// URI".into(),
            got: describe(sans),
        }),
    }
}

/// Signs a leaf for `public_key` naming `identity` (and, for the control plane's own serving
/// certificate, the DNS names and IPs in `extra`), valid from [`BACKDATE`] ago for `lifetime`
/// (never past the root's own expiry).
pub fn sign(
    public_key: &impl PublicKeyData,
    identity: &str,
    extra: &[SanType],
    signer: &Signer,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Leaf, CaError> {
    let not_after_unix = clock::unix(now + lifetime).min(signer.record.not_after_unix);
    let serial = serial()?;
    let mut params = CertificateParams::default();
    // The identity is the SAN alone; an empty subject makes rcgen mark the SAN critical, as
    // RFC 5280 asks.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        identity
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Crypto(e))?,
    )];
    params.subject_alt_names.extend_from_slice(extra);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial.clone());
    params.not_before = offset_time(now.checked_sub(BACKDATE).unwrap_or(now))?;
    params.not_after = offset_time(clock::from_unix(not_after_unix))?;
    let cert = params
        .signed_by(public_key, signer.issuer())
        .map_err(CaError::Crypto)?;
    Ok(Leaf {
        pem: cert.pem(),
        serial: hex(&serial.to_bytes()),
        not_after_unix,
    })
}

/// Subject alternative names as `URI:…`, `DNS:…`, for refusals.
fn describe(sans: &[SanType]) -> String {
    if sans.is_empty() {
        return "none".into();
    }
    sans.iter()
        .map(|s| match s {
            SanType::URI(u) => format!("URI:{}", u.as_str()),
            SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
            SanType::Rfc822Name(e) => format!("email:{}", e.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            _ => "otherName".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::root;
    use rcgen::KeyPair;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    const ID: &str = "spiffe://outrigger.local/service/payment";

    fn csr(sans: &[SanType]) -> Result<String, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans.to_vec();
        params.serialize_request(&key)?.pem()
    }

    fn uri(u: &str) -> Result<SanType, rcgen::Error> {
        Ok(SanType::URI(u.try_into()?))
    }

    #[test]
    fn a_good_csr_passes() -> Result<(), Box<dyn std::error::Error>> {
        let pem = csr(&[uri(ID)?])?;
        assert!(check_csr(&pem, ID).is_ok());
        Ok(())
    }

    #[test]
    fn another_identity_or_extra_names_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let other = csr(&[uri("spiffe://outrigger.local/service/order")?])?;
        assert_eq!(
            check_csr(&other, ID),
            Err(CsrError::WrongIdentity {
                expected: ID.into(),
                got: "URI:spiffe://outrigger.local/service/order".into()
            })
        );
        let extra = csr(&[uri(ID)?, SanType::DnsName("payment".try_into()?)])?;
        let err = check_csr(&extra, ID);
        assert!(
            matches!(&err, Err(CsrError::WrongIdentity { got, .. }) if got == &format!("URI:{ID}, DNS:payment")),
            "{err:?}"
        );
        let none = csr(&[])?;
        assert!(
            matches!(check_csr(&none, ID), Err(CsrError::WrongIdentity { got, .. }) if got == "none")
        );
        // Another trust domain is another identity.
        let td = csr(&[uri("spiffe://evil.example/service/payment")?])?;
        assert!(matches!(
            check_csr(&td, ID),
            Err(CsrError::WrongIdentity { .. })
        ));
        Ok(())
    }

    #[test]
    fn malformed_input_is_refused_with_a_reason() -> Result<(), Box<dyn std::error::Error>> {
        for (input, reason) in [
            ("", "not PEM"),
            ("hello", "not PEM"),
            (
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "not a PKCS#10",
            ),
        ] {
            let err = check_csr(input, ID);
            assert!(
                matches!(&err, Err(CsrError::Malformed(r)) if r.contains(reason)),
                "{input:?}: {err:?}"
            );
        }
        // A certificate is not a request.
        let key = KeyPair::generate()?;
        let cert = CertificateParams::default().self_signed(&key)?.pem();
        assert!(matches!(
            check_csr(&cert, ID),
            Err(CsrError::Malformed(r)) if r.contains("not a CERTIFICATE REQUEST")
        ));
        let huge = "A".repeat(MAX_CSR_BYTES + 1);
        assert!(matches!(check_csr(&huge, ID), Err(CsrError::Malformed(_))));
        Ok(())
    }

    #[test]
    fn a_tampered_csr_fails_its_signature() -> Result<(), Box<dyn std::error::Error>> {
        let good = csr(&[uri(ID)?])?;
        let block = pem::parse(&good)?;
        let mut der = block.contents().to_vec();
        // The SAN sits inside the signed part: change one letter of the identity.
        let at = der
            .windows(7)
            .position(|w| w == b"payment")
            .ok_or("no identity in the CSR")?;
        der[at] = b'P';
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert_eq!(check_csr(&tampered, ID), Err(CsrError::BadSignature));
        Ok(())
    }

    #[test]
    fn the_leaf_carries_exactly_the_identity_and_the_lifetime(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let now = SystemTime::now();
        let signer = root::generate(dir.path(), "outrigger.local", now)?;
        let key = check_csr(&csr(&[uri(ID)?])?, ID)?;
        let leaf = sign(&key, ID, &[], &signer, now, Duration::from_secs(3600))?;
        assert_eq!(leaf.not_after_unix, clock::unix(now) + 3600);

        let (_, block) = x509_parser::pem::parse_x509_pem(leaf.pem.as_bytes())?;
        let cert = block.parse_x509()?;
        assert!(!cert.is_ca());
        let v = cert.validity();
        assert_eq!(v.not_after.timestamp(), i64::try_from(leaf.not_after_unix)?);
        assert_eq!(
            v.not_after.timestamp() - v.not_before.timestamp(),
            3600 + 60,
            "the lifetime, plus the backdating"
        );
        let san = cert.subject_alternative_name()?.ok_or("no SAN extension")?;
        assert!(san.critical, "an empty subject needs a critical SAN");
        assert_eq!(san.value.general_names, [GeneralName::URI(ID)]);
        let eku = cert.extended_key_usage()?.ok_or("no EKU")?.value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);
        let ku = cert.key_usage()?.ok_or("no key usage")?.value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert_eq!(cert.raw_serial_as_string().replace(':', ""), leaf.serial);

        // It chains to the root.
        let (_, root_block) = x509_parser::pem::parse_x509_pem(signer.record.cert_pem.as_bytes())?;
        let root_cert = root_block.parse_x509()?;
        cert.verify_signature(Some(root_cert.public_key()))?;
        assert_eq!(cert.issuer(), root_cert.subject());
        assert!(cert.iter_extensions().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));
        Ok(())
    }

    #[test]
    fn a_leaf_never_outlives_its_root() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let now = SystemTime::now();
        let signer = root::generate(dir.path(), "outrigger.local", now)?;
        let key = check_csr(&csr(&[uri(ID)?])?, ID)?;
        let leaf = sign(&key, ID, &[], &signer, now, root::ROOT_LIFETIME * 2)?;
        assert_eq!(leaf.not_after_unix, signer.record.not_after_unix);
        Ok(())
    }
}
