//! Destination choice. Outbound, the request's authority names the destination (404
//! `unknown-authority` when none does). Inbound, the destination is the local app, and the
//! caller's verified identity must be on the service's allow-list when mTLS is on.

use super::telemetry::authority;
use crate::error::ProxyError;
use crate::peer::Peer;
use crate::routing::{Compiled, Dest};
use crate::telemetry::metrics::Metrics;
use crate::Direction;
use http::{Request, Version};
use outrigger_config::MtlsMode;

/// The destination the request goes to, borrowed from the snapshot it runs on.
pub fn resolve<'s, B>(
    state: &'s Compiled,
    direction: Direction,
    peer: &Peer,
    req: &Request<B>,
    metrics: &Metrics,
) -> Result<&'s Dest, ProxyError> {
    match direction {
        Direction::Outbound => {
            let host = authority(req);
            if host.is_none() && req.version() == Version::HTTP_11 {
                return Err(ProxyError::MissingAuthority);
            }
            state
                .outbound
                .lookup(host)
                .map(|d| &**d)
                .ok_or(ProxyError::UnknownAuthority)
        }
        Direction::Inbound => {
            if peer.mtls {
                &metrics.inbound.mtls
            } else {
                &metrics.inbound.plaintext
            }
            .inc();
            if !allowed(state, peer) {
                metrics
                    .authz_denied
                    .with_label_values(&[&state.service])
                    .inc();
                return Err(ProxyError::Forbidden);
            }
            state.inbound.as_deref().ok_or(ProxyError::NoInbound)
        }
    }
}

/// Whether the caller may call this service. With mTLS off there are no identities to
/// check, so the allow-list cannot apply.
pub(crate) fn allowed(state: &Compiled, peer: &Peer) -> bool {
    state.allow.is_empty()
        || state.mtls == MtlsMode::Off
        || peer
            .identity
            .as_deref()
            .is_some_and(|id| state.allow.iter().any(|a| &**a == id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::test_support::compiled;
    use std::sync::Arc;

    const MESH: &str = "service: shop\n\
        inbound: {app: \"127.0.0.1:8080\"}\n\
        destinations:\n  - name: payment\n    endpoints: [{address: \"127.0.0.1:9001\"}]\n";

    fn peer() -> Peer {
        Peer::plaintext("127.0.0.1:1".parse().expect("addr"))
    }

    #[test]
    fn outbound_goes_by_authority() {
        let state = compiled(MESH);
        let m = Metrics::new();
        let req = Request::get("/")
            .header("host", "payment")
            .body(())
            .expect("req");
        let d = resolve(&state, Direction::Outbound, &peer(), &req, &m).expect("found");
        assert_eq!(&*d.name, "payment");
        let req = Request::get("/")
            .header("host", "nobody")
            .body(())
            .expect("req");
        assert_eq!(
            resolve(&state, Direction::Outbound, &peer(), &req, &m).err(),
            Some(ProxyError::UnknownAuthority)
        );
        let req = Request::get("/").body(()).expect("req");
        assert_eq!(
            resolve(&state, Direction::Outbound, &peer(), &req, &m).err(),
            Some(ProxyError::MissingAuthority)
        );
    }

    #[test]
    fn inbound_goes_to_the_app_and_is_counted_by_security() {
        let state = compiled(MESH);
        let m = Metrics::new();
        let req = Request::get("/").body(()).expect("req");
        let d = resolve(&state, Direction::Inbound, &peer(), &req, &m).expect("app");
        assert_eq!(d.direction, Direction::Inbound);
        assert_eq!(m.inbound.plaintext.get(), 1);
        let bare = compiled("service: shop\n");
        assert_eq!(
            resolve(&bare, Direction::Inbound, &peer(), &req, &m).err(),
            Some(ProxyError::NoInbound)
        );
    }

    #[test]
    fn the_allow_list_holds_only_under_mtls() {
        let allow = "service: shop\nmtls: {mode: permissive}\n\
            inbound: {app: \"127.0.0.1:8080\", allow: [\"spiffe://mesh/service/order\"]}\n";
        let state = compiled(allow);
        let m = Metrics::new();
        let req = Request::get("/").body(()).expect("req");
        let order = Peer::mtls(
            "127.0.0.1:2".parse().expect("addr"),
            Some(Arc::from("spiffe://mesh/service/order")),
        );
        let user = Peer::mtls(
            "127.0.0.1:3".parse().expect("addr"),
            Some(Arc::from("spiffe://mesh/service/user")),
        );
        assert!(resolve(&state, Direction::Inbound, &order, &req, &m).is_ok());
        assert_eq!(
            resolve(&state, Direction::Inbound, &user, &req, &m).err(),
            Some(ProxyError::Forbidden)
        );
        assert_eq!(
            resolve(&state, Direction::Inbound, &peer(), &req, &m).err(),
            Some(ProxyError::Forbidden),
            "no identity, not on the list"
        );
        assert_eq!(m.authz_denied.with_label_values(&["shop"]).get(), 2);
        let off = compiled(&allow.replace("permissive", "off"));
        assert!(resolve(&off, Direction::Inbound, &user, &req, &m).is_ok());
    }
}
