//! Connections the pod's rules redirected to the outbound listener. The app dialled an
//! address (`SO_ORIGINAL_DST`) and spoke some protocol (detected from its first bytes):
//!
//! - HTTP/1 whose `Host` names a service, and HTTP to a service's virtual IP, are served as
//!   HTTP, exactly as if the app had called the sidecar itself: routes, retries, mTLS.
//! - Anything else to a service's virtual IP (a database, TLS the app does itself) is opaque
//!   TCP to one of its endpoints, over mTLS between the sidecars ([`mesh_tcp`]).
//! - Everything else goes where it was going, as opaque TCP: HTTP to hosts outside the mesh,
//!   anything no service claims. It is passed through and counted, or refused under
//!   `registry-only`.
//!
//! On the inbound side, plaintext callers redirected to the inbound listener reach the app's
//! port they dialled ([`inbound`]).

mod detect;
mod inbound;
pub mod mesh_tcp;
mod original_dst;
mod prefixed;
mod relay;

pub use detect::{classify, detect, detect_unless_opaque, Detected, Protocol};
pub use inbound::inbound;
pub use original_dst::original_dst;
pub use prefixed::Prefixed;

use crate::routing::Compiled;
use crate::sidecar::Sidecar;
use crate::telemetry::tcp::TcpMetrics;
use outrigger_config::sidecar::OutboundPolicy;
use relay::Resettable;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The label of destinations no service claims.
const PASSTHROUGH: &str = "passthrough";

/// Handles an intercepted connection. Returns it, with the bytes detection read put back in
/// front, when it is HTTP for the mesh to serve; relays or refuses it otherwise.
pub async fn outbound(
    mut stream: TcpStream,
    dst: SocketAddr,
    sidecar: &Sidecar,
) -> Option<Prefixed<TcpStream>> {
    let settings = &sidecar.settings.interception;
    let idle = sidecar.settings.limits.tunnel_idle_timeout;
    let metrics = &sidecar.telemetry.metrics.tcp;
    // The snapshot first: a port its service marks opaque skips detection, like the
    // sidecar-wide opaque ports.
    let state = sidecar.snapshot.current();
    // A virtual IP names a service; an endpoint's IP names one of its instances.
    let (service, pinned) = match state.as_deref() {
        Some(s) => match s.by_virtual_ip.get(&dst.ip()) {
            Some(d) => (Some(d.clone()), None),
            None => match s.by_endpoint_ip.get(&dst.ip()) {
                Some((d, i)) => (Some(d.clone()), Some(*i)),
                None => (None, None),
            },
        },
        None => (None, None),
    };
    let opaque_here = settings.opaque_ports.contains(&dst.port())
        || service
            .as_deref()
            .is_some_and(|d| d.tunnels.opaque_ports.contains(&dst.port()));
    let (protocol, prefix) =
        match detect_unless_opaque(&mut stream, opaque_here, settings.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%dst, error = %e, "intercepted connection failed during detection");
                return None;
            }
        };
    let stream = Prefixed::new(prefix, stream);
    // HTTP to one instance's address whose Host names no service goes to that instance as
    // it is: bytes over mTLS, like any other protocol.
    let to_service = service.is_some() && pinned.is_none();
    let http_for_mesh = !opaque_here
        && match &protocol {
            Protocol::Http1 => {
                to_service
                    || state
                        .as_deref()
                        .is_some_and(|s| host_names_a_service(s, stream.prefix()))
            }
            Protocol::H2c => to_service,
            _ => false,
        };
    if http_for_mesh {
        count(metrics, &protocol, "routed");
        return Some(stream);
    }
    let sni = match &protocol {
        Protocol::Tls { sni } => sni.as_deref(),
        _ => None,
    };
    if let Some(dest) = service {
        count(metrics, &protocol, "routed");
        match mesh_tcp::to_service(stream, &dest, pinned, dst.port(), idle, metrics).await {
            Ok(r) => access(sidecar, dst, &dest.name, &protocol, sni, r),
            Err(e) => {
                tracing::info!(%dst, destination = %dest.name, sni, error = %e, "opaque TCP to a service failed")
            }
        }
        return None;
    }
    if settings.outbound_policy == OutboundPolicy::RegistryOnly {
        count(metrics, &protocol, "refused");
        tracing::info!(%dst, protocol = protocol.as_str(), "intercepted connection refused: no service claims its destination (registry-only)");
        stream.reset();
        return None;
    }
    count(metrics, &protocol, "passthrough");
    let labels = ["outbound", PASSTHROUGH];
    let timeouts = relay::Timeouts {
        connect: settings.connect_timeout,
        idle,
    };
    match relay::relay(stream, dst, timeouts, metrics, labels).await {
        Ok(r) => access(sidecar, dst, PASSTHROUGH, &protocol, sni, r),
        Err(e) => tracing::info!(%dst, sni, error = %e, "intercepted connection failed"),
    }
    None
}

fn access(
    sidecar: &Sidecar,
    dst: SocketAddr,
    destination: &str,
    protocol: &Protocol,
    sni: Option<&str>,
    r: relay::Relayed,
) {
    if sidecar.settings.access_log {
        tracing::info!(
            target: "access",
            %dst, destination, protocol = protocol.as_str(), sni,
            sent = r.sent, received = r.received, reset = r.reset,
            "tcp"
        );
    }
}

fn count(metrics: &TcpMetrics, protocol: &Protocol, outcome: &str) {
    metrics
        .intercepted
        .with_label_values(&[protocol.as_str(), outcome])
        .inc();
}

/// Whether an HTTP/1 request head's `Host` is one the mesh routes.
fn host_names_a_service(state: &Compiled, head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    // A head cut short, or with more headers than fit here, is served by hyper, which
    // answers it properly; only a complete head is looked into.
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    host.is_some_and(|h| state.outbound.lookup(Some(h)).is_some())
}
