//! The HTTPS client for the control plane's REST API. One request path, three ways to connect:
//!
//! - [`Api::bootstrap`]: the bootstrap token as bearer, no client certificate, and no pooling,
//!   so the connection that carried the token is never reused for anything else;
//! - [`Api::workload`]: the workload certificate as client certificate and no bearer; a new
//!   certificate starts a new pool, so no call rides a connection made with an older one;
//! - [`Api::plaintext`]: `--insecure-dev-plaintext`, plain HTTP with the operator token (or,
//!   [`Api::plaintext_bootstrap`], the bootstrap token).

use super::secret::Secret;
use super::trust::Trust;
use crate::tls::identity::{Identity, Issued, PresentCurrent};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls::client::WantsClientCert;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid control plane URL: {0}")]
    Url(String),
    #[error("control plane request failed: {0}")]
    Unreachable(String),
    #[error("control plane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("control plane answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("reading the control plane's answer: {0}")]
    Body(#[from] hyper::Error),
    #[error("the control channel's TLS configuration: {0}")]
    Tls(String),
    #[error("the token is not valid in an HTTP header (stray characters?)")]
    Token,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
pub struct Api {
    base: Arc<str>,
    /// `Bearer <token>`, marked sensitive so hyper never prints it.
    bearer: Option<HeaderValue>,
    conn: Conn,
    credential: &'static str,
}

#[derive(Clone)]
enum Conn {
    Fixed(Box<HttpsClient>),
    Workload(Arc<Workload>),
}

struct Workload {
    identity: Arc<Identity>,
    trust: Arc<Trust>,
    pool: ArcSwap<Pool>,
}

impl Workload {
    /// A connector of its own for each certificate: its TLS session cache then holds only
    /// sessions made with that certificate. A resumed session presents the certificate of the
    /// handshake it resumes, so a cache shared across renewals would go on showing the control
    /// plane a certificate the sidecar replaced, and, once that one expired, no identity at all.
    fn connector(&self) -> Result<HttpsConnector<HttpConnector>, ApiError> {
        identity_connector(&self.trust, &self.identity)
    }
}

/// A connection pool and the certificate its connections present.
struct Pool {
    cert: Option<Arc<Issued>>,
    client: HttpsClient,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Api {
    /// For the first certificate: the bootstrap token, over a connection used once.
    pub fn bootstrap(url: &http::Uri, trust: Arc<Trust>, token: &Secret) -> Result<Self, ApiError> {
        let tls = verified(trust)?.with_no_client_auth();
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector(tls, true));
        Self::new(
            url,
            Some(token),
            Conn::Fixed(Box::new(client)),
            "bootstrap token",
        )
    }

    /// Everything else: mTLS with the workload certificate.
    pub fn workload(
        url: &http::Uri,
        trust: Arc<Trust>,
        identity: Arc<Identity>,
    ) -> Result<Self, ApiError> {
        let pool = Pool {
            cert: identity.current(),
            client: pooled(&identity_connector(&trust, &identity)?),
        };
        let workload = Workload {
            identity,
            trust,
            pool: ArcSwap::from_pointee(pool),
        };
        Self::new(
            url,
            None,
            Conn::Workload(Arc::new(workload)),
            "workload certificate",
        )
    }

    /// Development only: plain HTTP, with the operator `token` (if any) as bearer on every call.
    pub fn plaintext(url: &http::Uri, token: Option<&Secret>) -> Result<Self, ApiError> {
        let credential = if token.is_some() {
            "operator token"
        } else {
            "no credential"
        };
        Self::plaintext_with(url, token, credential)
    }

    /// Development only: plain HTTP with a bootstrap token as bearer.
    pub fn plaintext_bootstrap(url: &http::Uri, token: &Secret) -> Result<Self, ApiError> {
        Self::plaintext_with(url, Some(token), "bootstrap token")
    }

    fn plaintext_with(
        url: &http::Uri,
        token: Option<&Secret>,
        credential: &'static str,
    ) -> Result<Self, ApiError> {
        // Never used for https (the flags allow plaintext only with an http:// URL); without
        // roots it could not complete a handshake anyway.
        let tls = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ApiError::Tls(e.to_string()))?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let client = pooled(&connector(tls, false));
        Self::new(url, token, Conn::Fixed(Box::new(client)), credential)
    }

    fn new(
        url: &http::Uri,
        token: Option<&Secret>,
        conn: Conn,
        credential: &'static str,
    ) -> Result<Self, ApiError> {
        let bearer = match token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| ApiError::Token)?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            base: url.to_string().trim_end_matches('/').into(),
            bearer,
            conn,
            credential,
        })
    }

    /// What this client authenticates with, for logs.
    pub fn credential(&self) -> &'static str {
        self.credential
    }

    /// Waits until this client has its credential: the first workload certificate, for
    /// [`Api::workload`]; at once for the others.
    pub async fn credential_ready(&self) {
        if let Conn::Workload(w) = &self.conn {
            w.identity.held().await;
        }
    }

    fn client(&self) -> HttpsClient {
        match &self.conn {
            Conn::Fixed(c) => (**c).clone(),
            Conn::Workload(w) => {
                let current = w.identity.current();
                let pool = w.pool.load();
                let same = match (&pool.cert, &current) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if same {
                    return pool.client.clone();
                }
                // Dropping the old pool closes its idle connections; calls in flight on them
                // finish first.
                let connector = match w.connector() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the control-plane connector; keeping the current one");
                        return pool.client.clone();
                    }
                };
                let client = pooled(&connector);
                w.pool.store(Arc::new(Pool {
                    cert: current,
                    client: client.clone(),
                }));
                client
            }
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Request<Full<Bytes>>, ApiError> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(v) = &self.bearer {
            b = b.header(header::AUTHORIZATION, v.clone());
        }
        let bytes = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        b.body(Full::new(bytes))
            .map_err(|e| ApiError::Url(e.to_string()))
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<http::Response<Incoming>, ApiError> {
        tokio::time::timeout(CALL_TIMEOUT, self.client().request(req))
            .await
            .map_err(|_| ApiError::Timeout(CALL_TIMEOUT))?
            .map_err(|e| ApiError::Unreachable(chain(&e)))
    }

    /// A request whose whole answer is read; non-2xx is an error carrying the status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, ApiError> {
        let res = self.send(self.request(method, path, body)?).await?;
        let status = res.status();
        let bytes = tokio::time::timeout(CALL_TIMEOUT, res.into_body().collect())
            .await
            .map_err(|_| ApiError::Timeout(CALL_TIMEOUT))??
            .to_bytes();
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(ApiError::Status { status, body });
        }
        Ok(bytes)
    }

    /// A GET whose body is a stream the caller reads.
    pub async fn stream(&self, path: &str) -> Result<Incoming, ApiError> {
        let res = self.send(self.request(Method::GET, path, None)?).await?;
        let status = res.status();
        if !status.is_success() {
            return Err(ApiError::Status {
                status,
                body: String::new(),
            });
        }
        Ok(res.into_body())
    }
}

