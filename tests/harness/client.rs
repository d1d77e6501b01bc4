//! Real HTTP clients: hyper's pooled client over HTTP/1.1 or h2c (prior knowledge), and raw
//! TCP for bytes no well-behaved client would send.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;
pub type TestClient = Client<HttpConnector, TestBody>;

pub fn h1() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2() -> TestClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A body of `total` bytes of `x` produced chunk by chunk, with no length known up front
/// (so HTTP/1.1 sends it chunked).
pub fn generated(total: u64) -> TestBody {
    Generated { left: total, chunk: Bytes::from(vec![b'x'; 64 * 1024]) }.boxed()
}

struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

pub fn request(method: &str, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

/// Sends and reads the whole response body.
pub async fn send(client: &TestClient, req: Request<TestBody>) -> Response<Bytes> {
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response within 30s")
        .expect("request succeeds at the HTTP level");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("read body").to_bytes();
    Response::from_parts(parts, bytes)
}

pub async fn get(client: &TestClient, url: &str) -> Response<Bytes> {
    send(client, request("GET", url).body(empty()).expect("request")).await
}

/// GET on the admin port: (status, body); (0, "") if it does not answer.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    admin_request(admin, "GET", path).await
}

pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let req = format!("{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
    let Ok(raw) = raw_exchange(admin, req.as_bytes(), Duration::from_secs(5)).await else {
        return (0, String::new());
    };
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Writes `bytes`, then reads until the peer closes or `timeout` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    Ok(out)
}
