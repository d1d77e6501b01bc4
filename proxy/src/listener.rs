//! Accept loops for the outbound and inbound listeners. Each connection speaks HTTP/1.1 or h2c
//! (prior knowledge), detected from its first bytes, and can be ended gracefully, by shutdown
//! (for every connection) or by one of its own requests (an inbound plaintext connection once
//! strict mTLS applies): HTTP/1 connections close after the response in flight, HTTP/2 ones get
//! GOAWAY.
//!
//! Every listener is bounded ([`bounds`], from `proxy.limits`): connections and inbound TLS
//! handshakes are capped at accept, and each connection runs under the TLS handshake, header
//! read ([`timed_io`]), idle and response idle ([`timed_io`] for HTTP/1, [`stream_idle`] for
//! HTTP/2 streams) timeouts, with HTTP/2 PING keepalive and a stream cap, so idle, slow and
//! non-reading clients hold a bounded share of descriptors, memory and in-flight slots.

mod activity;
mod bounds;
mod hyper_errors;
mod stream_idle;
mod timed_io;

use crate::forward;
pub use crate::peer::{ConnCloser, Peer};
use crate::sidecar::Sidecar;
use crate::Direction;
use activity::{Activity, Tracked};
use bounds::Bounds;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use outrigger_config::ProxySettings;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use stream_idle::StreamExec;
use timed_io::TimedIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[cfg(test)]
mod limits_tests;
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

/// Headers a request may have: hyper's own limit, kept (raising it makes hyper parse into a
/// heap array per request instead of its stack one, 2-3 % of the request path's CPU). A head
/// over it is answered in the mesh's format, naming it (`hyper_errors`), and the README says
/// it.
pub(crate) const MAX_HEADERS: usize = 100;

pub(crate) fn builder(settings: &ProxySettings, streams: StreamExec) -> auto::Builder<StreamExec> {
    let limit = settings.max_header_bytes;
    let limits = &settings.limits;
    let mut b = auto::Builder::new(streams);
    // hyper's own limits sit above ours, so that an oversized header block usually reaches
    // the proxy and gets its explained 431 rather than hyper's bare one. hyper's header read
    // timeout is off: it starts when a connection goes idle, so it would also be the
    // keep-alive timeout; `TimedIo` starts ours on a request's first byte.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size((limit + 64 * 1024).max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size((limit + 64 * 1024) as u32)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(Some(limits.http2_keepalive_interval))
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    b
}

enum Accepted {
    Plain(TcpStream),
    /// Redirected by the pod's rules, detected as HTTP for the mesh; the bytes detection
    /// read come first.
    Intercepted(crate::intercept::Prefixed<TcpStream>),
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        Option<Arc<str>>,
    ),
}

/// Inbound security by mode: strict takes only mTLS, permissive takes mTLS or plaintext
/// (told apart by the first byte: a TLS record starts with 0x16), off takes plaintext. Before
/// the first snapshot the mode is unknown, so nothing is taken: a sidecar fed by the control
/// plane is never open while it waits for its first push. The mode can change after accept;
/// `forward` checks it again on every request.
async fn secure(sidecar: &Sidecar, bounds: &Bounds, stream: TcpStream) -> Option<Accepted> {
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
    let patience = bounds.handshake_timeout;
    let peeked = tokio::time::timeout(patience, stream.peek(&mut first)).await;
    let is_tls = matches!(peeked, Ok(Ok(1))) && first[0] == 0x16;
    match (is_tls, state.tls_server.clone()) {
        (true, Some(cfg)) => match handshake(bounds, cfg, stream).await {
            Some(tls) => {
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
            None => {
                failed.inc();
                None
            }
        },
        (false, _) if mode == MtlsMode::Permissive => Some(Accepted::Plain(stream)),
        _ => {
            failed.inc();
            tracing::debug!(tls = is_tls, "inbound connection refused: strict mTLS");
            None
        }
    }
}

/// The server side of an inbound mTLS handshake, within the listener's handshake cap and
/// timeout. Refused at once when the cap is reached: a client told now can try another
/// endpoint, where one queued behind a flood of slow ClientHellos would only time out.
async fn handshake(
    bounds: &Bounds,
    cfg: Arc<rustls::ServerConfig>,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    // Counted only once a TLS record has arrived: a silent client costs no CPU, and the
    // peek before this bounds how long it may stay silent.
    let Ok(_handshaking) = bounds.handshakes.try_acquire() else {
        bounds.refused_handshakes.inc();
        tracing::debug!("inbound connection refused: too many TLS handshakes in progress");
        return None;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    match tokio::time::timeout(bounds.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "inbound mTLS handshake refused");
            None
        }
        Err(_) => {
            bounds.handshake_timeouts.inc();
            tracing::debug!("inbound mTLS handshake timed out");
            None
        }
    }
}

