//! Pooled upstream clients, one per destination, kept across snapshots while the destination's
//! protocol, connect timeout and connection limit stay the same, so a config push never throws
//! away warm keep-alive connections. The connector counts open connections and refuses a new
//! one past `max_connections`.

use crate::body::RequestBody;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outrigger_config::Protocol;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

pub type HttpClient = Client<LimitedConnector, RequestBody>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub destination: String,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub max_connections: u32,
}

#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<ClientKey, HttpClient>>,
}

impl Clients {
    /// Called when compiling a snapshot, never per request.
    pub fn get(&self, key: ClientKey) -> HttpClient {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        // A destination whose settings changed gets a new client; the old one's pool closes
        // once the last request using it is done.
        map.retain(|k, _| k.destination != key.destination || *k == key);
        map.entry(key.clone())
            .or_insert_with(|| build(&key))
            .clone()
    }
}

/// The connection limit was reached; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("connection limit of {0} reached")]
pub struct ConnectionLimit(pub u32);

#[derive(Clone)]
pub struct LimitedConnector {
    inner: HttpConnector,
    open: Arc<AtomicUsize>,
    max: u32,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for LimitedConnector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (open, max) = (self.open.clone(), self.max);
        if open.fetch_add(1, Ordering::AcqRel) >= max as usize {
            open.fetch_sub(1, Ordering::AcqRel);
            return Box::pin(async move { Err(Box::new(ConnectionLimit(max)) as BoxError) });
        }
        let guard = OpenGuard(open);
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(Counted { io, _guard: guard })
        })
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that counts against the limit until it closes.
pub struct Counted {
    io: TokioIo<TcpStream>,
    _guard: OpenGuard,
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

fn build(key: &ClientKey) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let connector = LimitedConnector {
        inner: http,
        open: Arc::new(AtomicUsize::new(0)),
        max: key.max_connections,
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // The proxy sets Host itself (the app's authority, not the endpoint address).
        .set_host(false);
    if key.protocol == Protocol::Http2 {
        b.http2_only(true)
            .http2_adaptive_window(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false);
    }
    b.build(connector)
}
