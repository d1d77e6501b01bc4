//! HTTPS clients of the control plane, as its real clients are: TLS 1.3 (rustls, ring) that
//! verifies the control plane's certificate for the URL's host against trust anchors (its
//! trust bundle), optionally presenting a workload's client certificate. Plain `http://` URLs
//! work too (a control plane started with `--insecure-dev-plaintext`). The one client both the
//! workspace harness and the control plane's own test harness use.

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Every certificate in a PEM text; Err if it is not PEM or holds none (a file being written).
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    Ok(certs)
}

/// Every certificate in a PEM text; panics if there is none.
pub fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    parse_certs(pem).unwrap_or_else(|e| panic!("{e}"))
}

/// A client trusting `anchors_pem` (one or more PEM certificates).
pub fn client(anchors_pem: &[u8]) -> Client {
    build(config(anchors_pem).with_no_client_auth())
}

/// A client trusting `anchors_pem` that presents `cert_pem` (the leaf first, then any chain)
/// with `key_pem` (PKCS#8, SEC1 or PKCS#1) as its client certificate.
pub fn client_with_identity(anchors_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Client {
    let key = PrivateKeyDer::from_pem_slice(key_pem).expect("a PEM private key");
    build(
        config(anchors_pem)
            .with_client_auth_cert(certs(cert_pem), key)
            .expect("a usable client certificate and key"),
    )
}

fn config(
    anchors_pem: &[u8],
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(anchors_pem) {
        roots.add(cert).expect("a usable trust anchor");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
}

fn build(config: rustls::ClientConfig) -> Client {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
}

/// One request to `url` (e.g. `https://127.0.0.1:4000/v1/sidecars`), with a bearer token if
/// given: (status, body as JSON, else the text as a JSON string, else Null when empty). A body
/// is sent as JSON when it parses as JSON, else as YAML. Err is the transport failure with its
/// causes (a refused handshake, say), when no answer came within 20 s.
pub async fn try_call(
    client: &Client,
    method: Method,
    url: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(b) = body {
        let json = serde_json::from_str::<Value>(b).is_ok();
        req = req.header(
            header::CONTENT_TYPE,
            if json {
                "application/json"
            } else {
                "application/yaml"
            },
        );
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .map_err(|e| format!("building the request: {e}"))?;
    let res = match tokio::time::timeout(Duration::from_secs(20), client.request(req)).await {
        Err(_) => return Err("no answer within 20 s".into()),
        Ok(Err(e)) => return Err(chain(&e)),
        Ok(Ok(res)) => res,
    };
    let status = res.status().as_u16();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| chain(&e))?
        .to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok((status, value))
}

/// [`try_call`], with (0, Null) for no answer at all.
pub async fn call(
    client: &Client,
    method: Method,
    url: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    try_call(client, method, url, body, token)
        .await
        .unwrap_or((0, Value::Null))
}

/// An error and its causes, `a: b: c`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
