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
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
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
    Generated {
        left: total,
        chunk: Bytes::from(vec![b'x'; 64 * 1024]),
    }
    .boxed()
}

struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// A body fed by hand, to play a slow peer: every `Bytes` sent is one data frame, and dropping
/// the sender ends the body. No length is known up front (HTTP/1.1 sends it chunked).
pub fn channel_body(capacity: usize) -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (tx, ChannelBody { rx }.boxed())
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
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
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    let Ok(raw) = raw_exchange(admin, req.as_bytes(), Duration::from_secs(5)).await else {
        return (0, String::new());
    };
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Writes `bytes`, then reads until the peer closes or `timeout` passes.
pub async fn raw_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    Ok(out)
}

/// One h2c (prior knowledge) connection to `addr`. Unlike the pooled [`h2`] client, requests
/// sent on it keep their own `:authority` (e.g. `http://payment/x`) whatever address it
/// connects to, as an app talking to its sidecar does.
pub async fn h2_conn(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect for h2c");
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

/// Reads a response body fully into memory.
pub async fn collect(res: Response<hyper::body::Incoming>) -> Response<Bytes> {
    let (parts, body) = res.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30s")
        .expect("read body")
        .to_bytes();
    Response::from_parts(parts, bytes)
}

/// Reads from a raw stream until the end of an HTTP/1.x head (`\r\n\r\n`), within `timeout`.
/// Returns the head (as text, without the blank line) and any bytes read past it.
pub async fn read_head(s: &mut tokio::net::TcpStream, timeout: Duration) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return i;
            }
            let n = s.read(&mut chunk).await.expect("read response head");
            assert!(
                n > 0,
                "connection closed before a full head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let end = tokio::time::timeout(timeout, read)
        .await
        .expect("response head in time");
    let rest = buf.split_off(end + 4);
    buf.truncate(end);
    (String::from_utf8_lossy(&buf).into_owned(), rest)
}

/// The value of header `name` (case-insensitive) in a raw head from [`read_head`].
pub fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Reads one HTTP/1.1 response with a `content-length` body from a raw stream.
pub async fn read_response(s: &mut tokio::net::TcpStream, timeout: Duration) -> (String, Vec<u8>) {
    let (head, mut body) = read_head(s, timeout).await;
    let len: usize = head_header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("response without content-length: {head}"));
    let need = len.saturating_sub(body.len());
    let mut more = vec![0u8; need];
    tokio::time::timeout(timeout, s.read_exact(&mut more))
        .await
        .expect("response body in time")
        .expect("read response body");
    body.extend_from_slice(&more);
    (head, body)
}
