//! Upstream clients, one per destination, kept across snapshots while the destination's
//! protocol, connect timeout and connection limit stay the same, so a config push never throws
//! away warm keep-alive connections. Both kinds of connection belong to the endpoint's state:
//! HTTP/1 endpoints keep a stack of idle keep-alive connections ([`h1`]); HTTP/2 endpoints get
//! one multiplexed connection each ([`h2`]), which lets the request keep the app's
//! `:authority`. Every connection counts against `max_connections` ([`limited`]).

pub mod h1;
pub mod h2;
pub mod limited;
pub mod upgrade;

pub use limited::{ConnectionLimit, HandshakeTimeout, LimitedConnector};

use crate::body::RequestBody;
use crate::error::BoxError;
use crate::routing::EndpointTarget;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use outrigger_config::Protocol;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub destination: String,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: u32,
}

/// How a destination's requests reach its endpoints: the protocol, and the connector that
/// counts its connections. mTLS only ever runs over HTTP/2, whose connections are keyed by
/// their TLS setting per endpoint ([`h2::H2Slot`]); HTTP/1 is always plaintext.
#[derive(Clone)]
pub struct Upstream {
    protocol: Protocol,
    connector: LimitedConnector,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be had: nothing was sent.
    #[error("connect: {0}")]
    Connect(BoxError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl Upstream {
    pub async fn send(
        &self,
        ep: &EndpointTarget,
        counters: &h2::TlsCounters<'_>,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        match self.protocol {
            Protocol::Http1 => h1::send(&ep.state.h1, &self.connector, &ep.uri, req).await,
            Protocol::Http2 => h2::send(&ep.h2, &self.connector, &ep.uri, counters, req).await,
        }
    }

    /// A request asking to upgrade, over its own mTLS connection (see [`upgrade`]).
    pub async fn send_upgrade(
        &self,
        ep: &EndpointTarget,
        tls: std::sync::Arc<rustls::ClientConfig>,
        counters: &h2::TlsCounters<'_>,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let sent = upgrade::send(&self.connector, &ep.uri, tls, req).await;
        match &sent {
            Err(UpstreamError::Connect(_)) => counters.failures.inc(),
            _ => counters.handshakes.inc(),
        }
        sent
    }
}

#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<ClientKey, Upstream>>,
}

impl Clients {
    /// Called when compiling a snapshot, never per request.
    pub fn get(&self, key: ClientKey) -> Upstream {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        // A destination whose settings changed gets a new client; the old one's pool closes
        // once the last request using it is done.
        map.retain(|k, _| k.destination != key.destination || *k == key);
        map.entry(key.clone())
            .or_insert_with(|| build(&key))
            .clone()
    }
}

fn build(key: &ClientKey) -> Upstream {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Upstream {
        protocol: key.protocol,
        connector: LimitedConnector::new(http, key.max_connections, key.tls_handshake_timeout),
    }
}