/// TLS 1.3 verifying the control plane by name against the current root set. `dangerous()` is
/// only rustls's door to a custom verifier; [`Trust`] is plain WebPKI verification.
fn verified(trust: Arc<Trust>) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, ApiError> {
    Ok(ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(trust))
}

fn identity_connector(
    trust: &Arc<Trust>,
    identity: &Arc<Identity>,
) -> Result<HttpsConnector<HttpConnector>, ApiError> {
    let tls = verified(trust.clone())?
        .with_client_cert_resolver(Arc::new(PresentCurrent(identity.clone())));
    Ok(connector(tls, true))
}

fn connector(tls: ClientConfig, https_only: bool) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    // The TLS layer above decides which schemes are allowed.
    http.enforce_http(false);
    let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if https_only {
        builder.https_only()
    } else {
        builder.https_or_http()
    };
    builder.enable_http1().wrap_connector(http)
}

fn pooled(connector: &HttpsConnector<HttpConnector>) -> HttpsClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector.clone())
}

/// hyper's client error says only "client error (Connect)"; the cause (a refused connection,
/// an unknown issuer) is further down the chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
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

    #[test]
    fn the_bearer_is_sent_but_never_shown() {
        let api = Api::plaintext(
            &"http://127.0.0.1:1/".parse().expect("uri"),
            Some(&Secret::new("otb_secret")),
        )
        .expect("api");
        let req = api
            .request(Method::GET, "/v1/stream", None)
            .expect("request");
        assert_eq!(req.uri(), "http://127.0.0.1:1/v1/stream");
        let auth = req.headers().get(header::AUTHORIZATION).expect("bearer");
        assert_eq!(auth.as_bytes(), b"Bearer otb_secret");
        assert!(!format!("{:?}", req.headers()).contains("otb_secret"));
        assert!(Api::plaintext(
            &"http://h".parse().expect("uri"),
            Some(&Secret::new("a\nb"))
        )
        .is_err());
    }

    #[tokio::test]
    async fn the_workload_client_sends_no_bearer_and_waits_for_a_certificate() {
        let ca = super::super::trust::tests::ca("anchor");
        let trust = Arc::new(
            Trust::new(super::super::trust::Anchors::load(&ca.pem).expect("anchors"))
                .expect("trust"),
        );
        let identity = Arc::new(Identity::default());
        let api = Api::workload(
            &"https://127.0.0.1:1".parse().expect("uri"),
            trust,
            identity,
        )
        .expect("api");
        let req = api.request(Method::GET, "/", None).expect("request");
        assert!(req.headers().get(header::AUTHORIZATION).is_none());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), api.credential_ready())
                .await
                .is_err(),
            "no certificate yet"
        );
    }

    #[tokio::test]
    async fn handshake_failures_name_their_cause() {
        // Nothing listens on port 1: the connect error itself, not just "client error".
        let api = Api::plaintext(&"http://127.0.0.1:1".parse().expect("uri"), None).expect("api");
        let e = api
            .call(Method::GET, "/healthz", None)
            .await
            .expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("Connection refused"), "{text}");
    }
}
