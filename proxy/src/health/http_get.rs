//! One plain HTTP/1.1 request to a local address, for the probes the sidecar makes on the
//! kubelet's behalf and for `outrigger-proxy await`: no pool, no redirects, a hard deadline.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Enough of a probe's answer to show what it said; the rest is dropped.
const MAX_BODY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("HTTP with {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
}

/// `method path` on `addr`, with `headers` (Host defaults to the address), within `timeout`.
pub async fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), GetError> {
    match tokio::time::timeout(timeout, exchange(method, addr, path, headers)).await {
        Ok(r) => r,
        Err(_) => Err(GetError::Timeout {
            addr,
            after: timeout,
        }),
    }
}

async fn exchange(
    method: Method,
    addr: SocketAddr,
    path: &str,
    headers: &HeaderMap,
) -> Result<(StatusCode, Bytes), GetError> {
    let http = |e: &dyn std::fmt::Display| GetError::Http {
        addr,
        reason: e.to_string(),
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| GetError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| http(&e))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    req.headers_mut().extend(headers.clone());
    if !req.headers().contains_key(http::header::HOST) {
        let host = http::HeaderValue::from_str(&addr.to_string()).map_err(|e| http(&e))?;
        req.headers_mut().insert(http::header::HOST, host);
    }
    let res = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = res.status();
    let body = Limited::new(res.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    conn.abort();
    Ok((status, body))
}
