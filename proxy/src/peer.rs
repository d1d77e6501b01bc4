//! Who is on the other end of a downstream connection, as the listener found out once at
//! accept (address, verified identity) and what every request on it shares (the identity
//! header value, a way to end the connection). The listener makes it; the request path reads
//! it.

use http::HeaderValue;
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Who is on the other end of a connection. Made once per connection; requests share it.
#[derive(Debug)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The verified SPIFFE identity, for mTLS connections.
    pub identity: Option<Arc<str>>,
    /// `identity` as the header value the local app is given, built once per connection.
    pub client_id: Option<HeaderValue>,
    pub mtls: bool,
    /// Ends this connection gracefully once the request in flight is answered.
    pub closer: ConnCloser,
    /// Tunnels made from this connection's requests (upgrades).
    pub tunnels: Tunnels,
}

impl Peer {
    pub fn plaintext(addr: std::net::SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
            client_id: None,
            mtls: false,
            closer: ConnCloser::default(),
            tunnels: Tunnels::default(),
        }
    }

    /// A peer whose client certificate was verified; `identity` is its SPIFFE id, if the
    /// certificate named exactly one.
    pub fn mtls(addr: std::net::SocketAddr, identity: Option<Arc<str>>) -> Self {
        Self {
            client_id: identity
                .as_deref()
                .and_then(|i| HeaderValue::from_str(i).ok()),
            identity,
            mtls: true,
            ..Self::plaintext(addr)
        }
    }
}

/// Lets a request end the connection it came on. `Notify` keeps the wake-up when the
/// connection is not waiting for it at that moment, so a close is never lost.
#[derive(Debug, Default)]
pub struct ConnCloser(Notify);

impl ConnCloser {
    pub fn close(&self) {
        self.0.notify_one();
    }

    /// Resolves once a request asked for the connection to end.
    pub async fn closed(&self) {
        self.0.notified().await
    }
}

/// Keeps a connection counted while a tunnel made from it lives: once hyper hands an upgraded
/// connection over, its HTTP serving ends, but the bytes still flow. The listener waits for
/// every hold to drop before it gives back the connection's slot (`max_connections`) and
/// before its drain counts the connection as finished, so shutdown waits for tunnels within
/// the grace period instead of cutting them.
#[derive(Debug)]
pub struct Tunnels(watch::Sender<()>);

impl Default for Tunnels {
    fn default() -> Self {
        Self(watch::channel(()).0)
    }
}

/// Held by a tunnel for as long as it runs.
#[derive(Debug)]
pub struct TunnelHold {
    _held: watch::Receiver<()>,
}

impl Tunnels {
    pub fn hold(&self) -> TunnelHold {
        TunnelHold {
            _held: self.0.subscribe(),
        }
    }

    /// Resolves once no tunnel holds the connection (at once when none ever did).
    pub async fn released(&self) {
        self.0.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_released_only_when_its_last_tunnel_ends() {
        let tunnels = Tunnels::default();
        tunnels.released().await;
        let (a, b) = (tunnels.hold(), tunnels.hold());
        let released = tunnels.released();
        tokio::pin!(released);
        assert!(futures_poll(&mut released).await.is_none());
        drop(a);
        assert!(futures_poll(&mut released).await.is_none());
        drop(b);
        assert!(futures_poll(&mut released).await.is_some());
    }

    async fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        tokio::time::timeout(std::time::Duration::from_millis(1), f)
            .await
            .ok()
    }
}
