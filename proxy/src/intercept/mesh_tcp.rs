//! Opaque TCP between sidecars. The calling sidecar connects to an endpoint of the service
//! (the peer sidecar's inbound listener) over mTLS with ALPN [`OPAQUE_ALPN`], sends the port
//! the app dialled in two bytes, then relays; the peer checks the caller's identity against
//! the service's allow-list as it does for HTTP, and relays to that port of its app
//! ([`inbound`]). Without mTLS in the mesh, the app's port on the endpoint's host is dialled
//! directly.

use super::prefixed::Prefixed;
use super::relay::{connect, splice, RelayError, Relayed, Resettable};
use crate::peer::Peer;
use crate::routing::{Compiled, Dest};
use crate::sidecar::Sidecar;
use crate::telemetry::tcp::TcpMetrics;
use crate::tls::OPAQUE_ALPN;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Endpoints tried before the app's connection is given up on.
const ATTEMPTS: usize = 3;
/// How long the peer waits for the port header after the handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MeshTcpError {
    #[error("service {0:?} has no endpoints")]
    NoEndpoints(std::sync::Arc<str>),
    #[error(transparent)]
    Connect(#[from] RelayError),
    #[error("mTLS handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("mTLS handshake with {addr} timed out")]
    HandshakeTimeout { addr: SocketAddr },
    #[error("sending the port header to {addr}: {source}")]
    Header {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Relays an app's connection to `port` of service `dest`, trying up to three endpoints, or
/// only endpoint `pinned` when the app dialled that instance's address.
pub async fn to_service(
    client: Prefixed<TcpStream>,
    dest: &Dest,
    pinned: Option<usize>,
    port: u16,
    idle: Duration,
    metrics: &TcpMetrics,
) -> Result<Relayed, MeshTcpError> {
    let n = dest.endpoints.len();
    if n == 0 {
        client.reset();
        return Err(MeshTcpError::NoEndpoints(dest.name.clone()));
    }
    let (start, attempts) = match pinned {
        Some(i) => (i, 1),
        None => (dest.rr.fetch_add(1, Ordering::Relaxed), n.min(ATTEMPTS)),
    };
    let mut last = None;
    for i in 0..attempts {
        let e = &dest.endpoints[(start + i) % n];
        if pinned.is_none() && e.state.outlier.is_ejected() && n > 1 {
            continue;
        }
        let labels = ["outbound", &*dest.name];
        let attempt = match &dest.tunnels.opaque_tls {
            Some(tls) => match mtls(e.addr, tls, port, &dest.tunnels).await {
                Ok(up) => return Ok(splice(client, up, idle, metrics, labels).await),
                Err(err) => err,
            },
            None => match connect(
                SocketAddr::new(e.addr.ip(), port),
                dest.tunnels.connect_timeout,
            )
            .await
            {
                Ok(up) => return Ok(splice(client, up, idle, metrics, labels).await),
                Err(err) => err.into(),
            },
        };
        tracing::debug!(endpoint = %e.addr, error = %attempt, "opaque connect failed; trying another endpoint");
        last = Some(attempt);
    }
    client.reset();
    Err(last.unwrap_or_else(|| MeshTcpError::NoEndpoints(dest.name.clone())))
}

async fn mtls(
    addr: SocketAddr,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    port: u16,
    target: &crate::routing::Tunnels,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, MeshTcpError> {
    let tcp = connect(addr, target.connect_timeout).await?;
    // The peer is verified by its SPIFFE identity, not by name; the IP is only the SNI-less
    // server name rustls needs.
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let mut up = match tokio::time::timeout(
        target.tls_handshake_timeout,
        connector.connect(name, tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(MeshTcpError::Handshake { addr, source }),
        Err(_) => return Err(MeshTcpError::HandshakeTimeout { addr }),
    };
    up.write_all(&port.to_be_bytes())
        .await
        .map_err(|source| MeshTcpError::Header { addr, source })?;
    Ok(up)
}

/// The peer's side: an mTLS connection that negotiated [`OPAQUE_ALPN`].
pub async fn inbound(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: &Peer,
    sidecar: &Sidecar,
) {
    let metrics = &sidecar.telemetry.metrics;
    let Some(state) = sidecar.snapshot.current() else {
        tls.reset();
        return;
    };
    if !crate::forward::destination::allowed(&state, peer) {
        metrics
            .authz_denied
            .with_label_values(&[&state.service])
            .inc();
        tracing::info!(peer = %peer.addr, identity = peer.identity.as_deref().unwrap_or("-"), "opaque TCP refused: not on the allow-list");
        tls.reset();
        return;
    }
    let mut header = [0u8; 2];
    match tokio::time::timeout(HEADER_TIMEOUT, tls.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        _ => {
            tls.reset();
            return;
        }
    }
    let port = u16::from_be_bytes(header);
    let Some(app) = app_address(&state, port) else {
        tracing::info!(port, "opaque TCP refused: this sidecar fronts no app");
        tls.reset();
        return;
    };
    let connect_timeout = sidecar.settings.interception.connect_timeout;
    let app_conn = match connect(app, connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "opaque TCP to the app failed");
            tls.reset();
            return;
        }
    };
    let idle = sidecar.settings.limits.tunnel_idle_timeout;
    let r = splice(
        tls,
        app_conn,
        idle,
        &metrics.tcp,
        ["inbound", &state.service],
    )
    .await;
    if sidecar.settings.access_log {
        tracing::info!(target: "access", peer = %peer.addr, identity = peer.identity.as_deref().unwrap_or("-"), %app, sent = r.sent, received = r.received, reset = r.reset, "tcp inbound");
    }
}

/// `port` on the app's host: the app this sidecar fronts, at the port the caller dialled.
fn app_address(state: &Compiled, port: u16) -> Option<SocketAddr> {
    let app = state.inbound.as_ref()?.endpoints.first()?.addr;
    Some(SocketAddr::new(app.ip(), port))
}

/// Whether an mTLS connection carries opaque TCP.
pub fn is_opaque(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(OPAQUE_ALPN)
}
