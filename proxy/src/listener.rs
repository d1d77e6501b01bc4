//! Accept loops for the outbound and inbound listeners. Each connection speaks HTTP/1.1 or h2c
//! (prior knowledge), detected from its first bytes, and is watched so shutdown can drain it:
//! HTTP/1 connections close after the response in flight, HTTP/2 ones get GOAWAY.

use crate::forward;
use crate::state::Shared;
use crate::Direction;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct Listener {
    stop: oneshot::Sender<()>,
    accepting: JoinHandle<GracefulShutdown>,
}

impl Listener {
    pub fn spawn(listener: TcpListener, direction: Direction, shared: Arc<Shared>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let accepting = tokio::spawn(accept_loop(listener, direction, shared, stopped));
        Self { stop, accepting }
    }

    /// Stops accepting, asks every connection to finish gracefully, and waits for them until
    /// `deadline`. Returns whether all of them finished in time.
    pub async fn drain(self, deadline: Instant) -> bool {
        let _ = self.stop.send(());
        let Ok(graceful) = self.accepting.await else {
            return true;
        };
        tokio::time::timeout_at(deadline, graceful.shutdown())
            .await
            .is_ok()
    }
}

fn builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let limit = shared.settings.max_header_bytes;
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper's own limits sit above ours, so that an oversized header block usually reaches
    // the proxy and gets its explained 431 rather than hyper's bare one.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size((limit + 64 * 1024).max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size((limit + 64 * 1024) as u32)
        .max_concurrent_streams(1024);
    b
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The verified SPIFFE identity, for mTLS connections.
    pub identity: Option<Arc<str>>,
    pub mtls: bool,
}

enum Accepted {
    Plain(TcpStream),
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        Option<Arc<str>>,
    ),
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Inbound security by mode: strict takes only mTLS, permissive takes mTLS or plaintext
/// (told apart by the first byte: a TLS record starts with 0x16), off takes plaintext.
async fn secure(shared: &Shared, stream: TcpStream) -> Option<Accepted> {
    use outrigger_config::MtlsMode;
    let state = shared.current();
    let mode = state.as_ref().map_or(MtlsMode::Off, |s| s.mtls);
    if mode == MtlsMode::Off {
        return Some(Accepted::Plain(stream));
    }
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    let is_tls = matches!(peeked, Ok(Ok(1))) && first[0] == 0x16;
    let (ok, failed) = (
        &shared.metrics.inbound.handshakes_ok,
        &shared.metrics.inbound.handshakes_failed,
    );
    match (is_tls, state.as_ref().and_then(|s| s.tls_server.clone())) {
        (true, Some(cfg)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    ok.inc();
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::tls::verify::spiffe_id)
                        .map(Arc::from);
                    Some(Accepted::Tls(Box::new(tls), identity))
                }
                Ok(Err(e)) => {
                    failed.inc();
                    tracing::debug!(error = %e, "inbound mTLS handshake refused");
                    None
                }
                Err(_) => {
                    failed.inc();
                    None
                }
            }
        }
        (false, _) if mode == MtlsMode::Permissive => Some(Accepted::Plain(stream)),
        _ => {
            failed.inc();
            tracing::debug!(tls = is_tls, "inbound connection refused: strict mTLS");
            None
        }
    }
}

async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    shared: Arc<Shared>,
    direction: Direction,
    peer: Peer,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let svc = service_fn(move |req| forward::handle(shared.clone(), direction, peer.clone(), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, peer = %addr, "connection ended with an error");
    }
}

async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&shared));
    let dir = direction.as_str();
    let accepted = shared.metrics.connections.with_label_values(&[dir]);
    let open = shared.metrics.connections_open.with_label_values(&[dir]);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, direction = dir, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        open.inc();
        let open = open.clone();
        let shared = shared.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let accepted = match direction {
                Direction::Outbound => Some(Accepted::Plain(stream)),
                Direction::Inbound => secure(&shared, stream).await,
            };
            match accepted {
                Some(Accepted::Plain(stream)) => {
                    let from = Peer {
                        addr: peer,
                        identity: None,
                        mtls: false,
                    };
                    serve(&builder, watcher, stream, shared, direction, from).await
                }
                Some(Accepted::Tls(stream, identity)) => {
                    let from = Peer {
                        addr: peer,
                        identity,
                        mtls: true,
                    };
                    serve(&builder, watcher, *stream, shared, direction, from).await
                }
                None => {}
            }
            open.dec();
        });
    }
    graceful
}
