//! The JSON access log: one line per request on stdout. The request path only does a
//! non-blocking `try_send` of the raw fields into a bounded queue; a writer task formats and
//! writes. When the writer falls behind, lines are dropped and counted, never waited for.

use prometheus::IntCounter;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::SystemTime;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const QUEUE: usize = 8192;

#[derive(Debug)]
pub struct Entry {
    pub time: SystemTime,
    pub service: std::sync::Arc<str>,
    pub direction: crate::Direction,
    pub method: http::Method,
    pub authority: Option<http::uri::Authority>,
    pub path: Option<http::uri::PathAndQuery>,
    pub protocol: http::Version,
    pub status: u16,
    pub duration: std::time::Duration,
    pub upstream: Option<SocketAddr>,
    pub dst_service: Option<std::sync::Arc<str>>,
    pub route: Option<std::sync::Arc<str>>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub request_id: Option<http::HeaderValue>,
    pub error: Option<&'static str>,
    pub client: SocketAddr,
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    service: &'a str,
    direction: &'static str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    duration_ms: f64,
    upstream: Option<String>,
    dst_service: Option<&'a str>,
    route: Option<&'a str>,
    bytes_received: u64,
    bytes_sent: u64,
    request_id: Option<&'a str>,
    error: Option<&'static str>,
    client: String,
}

#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer task on `out` (stdout in the binary).
    pub fn spawn<W: AsyncWrite + Unpin + Send + 'static>(out: W, dropped: IntCounter) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, out));
        Self { tx, dropped }
    }

    pub fn log(&self, e: Entry) {
        if self.tx.try_send(e).is_err() {
            self.dropped.inc();
        }
    }
}

async fn write_lines<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Entry>, out: W) {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, out);
    let mut buf = Vec::with_capacity(512);
    while let Some(e) = rx.recv().await {
        buf.clear();
        if serde_json::to_writer(&mut buf, &line(&e)).is_err() {
            continue;
        }
        buf.push(b'\n');
        if out.write_all(&buf).await.is_err() {
            return;
        }
        // Flush when the queue is drained, so a burst becomes one write and a quiet
        // proxy's lines still appear at once.
        if rx.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
}

fn line(e: &Entry) -> Line<'_> {
    Line {
        timestamp: humantime::format_rfc3339_millis(e.time).to_string(),
        service: &e.service,
        direction: e.direction.as_str(),
        method: e.method.as_str(),
        authority: e.authority.as_ref().map_or("", |a| a.as_str()),
        path: e.path.as_ref().map_or("", |p| p.as_str()),
        protocol: match e.protocol {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        status: e.status,
        duration_ms: e.duration.as_secs_f64() * 1000.0,
        upstream: e.upstream.map(|a| a.to_string()),
        dst_service: e.dst_service.as_deref(),
        route: e.route.as_deref(),
        bytes_received: e.bytes_received,
        bytes_sent: e.bytes_sent,
        request_id: e.request_id.as_ref().and_then(|v| v.to_str().ok()),
        error: e.error,
        client: e.client.to_string(),
    }
}