/// Serves one connection until it ends, ending it gracefully first when the listener drains,
/// one of its requests asks to, or it has had no request in flight for the idle timeout.
pub(crate) async fn serve<I>(
    builder: &auto::Builder<StreamExec>,
    mut draining: watch::Receiver<bool>,
    io: I,
    sidecar: Arc<Sidecar>,
    direction: Direction,
    peer: Peer,
    bounds: &Arc<Bounds>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TimedIo::new(io, activity.clone(), bounds.clone());
    let peer = Arc::new(peer);
    let me = peer.clone();
    let requests = activity.clone();
    let svc = service_fn(move |req| {
        let held = requests.begin();
        let handled = forward::handle(sidecar.clone(), direction, peer.clone(), req);
        async move {
            let res = match handled.await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                held.upgrade();
            }
            Ok::<_, Infallible>(res.map(|body| Tracked::new(body, held)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Looked at four times per idle timeout: the connection is idle once five looks in a row
    // saw no request begin and none in flight, i.e. between 1 and 1.5 idle timeouts after its
    // last response ended, for one timer per connection rather than one per request.
    let look = bounds.idle / 4;
    let idle = tokio::time::sleep(look);
    tokio::pin!(idle);
    let (mut seen, mut quiet) = (activity.started(), 0u8);
    let mut ending = false;
    let ended = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = idle.as_mut(), if !ending => {
                let started = activity.started();
                if started == seen && activity.in_flight() == 0 {
                    quiet = quiet.saturating_add(1);
                } else {
                    (seen, quiet) = (started, 0);
                }
                if quiet >= 5 {
                    bounds.idle_timeouts.inc();
                    conn.as_mut().graceful_shutdown();
                    ending = true;
                } else {
                    idle.as_mut().reset(Instant::now() + look);
                }
            }
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
    // hyper handed an upgraded connection over to its tunnel: the connection is still open
    // and keeps its slot, and the drain waits for it, until the tunnel ends.
    me.tunnels.released().await;
    // An HTTP/2 keepalive timeout is not counted apart: hyper ends such a connection as a
    // clean close (GOAWAY NO_ERROR), not an error, so it shows in `connections_open` only.
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
    let dir = direction.as_str();
    let metrics = &sidecar.telemetry.metrics;
    let bounds = Arc::new(Bounds::new(
        &sidecar.settings.limits,
        sidecar.settings.max_header_bytes,
        metrics,
        dir,
    ));
    let builder = Arc::new(builder(&sidecar.settings, StreamExec::new(bounds.clone())));
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
        // Refused by closing at once: the client learns now rather than after a timeout, and
        // the backlog keeps draining so that new connections are refused promptly too.
        let Ok(slot) = bounds.connections.clone().try_acquire_owned() else {
            bounds.refused_connections.inc();
            tracing::debug!(peer = %addr, direction = dir, "connection refused: max_connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        open.inc();
        let open = open.clone();
        let sidecar = sidecar.clone();
        let builder = builder.clone();
        let bounds = bounds.clone();
        let draining = drain.subscribe();
        tokio::spawn(async move {
            let accepted = match direction {
                Direction::Outbound => match crate::intercept::original_dst(&stream) {
                    None => Some(Accepted::Plain(stream)),
                    Some(dst) => crate::intercept::outbound(stream, dst, &sidecar)
                        .await
                        .map(Accepted::Intercepted),
                },
                Direction::Inbound => {
                    // Read before the handshake, which takes the stream: a plaintext caller
                    // the pod's rules redirected here dialled one of the app's ports.
                    let dst = crate::intercept::original_dst(&stream);
                    match (secure(&sidecar, &bounds, stream).await, dst) {
                        (Some(Accepted::Plain(s)), Some(dst)) => {
                            let peer = Peer::plaintext(addr);
                            crate::intercept::inbound(s, dst, &peer, &sidecar)
                                .await
                                .map(Accepted::Intercepted)
                        }
                        (accepted, _) => accepted,
                    }
                }
            };
            match accepted {
                Some(Accepted::Intercepted(stream)) => {
                    let peer = Peer::plaintext(addr);
                    serve(
                        &builder, draining, stream, sidecar, direction, peer, &bounds,
                    )
                    .await
                }
                Some(Accepted::Plain(stream)) => {
                    let peer = Peer::plaintext(addr);
                    serve(
                        &builder, draining, stream, sidecar, direction, peer, &bounds,
                    )
                    .await
                }
                Some(Accepted::Tls(stream, identity))
                    if crate::intercept::mesh_tcp::is_opaque(&stream) =>
                {
                    let peer = Peer::mtls(addr, identity);
                    crate::intercept::mesh_tcp::inbound(*stream, &peer, &sidecar).await
                }
                Some(Accepted::Tls(stream, identity)) => {
                    let peer = Peer::mtls(addr, identity);
                    serve(
                        &builder, draining, *stream, sidecar, direction, peer, &bounds,
                    )
                    .await
                }
                None => {}
            }
            open.dec();
            drop(slot);
        });
    }
    Drain(drain)
}
