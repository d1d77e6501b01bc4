//! A connector that counts open upstream connections and refuses a new one past the limit,
//! failing fast instead of queueing.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// The peer did not finish the TLS handshake in time; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake not finished within {0:?}")]
pub struct HandshakeTimeout(pub std::time::Duration);

/// The connection limit was reached; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("connection limit of {0} reached")]
pub struct ConnectionLimit(pub u32);

#[derive(Clone)]
pub struct LimitedConnector {
    inner: HttpConnector,
    open: Arc<AtomicUsize>,
    max: u32,
    /// Bounds the TLS handshake on its own: the connect timeout ends when TCP connects, and a
    /// peer that accepts but never answers the ClientHello would otherwise hold the request
    /// (and a connection slot) until the request's deadline.
    handshake_timeout: std::time::Duration,
}

use crate::error::BoxError;

impl LimitedConnector {
    pub fn new(inner: HttpConnector, max: u32, handshake_timeout: std::time::Duration) -> Self {
        Self {
            inner,
            open: Arc::new(AtomicUsize::new(0)),
            max,
            handshake_timeout,
        }
    }
}

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
pub struct Counted<T = TokioIo<TcpStream>> {
    io: T,
    _guard: OpenGuard,
}

impl LimitedConnector {
    /// A counted mTLS connection: TCP to `uri`'s address, then a TLS 1.3 handshake that
    /// verifies the peer with `tls` (its verifier checks the peer's SPIFFE identity).
    pub async fn connect_tls(
        &self,
        uri: http::Uri,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Counted<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>, BoxError> {
        let Counted { io, _guard } =
            tower_service::Service::call(&mut self.clone(), uri.clone()).await?;
        let tcp = io.into_inner();
        let ip = tcp.peer_addr()?.ip();
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
        let stream = tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| HandshakeTimeout(self.handshake_timeout))??;
        Ok(Counted {
            io: TokioIo::new(stream),
            _guard,
        })
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_answers_the_client_hello_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri: http::Uri = format!("http://{}", listener.local_addr().expect("addr"))
            .parse()
            .expect("uri");
        // Accepts, then says nothing: a black-holed or wedged TLS peer.
        let held = tokio::spawn(async move { listener.accept().await.map(|(tcp, _)| tcp) });
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let connector = LimitedConnector::new(HttpConnector::new(), 10, Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            connector.connect_tls(uri, Arc::new(tls)),
        )
        .await
        .expect("the handshake timeout fired before the test's own bound");
        let err = outcome.err().expect("no handshake can succeed");
        assert!(err.is::<HandshakeTimeout>(), "got {err}");
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert_eq!(
            connector.open.load(Ordering::SeqCst),
            0,
            "the slot is given back"
        );
        drop(held);
    }
}
