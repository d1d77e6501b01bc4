//! Upstream clients, one per destination, kept across snapshots while the destination's
//! protocol, connect timeout and connection limit stay the same, so a config push never throws
//! away warm keep-alive connections. HTTP/1 endpoints use a pool of keep-alive connections;
//! HTTP/2 endpoints get one multiplexed connection each ([`h2`]), which lets the request keep
//! the app's `:authority`. Every connection counts against `max_connections` ([`limited`]).

pub mod h2;
pub mod limited;

pub use limited::{ConnectionLimit, LimitedConnector};

use crate::body::RequestBody;
use crate::routing::EndpointTarget;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use outrigger_config::Protocol;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub type HttpClient = Client<LimitedConnector, RequestBody>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub destination: String,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub max_connections: u32,
}

/// How a destination's requests reach its endpoints. mTLS only ever runs over HTTP/2, whose
/// connections are keyed by their TLS setting per endpoint ([`h2::H2Slot`]); the HTTP/1 pool is
/// always plaintext.
#[derive(Clone)]
pub enum Upstream {
    /// Pooled keep-alive connections, keyed by endpoint address. Boxed: the client is large
    /// and this enum sits in every compiled destination.
    Http1(Box<HttpClient>),
    /// One multiplexed connection per endpoint, held in the endpoint's state.
    Http2(LimitedConnector),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Pool(#[from] hyper_util::client::legacy::Error),
    #[error(transparent)]
    H2(#[from] h2::H2Error),
}

impl Upstream {
    pub async fn send(
        &self,
        ep: &EndpointTarget,
        counters: &h2::TlsCounters<'_>,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        match self {
            Upstream::Http1(c) => Ok(c.request(req).await?),
            Upstream::Http2(connector) => {
                Ok(h2::send(&ep.h2, connector, &ep.uri, counters, req).await?)
            }
        }
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
    let connector = LimitedConnector::new(http, key.max_connections);
    if key.protocol == Protocol::Http2 {
        return Upstream::Http2(connector);
    }
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // The proxy sets Host itself (the app's authority, not the endpoint address).
        .set_host(false);
    Upstream::Http1(Box::new(b.build(connector)))
}
