//! The CLI's client of the control plane's API: HTTPS (TLS 1.3 only) that verifies the control
//! plane's certificate for the URL's host name or IP against the operator's trust anchors (the
//! control plane's trust bundle), with the operator's bearer token. Plain `http://` only when
//! the operator says `--insecure-dev-plaintext`. Error bodies become readable messages.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// An HTTP/1.1 client that speaks TLS 1.3 to servers whose certificate chains to the given
/// anchors (and plain HTTP only where the caller allowed it).
pub type Https = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where the control plane is, how to trust it and who we are to it.
pub struct Target<'a> {
    /// `https://HOST:PORT` (or `http://` with `insecure_dev_plaintext`).
    pub url: &'a str,
    /// `--trust-anchors` / `OUTRIGGER_TRUST_ANCHORS`: a path, or PEM text itself.
    pub trust_anchors: Option<&'a str>,
    /// `--token-file`; without it, `OUTRIGGER_TOKEN`.
    pub token_file: Option<&'a Path>,
    pub insecure_dev_plaintext: bool,
}

/// The certificates in `spec`: PEM text itself when it starts with `-----BEGIN`, else the path
/// of a PEM file. Never echoes the text in an error.
pub fn trust_anchors(spec: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let (pem, source) = if spec.trim_start().starts_with("-----BEGIN") {
        (
            spec.as_bytes().to_vec(),
            "the trust anchors' PEM text".to_string(),
        )
    } else {
        let pem =
            std::fs::read(spec).with_context(|| format!("cannot read --trust-anchors {spec}"))?;
        (pem, format!("--trust-anchors {spec}"))
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{source} is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        bail!("{source} holds no certificate");
    }
    Ok(certs)
}

/// The one way this CLI builds a client of the control plane: TLS 1.3 (ring), verifying the
/// server's certificate chain to `anchors` and its name against the URL's host (WebPKI). With
/// `allow_plaintext`, `http://` URLs are spoken in plain HTTP too.
pub fn https_client(
    anchors: Vec<CertificateDer<'static>>,
    allow_plaintext: bool,
) -> anyhow::Result<Https> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in anchors {
        roots
            .add(cert)
            .context("a trust anchor is not a usable CA certificate")?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .context("TLS 1.3 with the ring provider")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config);
    let connector = if allow_plaintext {
        builder.https_or_http().enable_http1().build()
    } else {
        builder.https_only().enable_http1().build()
    };
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector))
}

pub struct Client {
    base: String,
    token: Option<String>,
    /// Where the token came from, for messages (never the token itself).
    token_source: Option<String>,
    http: Https,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    /// The server's `Date` header: its clock, to the second.
    pub date: Option<std::time::SystemTime>,
    token_source: Option<String>,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body)
            .context("the control plane's answer is not the JSON expected")
    }

    /// What an error body says: its message and hint (the mesh's error format), else its
    /// reason, else the body as text.
    fn reason(&self) -> String {
        let v = serde_json::from_slice::<Value>(&self.body).ok();
        let text = |k: &str| {
            v.as_ref()
                .and_then(|v| v.get(k))
                .and_then(|r| r.as_str())
                .map(str::to_string)
        };
        let said = text("message")
            .or_else(|| text("reason"))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string());
        match text("hint") {
            Some(h) => format!("{said} (hint: {h})"),
            None => said,
        }
    }

    /// Fails with the server's reason unless the status is a success.
    pub fn ok(self) -> anyhow::Result<Reply> {
        if self.status.is_success() {
            return Ok(self);
        }
        let reason = self.reason();
        match (self.status, &self.token_source) {
            // No token at all: say how to give one.
            (StatusCode::UNAUTHORIZED, None) => bail!(
                "{}: no token given: give --token-file FILE (or set OUTRIGGER_TOKEN) with an \
                 admin or reader token",
                self.status
            ),
            // A token the control plane does not know: not the missing-token hint.
            (StatusCode::UNAUTHORIZED, Some(source)) => bail!(
                "{}: the control plane does not know the token from {source} ({reason}); is it \
                 this control plane's admin or reader token, and not a bootstrap token?",
                self.status
            ),
            // 403 included: the credential was recognised, and the reason says what it lacks.
            _ => bail!("{}: {reason}", self.status),
        }
    }
}

