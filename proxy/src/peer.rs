//! Who is on the other end of a downstream connection, as the listener found out once at
//! accept (address, verified identity) and what every request on it shares (the identity
//! header value, a way to end the connection). The listener makes it; the request path reads
//! it.

use http::HeaderValue;
use std::sync::Arc;
use tokio::sync::Notify;

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
}

impl Peer {
    pub fn plaintext(addr: std::net::SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
            client_id: None,
            mtls: false,
            closer: ConnCloser::default(),
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
