//! Plaintext connections the pod's rules redirected to the inbound listener (permissive mTLS,
//! or a mesh with mTLS off): a caller outside the mesh dialled one of the app's ports, and
//! `SO_ORIGINAL_DST` says which.
//!
//! - HTTP to the app's own port (the one `inbound.app` names) is served as HTTP, exactly like a
//!   call on the inbound listener: authorisation, metrics, access log.
//! - Anything else (another port the app listens on, a protocol that is not HTTP, a port
//!   marked opaque) is relayed as TCP to that port of the app, after the same authorisation.
//!
//! mTLS callers never come this way: sidecars dial a peer's inbound listener directly, and
//! opaque TCP between them carries its port in its own header ([`super::mesh_tcp`]).

use super::detect::detect_unless_opaque;
use super::prefixed::Prefixed;
use super::relay::{self, Resettable};
use crate::peer::Peer;
use crate::sidecar::Sidecar;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Returns the connection, with the bytes detection read put back in front, when it is HTTP
/// for the app's port; relays or refuses it otherwise.
pub async fn inbound(
    mut stream: TcpStream,
    dst: SocketAddr,
    peer: &Peer,
    sidecar: &Sidecar,
) -> Option<Prefixed<TcpStream>> {
    let settings = &sidecar.settings.interception;
    let state = sidecar.snapshot.current()?;
    let Some(app) = state
        .inbound
        .as_ref()
        .and_then(|i| i.endpoints.first())
        .map(|e| e.addr)
    else {
        tracing::info!(%dst, peer = %peer.addr, "inbound connection refused: this sidecar fronts no app");
        stream.reset();
        return None;
    };
    let port = dst.port();
    let opaque = settings.opaque_ports.contains(&port);
    let (protocol, prefix) =
        match detect_unless_opaque(&mut stream, opaque, settings.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%dst, error = %e, "inbound connection failed during detection");
                return None;
            }
        };
    let stream = Prefixed::new(prefix, stream);
    if port == app.port() && protocol.is_http() {
        return Some(stream);
    }
    let metrics = &sidecar.telemetry.metrics;
    if !crate::forward::destination::allowed(&state, peer) {
        metrics
            .authz_denied
            .with_label_values(&[&state.service])
            .inc();
        tracing::info!(%dst, peer = %peer.addr, "inbound TCP refused: plaintext callers are not on the allow-list");
        stream.reset();
        return None;
    }
    let to = SocketAddr::new(app.ip(), port);
    let timeouts = relay::Timeouts {
        connect: settings.connect_timeout,
        idle: sidecar.settings.limits.tunnel_idle_timeout,
    };
    let labels = ["inbound", &*state.service];
    match relay::relay(stream, to, timeouts, &metrics.tcp, labels).await {
        Ok(r) if sidecar.settings.access_log => tracing::info!(
            target: "access",
            peer = %peer.addr, app = %to, protocol = protocol.as_str(),
            sent = r.sent, received = r.received, reset = r.reset,
            "tcp inbound"
        ),
        Ok(_) => {}
        Err(e) => tracing::info!(%dst, app = %to, error = %e, "inbound TCP to the app failed"),
    }
    None
}
