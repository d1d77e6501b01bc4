//! Admission: what every request must pass before a destination is looked for. Under strict
//! mTLS a plaintext request is refused and its connection ended ([`super::strict`]); a header
//! block over `max_header_bytes` is refused; CONNECT is not proxied; `Host` must follow the
//! RFC's rules ([`super::host`]). Framing the request head gets wrong (Content-Length,
//! Transfer-Encoding) never gets here: hyper's parser answers it with a 400 first.

use super::strict;
use crate::error::ProxyError;
use crate::peer::Peer;
use crate::routing::Compiled;
use crate::Direction;
use http::Request;

/// Lets the request on, or says why not.
pub fn check<B>(
    state: &Compiled,
    direction: Direction,
    peer: &Peer,
    req: &Request<B>,
    max_header_bytes: usize,
) -> Result<(), ProxyError> {
    // The mode of the snapshot this request runs on, not the one the connection was
    // accepted under: strict applies to every request from the moment it is in force.
    if direction == Direction::Inbound && strict::refuses(state.mtls, peer.mtls) {
        peer.closer.close();
        return Err(ProxyError::MtlsRequired);
    }
    if super::headers::header_block_size(req.headers(), req.uri()) > max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::MethodNotSupported);
    }
    super::host::check(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::test_support::compiled;
    use std::sync::Arc;
    use std::time::Duration;

    const STRICT: &str = "service: shop\nmtls: {mode: strict}\n";
    const PERMISSIVE: &str = "service: shop\nmtls: {mode: permissive}\n";

    fn get() -> Request<()> {
        Request::get("/").body(()).expect("req")
    }

    #[tokio::test]
    async fn strict_refuses_plaintext_inbound_and_ends_its_connection() {
        let strict = compiled(STRICT);
        let plain = Peer::plaintext("127.0.0.1:1".parse().expect("addr"));
        assert_eq!(
            check(&strict, Direction::Inbound, &plain, &get(), 64 * 1024),
            Err(ProxyError::MtlsRequired)
        );
        // The connection was told to end: `closed` resolves at once.
        tokio::time::timeout(Duration::from_secs(5), plain.closer.closed())
            .await
            .expect("the connection is asked to close");

        let mtls = Peer::mtls("127.0.0.1:2".parse().expect("addr"), Some(Arc::from("id")));
        assert_eq!(
            check(&strict, Direction::Inbound, &mtls, &get(), 64 * 1024),
            Ok(())
        );
        // Outbound requests come from the local app: never over mTLS, never refused for it.
        assert_eq!(
            check(&strict, Direction::Outbound, &plain, &get(), 64 * 1024),
            Ok(())
        );
        let permissive = compiled(PERMISSIVE);
        assert_eq!(
            check(&permissive, Direction::Inbound, &plain, &get(), 64 * 1024),
            Ok(())
        );
    }

    #[test]
    fn a_header_block_over_the_bound_is_refused() {
        let state = compiled(PERMISSIVE);
        let peer = Peer::plaintext("127.0.0.1:1".parse().expect("addr"));
        let req = Request::get("/")
            .header("x-big", "a".repeat(2000))
            .body(())
            .expect("req");
        assert_eq!(
            check(&state, Direction::Outbound, &peer, &req, 1024),
            Err(ProxyError::HeadersTooLarge)
        );
        assert_eq!(
            check(&state, Direction::Outbound, &peer, &req, 4096),
            Ok(())
        );
    }

    #[test]
    fn host_rules_are_part_of_admission() {
        let state = compiled(PERMISSIVE);
        let peer = Peer::plaintext("127.0.0.1:1".parse().expect("addr"));
        let req = Request::get("/")
            .header("host", "payment")
            .header("host", "evil")
            .body(())
            .expect("req");
        assert_eq!(
            check(&state, Direction::Outbound, &peer, &req, 64 * 1024),
            Err(ProxyError::DuplicateHost)
        );
    }

    #[test]
    fn connect_is_not_proxied() {
        let state = compiled(PERMISSIVE);
        let peer = Peer::plaintext("127.0.0.1:1".parse().expect("addr"));
        let req = Request::connect("db.example:5432").body(()).expect("req");
        assert_eq!(
            check(&state, Direction::Outbound, &peer, &req, 64 * 1024),
            Err(ProxyError::MethodNotSupported)
        );
    }
}
