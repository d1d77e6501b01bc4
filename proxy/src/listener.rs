//! Accept loops for the outbound and inbound listeners. Each connection speaks HTTP/1.1 or h2c
//! (prior knowledge), detected from its first bytes, and can be ended gracefully, by shutdown
//! (for every connection) or by one of its own requests (an inbound plaintext connection once
//! strict mTLS applies): HTTP/1 connections close after the response in flight, HTTP/2 ones get
//! GOAWAY.

use crate::forward;
pub use crate::peer::{ConnCloser, Peer};
use crate::sidecar::Sidecar;
use crate::Direction;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use outrigger_config::ProxySettings;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[cfg(test)]
mod tests;

pub struct Listener {
    stop: oneshot::Sender<()>,
    accepting: JoinHandle<Drain>,
}

/// Tells a listener's connections to finish, and learns when they all have: each connection
/// holds a receiver until it ends.
struct Drain(watch::Sender<bool>);

impl Listener {
    pub fn spawn(listener: TcpListener, direction: Direction, sidecar: Arc<Sidecar>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let accepting = tokio::spawn(accept_loop(listener, direction, sidecar, stopped));
        Self { stop, accepting }
    }

    /// Stops accepting, asks every connection to finish gracefully, and waits for them until
    /// `deadline`. Returns whether all of them finished in time.
    pub async fn drain(self, deadline: Instant) -> bool {
        let _ = self.stop.send(());
        let Ok(Drain(draining)) = self.accepting.await else {
            return true;
        };
        draining.send_replace(true);
        tokio::time::timeout_at(deadline, draining.closed())
            .await
            .is_ok()
    }
}

pub(crate) fn builder(settings: &ProxySettings) -> auto::Builder<TokioExecutor> {
    let limit = settings.max_header_bytes;
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

enum Accepted {
    Plain(TcpStream),
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        Option<Arc<str>>,
    ),
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Inbound security by mode: strict takes only mTLS, permissive takes mTLS or plaintext
/// (told apart by the first byte: a TLS record starts with 0x16), off takes plaintext. Before
/// the first snapshot the mode is unknown, so nothing is taken: a sidecar fed by the control
/// plane is never open while it waits for its first push. The mode can change after accept;
/// `forward` checks it again on every request.
async fn secure(sidecar: &Sidecar, stream: TcpStream) -> Option<Accepted> {
    use outrigger_config::MtlsMode;
    let inbound = &sidecar.telemetry.metrics.inbound;
    let (ok, failed) = (&inbound.handshakes_ok, &inbound.handshakes_failed);
    let Some(state) = sidecar.snapshot.current() else {
        failed.inc();
        tracing::debug!("inbound connection refused: no snapshot applied yet");
        return None;
    };
    let mode = state.mtls;
    if mode == MtlsMode::Off {
        return Some(Accepted::Plain(stream));
    }
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    let is_tls = matches!(peeked, Ok(Ok(1))) && first[0] == 0x16;
    match (is_tls, state.tls_server.clone()) {
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

/// Serves one connection until it ends, ending it gracefully first when the listener drains
/// or one of its requests asks to.
pub(crate) async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    mut draining: watch::Receiver<bool>,
    io: I,
    sidecar: Arc<Sidecar>,
    direction: Direction,
    peer: Peer,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let me = peer.clone();
    let svc = service_fn(move |req| forward::handle(sidecar.clone(), direction, peer.clone(), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut ending = false;
    let ended = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            // A dropped sender (the listener is gone) also ends the connection.
            _ = draining.wait_for(|d| *d), if !ending => {
                conn.as_mut().graceful_shutdown();
                ending = true;
            }
            _ = me.closer.closed(), if !ending => {
                conn.as_mut().graceful_shutdown();
                ending = true;
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, peer = %me.addr, "connection ended with an error");
    }
}

async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    sidecar: Arc<Sidecar>,
    mut stopped: oneshot::Receiver<()>,
) -> Drain {
    let (drain, _) = watch::channel(false);
    let builder = Arc::new(builder(&sidecar.settings));
    let dir = direction.as_str();
    let metrics = &sidecar.telemetry.metrics;
    let accepted = metrics.connections.with_label_values(&[dir]);
    let open = metrics.connections_open.with_label_values(&[dir]);
    loop {
        let (stream, addr) = tokio::select! {
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
        let sidecar = sidecar.clone();
        let builder = builder.clone();
        let draining = drain.subscribe();
        tokio::spawn(async move {
            let accepted = match direction {
                Direction::Outbound => Some(Accepted::Plain(stream)),
                Direction::Inbound => secure(&sidecar, stream).await,
            };
            match accepted {
                Some(Accepted::Plain(stream)) => {
                    let peer = Peer::plaintext(addr);
                    serve(&builder, draining, stream, sidecar, direction, peer).await
                }
                Some(Accepted::Tls(stream, identity)) => {
                    let peer = Peer::mtls(addr, identity);
                    serve(&builder, draining, *stream, sidecar, direction, peer).await
                }
                None => {}
            }
            open.dec();
        });
    }
    Drain(drain)
}
