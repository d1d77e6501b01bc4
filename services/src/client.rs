//! Outbound calls to other shop services, always through the mesh.
//!
//! Every call goes as plain HTTP/1.1 to one address, the caller's sidecar outbound listener
//! (`--mesh`), with `Host` set to the destination service's name; the sidecar picks the
//! endpoint, retries, encrypts. So the services need no registry or addresses of each other.
//! Each call carries the inbound request's trace headers (`trace.rs`) and is bounded by one
//! deadline covering connect, response and body.

use std::str::FromStr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::trace::TraceContext;

/// Replies larger than this are refused: the shop's answers are a few hundred bytes, and a
/// broken upstream must not make us buffer without bound.
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Why an outbound call produced no usable reply. The `Display` text becomes an order's
/// failure `reason`, so it is short and says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad request to build: {0}")]
    Build(String),
    #[error("connection failed: {0}")]
    Transport(String),
    #[error("reading the reply failed: {0}")]
    Body(String),
    #[error("could not encode the request: {0}")]
    Encode(String),
}

/// A complete reply: status and the whole body (no caller needs the headers yet).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON of type `T`, if it is.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// The mesh's address, as given by `--mesh`: `http://host:port`, nothing after it; or
/// `direct`, where each call goes to `http://SERVICE/…` by name and the pod's interception
/// takes it to the sidecar (the app unchanged, as in `outrigger up --pods`).
#[derive(Debug, Clone)]
pub struct MeshAddr {
    /// `None`: direct, by the service's name.
    authority: Option<Authority>,
}

impl MeshAddr {
    /// clap parser for `--mesh`. Only plain `http`: the sidecar on the same host does TLS.
    pub fn parse(arg: &str) -> Result<MeshAddr, String> {
        if arg == "direct" {
            return Ok(MeshAddr { authority: None });
        }
        let uri: Uri = arg
            .parse()
            .map_err(|e| format!("not a URL ({e}): {arg:?}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("the mesh URL must start with http://, got {arg:?}"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("the mesh URL needs host:port, got {arg:?}"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "the mesh URL takes no path, calls keep their own: {arg:?}"
            ));
        }
        Ok(MeshAddr {
            authority: Some(authority),
        })
    }
}

/// A pooled HTTP/1.1 client to the mesh. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct MeshClient {
    client: Client<HttpConnector, Full<Bytes>>,
    mesh: MeshAddr,
    timeout: Duration,
}

impl MeshClient {
    pub fn new(mesh: MeshAddr, timeout: Duration) -> MeshClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            // Shorter than the sidecar's idle timeout, so we close idle connections first and
            // never send on one the sidecar is closing.
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        MeshClient {
            client,
            mesh,
            timeout,
        }
    }

    /// `method path` on `service` through the mesh, with an optional JSON body and extra
    /// headers, carrying `trace`. Any status is a `Reply`; only no answer at all is an error.
    pub async fn call<B: Serialize>(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra: HeaderMap,
        trace: &TraceContext,
    ) -> Result<Reply, CallError> {
        let request = self.build(service, method, path, body, extra, trace)?;
        match tokio::time::timeout(self.timeout, self.send(request)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(self.timeout)),
        }
    }

    fn build<B: Serialize>(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra: HeaderMap,
        trace: &TraceContext,
    ) -> Result<Request<Full<Bytes>>, CallError> {
        let authority = match &self.mesh.authority {
            Some(a) => a.clone(),
            None => Authority::from_str(service).map_err(|e| CallError::Build(e.to_string()))?,
        };
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| CallError::Build(e.to_string()))?;
        let host = HeaderValue::from_str(service).map_err(|e| CallError::Build(e.to_string()))?;
        let payload = match body {
            Some(body) => {
                Bytes::from(serde_json::to_vec(body).map_err(|e| CallError::Encode(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(payload))
            .map_err(|e| CallError::Build(e.to_string()))?;
        let headers = request.headers_mut();
        headers.extend(extra);
        trace.apply(headers);
        // The sidecar routes by Host: it names the destination service, not the mesh address.
        headers.insert(HOST, host);
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Ok(request)
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Reply, CallError> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| CallError::Body(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            body,
        })
    }
}

/// hyper-util's error says only "client error (Connect)"; the cause says what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_urls_are_checked() {
        assert!(MeshAddr::parse("http://127.0.0.1:15001").is_ok());
        assert!(MeshAddr::parse("http://127.0.0.1:15001/").is_ok());
        assert!(MeshAddr::parse("https://127.0.0.1:15001").is_err());
        assert!(MeshAddr::parse("127.0.0.1:15001").is_err());
        assert!(MeshAddr::parse("http://127.0.0.1:15001/api").is_err());
        assert!(MeshAddr::parse("not a url").is_err());
    }

    #[test]
    fn direct_calls_go_to_the_service_by_name() {
        let Ok(mesh) = MeshAddr::parse("direct") else {
            panic!("direct rejected");
        };
        let client = MeshClient::new(mesh, Duration::from_secs(1));
        let trace = TraceContext::from_headers(&HeaderMap::new());
        let Ok(request) = client.build::<()>(
            "payment",
            Method::GET,
            "/charges/1",
            None,
            HeaderMap::new(),
            &trace,
        ) else {
            panic!("request not built");
        };
        assert_eq!(request.uri(), "http://payment/charges/1");
        assert_eq!(
            request.headers().get(HOST),
            Some(&HeaderValue::from_static("payment"))
        );
    }

    #[test]
    fn requests_carry_host_trace_and_extra_headers() {
        let mesh = MeshAddr::parse("http://127.0.0.1:15001").ok();
        let Some(mesh) = mesh else {
            panic!("valid mesh URL rejected");
        };
        let client = MeshClient::new(mesh, Duration::from_secs(1));
        let mut inbound = HeaderMap::new();
        inbound.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        let trace = TraceContext::from_headers(&inbound);
        let mut extra = HeaderMap::new();
        extra.insert("idempotency-key", HeaderValue::from_static("k1"));
        let request = client.build(
            "payment",
            Method::POST,
            "/charge",
            Some(&serde_json::json!({"a": 1})),
            extra,
            &trace,
        );
        let Ok(request) = request else {
            panic!("request not built");
        };
        assert_eq!(request.uri(), "http://127.0.0.1:15001/charge");
        let headers = request.headers();
        assert_eq!(
            headers.get(HOST),
            Some(&HeaderValue::from_static("payment"))
        );
        assert_eq!(
            headers.get("traceparent"),
            Some(&HeaderValue::from_static("00-abc-def-01"))
        );
        assert_eq!(
            headers.get("idempotency-key"),
            Some(&HeaderValue::from_static("k1"))
        );
        assert_eq!(
            headers.get(CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
    }
}