impl Client {
    pub fn new(target: &Target<'_>) -> anyhow::Result<Self> {
        let base = target.url;
        let uri: Uri = base
            .parse()
            .with_context(|| format!("--control-plane {base:?} is not a URL"))?;
        if uri.authority().is_none() {
            bail!("--control-plane {base:?} has no host, e.g. https://127.0.0.1:15010");
        }
        let anchors = match (uri.scheme_str(), target.trust_anchors) {
            (Some("https"), Some(spec)) => trust_anchors(spec)?,
            (Some("https"), None) => bail!(
                "an https:// control plane needs --trust-anchors FILE (or OUTRIGGER_TRUST_ANCHORS): \
                 the control plane's trust bundle, e.g. <data-dir>/trust-bundle.pem"
            ),
            (Some("http"), _) if target.insecure_dev_plaintext => match target.trust_anchors {
                Some(spec) => trust_anchors(spec)?,
                None => Vec::new(),
            },
            (Some("http"), _) => bail!(
                "refusing plain http:// to the control plane (its token would cross the network \
                 in the clear): use https:// with --trust-anchors, or --insecure-dev-plaintext \
                 for a development control plane"
            ),
            _ => bail!("--control-plane must be an https:// URL, e.g. https://127.0.0.1:15010"),
        };
        let (token, token_source) = match target.token_file {
            Some(p) => (
                Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read --token-file {}", p.display()))?
                        .trim()
                        .to_string(),
                ),
                Some(format!("--token-file {}", p.display())),
            ),
            None => (
                std::env::var("OUTRIGGER_TOKEN")
                    .ok()
                    .map(|t| t.trim().to_string()),
                Some("OUTRIGGER_TOKEN".to_string()),
            ),
        };
        let token = token.filter(|t| !t.is_empty());
        let token_source = token_source.filter(|_| token.is_some());
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            token_source,
            http: https_client(anchors, target.insecure_dev_plaintext)?,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some((bytes, content_type)) => req
                .header(http::header::CONTENT_TYPE, content_type)
                .body(Full::new(bytes)),
            None => req.body(Full::new(Bytes::new())),
        }
        .context("building the request")?;
        let resp = self.http.request(req).await.map_err(|e| {
            anyhow!(
                "cannot reach the control plane at {}: {}",
                self.base,
                chain(&e)
            )
        })?;
        let status = resp.status();
        let date = resp
            .headers()
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer to {method} {path}: {}", chain(&e)))?
            .to_bytes();
        Ok(Reply {
            status,
            body,
            date,
            token_source: self.token_source.clone(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(Method::GET, path, None).await?.ok()?.json()
    }

    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Reply> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        self.send(method, path, Some((bytes, "application/json")))
            .await
    }
}

/// An error and its sources, `a: b: c`: hyper's own message ("client error (Connect)") says
/// little; the TLS or socket error under it says what happened.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("root").pem()
    }

    fn target<'a>(url: &'a str, anchors: Option<&'a str>, plaintext: bool) -> Target<'a> {
        Target {
            url,
            trust_anchors: anchors,
            token_file: None,
            insecure_dev_plaintext: plaintext,
        }
    }

    #[test]
    fn anchors_are_pem_text_or_a_path_and_never_echoed() {
        let pem = root_pem();
        assert_eq!(trust_anchors(&pem).expect("text").len(), 1);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, format!("{pem}{pem}")).expect("write");
        assert_eq!(
            trust_anchors(path.to_str().expect("utf-8"))
                .expect("file")
                .len(),
            2
        );
        let missing = trust_anchors("/nonexistent/bundle.pem").expect_err("missing");
        assert!(format!("{missing:#}").contains("/nonexistent/bundle.pem"));
        let garbage = "-----BEGIN CERTIFICATE-----\nsecretish\n-----END CERTIFICATE-----\n";
        let err = format!("{:#}", trust_anchors(garbage).expect_err("garbage"));
        assert!(!err.contains("secretish"), "{err}");
        std::fs::write(&path, "no pem here").expect("write");
        let err = format!(
            "{:#}",
            trust_anchors(path.to_str().expect("utf-8")).expect_err("empty")
        );
        assert!(err.contains("holds no certificate"), "{err}");
    }

    #[tokio::test]
    async fn https_needs_anchors_and_http_needs_the_dev_flag() {
        let pem = root_pem();
        let err = |t: Target<'_>| Client::new(&t).err().map(|e| format!("{e:#}"));
        assert!(err(target("https://127.0.0.1:15010", None, false))
            .is_some_and(|e| e.contains("--trust-anchors")));
        assert!(err(target("http://127.0.0.1:15010", None, false))
            .is_some_and(|e| e.contains("--insecure-dev-plaintext")));
        assert!(err(target("ftp://127.0.0.1:15010", Some(&pem), false)).is_some());
        assert!(err(target("https://127.0.0.1:15010", Some(&pem), false)).is_none());
        assert!(err(target("http://127.0.0.1:15010", None, true)).is_none());
    }

    fn reply(status: u16, body: &str, source: Option<&str>) -> String {
        let r = Reply {
            status: StatusCode::from_u16(status).expect("status"),
            body: Bytes::from(body.to_string()),
            date: None,
            token_source: source.map(str::to_string),
        };
        format!("{:#}", r.ok().err().expect("an error"))
    }

    #[test]
    fn a_missing_token_a_refused_token_and_a_forbidden_call_read_differently() {
        let body = r#"{"reason":"unauthorized","message":"unknown token"}"#;
        let none = reply(401, body, None);
        assert!(none.contains("no token given: give --token-file"), "{none}");
        // A wrong token is not told to give one.
        let refused = reply(401, body, Some("--token-file /t"));
        assert!(!refused.contains("no token given"), "{refused}");
        assert!(
            refused.contains("does not know the token from --token-file /t (unknown token)"),
            "{refused}"
        );
        let forbidden = reply(
            403,
            r#"{"reason":"forbidden","message":"a reader token may not write","hint":"use the admin token"}"#,
            Some("--token-file /t"),
        );
        assert_eq!(
            forbidden,
            "403 Forbidden: a reader token may not write (hint: use the admin token)"
        );
        assert!(reply(404, "not json", None).ends_with("not json"));
    }
}
