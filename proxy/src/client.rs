//! Pooled upstream clients. One client per (protocol, connect timeout), shared across
//! snapshots, so a config change never throws away warm keep-alive connections.

use crate::body::RequestBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use outrigger_config::Protocol;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub type HttpClient = Client<HttpConnector, RequestBody>;

#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<(Protocol, Duration), HttpClient>>,
}

impl Clients {
    /// Called when compiling a snapshot, never per request.
    pub fn get(&self, protocol: Protocol, connect_timeout: Duration) -> HttpClient {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((protocol, connect_timeout))
            .or_insert_with(|| build(protocol, connect_timeout))
            .clone()
    }
}

fn build(protocol: Protocol, connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // The proxy sets Host itself (the app's authority, not the endpoint address).
        .set_host(false);
    if protocol == Protocol::Http2 {
        b.http2_only(true)
            .http2_adaptive_window(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false);
    }
    b.build(connector)
}
