//! A small HTTP client for the control plane's REST API.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid control plane URL: {0}")]
    Url(String),
    #[error("control plane unreachable: {0}")]
    Unreachable(#[from] hyper_util::client::legacy::Error),
    #[error("control plane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("control plane answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("reading the control plane's answer: {0}")]
    Body(#[from] hyper::Error),
}

#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Api {
    pub fn new(base: &http::Uri, token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            base: base.to_string().trim_end_matches('/').to_string(),
            token,
            client,
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
        if let Some(t) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
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

    /// A request whose whole answer is read; non-2xx is an error carrying the status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, ApiError> {
        let req = self.request(method, path, body)?;
        let res = tokio::time::timeout(CALL_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| ApiError::Timeout(CALL_TIMEOUT))??;
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
        let req = self.request(Method::GET, path, None)?;
        let res = tokio::time::timeout(CALL_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| ApiError::Timeout(CALL_TIMEOUT))??;
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
