//! What a sidecar does with the mesh CA, as test helpers: make a key and a CSR, mint a
//! bootstrap token, ask for a certificate; and reading certificates with x509-parser.

use crate::harness::{call, Control};
use http::Method;
use rcgen::{CertificateParams, KeyPair, SanType};
use serde_json::{json, Value};
use x509_parser::extensions::GeneralName;

pub fn identity(service: &str) -> String {
    format!("spiffe://outrigger.local/service/{service}")
}

/// A CSR (PEM) with these URI SANs, from a fresh key.
pub fn csr(uris: &[&str]) -> String {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("IA5 URI")))
        .collect();
    params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("PEM")
}

/// `POST /v1/identity/tokens`: the bootstrap token.
pub async fn token(c: &Control, service: &str, ttl_secs: u64) -> String {
    let body = json!({"service": service, "ttl_secs": ttl_secs}).to_string();
    let (status, reply) = c
        .call(Method::POST, "/v1/identity/tokens", Some(&body))
        .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["service"], service);
    reply["token"].as_str().expect("token").to_string()
}

/// `POST /v1/identity/certificates` with a bootstrap token.
pub async fn sign(c: &Control, token: Option<&str>, csr: &str) -> (u16, Value) {
    let body = json!({ "csr": csr }).to_string();
    call(
        c,
        Method::POST,
        "/v1/identity/certificates",
        Some(&body),
        token,
    )
    .await
}

/// A certificate for `service`, asserting it is issued.
pub async fn certificate(c: &Control, token: &str, service: &str) -> Value {
    let (status, reply) = sign(c, Some(token), &csr(&[&identity(service)])).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

/// The DER of the first PEM block.
pub fn der(pem: &str) -> Vec<u8> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    block.contents
}

/// Whether `leaf` is signed by `root` (both PEM).
pub fn chains_to(leaf: &str, root: &str) -> bool {
    let (leaf_der, root_der) = (der(leaf), der(root));
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).expect("leaf");
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("root");
    root.is_ca()
        && leaf.issuer() == root.subject()
        && leaf.verify_signature(Some(root.public_key())).is_ok()
}

/// The subject alternative names of a certificate, as `URI:…`/`DNS:…` strings.
pub fn sans(pem: &str) -> Vec<String> {
    let d = der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&d).expect("certificate");
    cert.subject_alternative_name()
        .expect("one SAN extension")
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (notBefore, notAfter) in Unix seconds.
pub fn validity(pem: &str) -> (i64, i64) {
    let d = der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&d).expect("certificate");
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

/// The roots as `GET /v1/ca/roots` lists them.
pub async fn roots(c: &Control) -> Vec<Value> {
    let (status, list) = c.get("/v1/ca/roots").await;
    assert_eq!(status, 200, "{list}");
    list.as_array().expect("array").clone()
}
