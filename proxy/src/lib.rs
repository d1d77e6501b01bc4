//! `outrigger-proxy` is the sidecar data plane: it accepts HTTP/1.1 and h2c on its outbound and
//! inbound listeners, routes each request by authority and route rules from the current
//! compiled snapshot, forwards it over pooled upstream connections, and records metrics, exact
//! percentiles and an access log. Config arrives from a watched file; everything the request
//! path needs is compiled once per snapshot ([`routing::compile`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod await_sidecar;
pub mod balance;
pub mod body;
pub mod client;
pub mod concurrency;
pub mod control_plane;
pub mod endpoint;
pub mod error;
pub mod fault;
pub mod forward;
pub mod grpc;
pub mod health;
pub mod hex;
pub mod init;
pub mod intercept;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod peer;
pub mod ratelimit;
pub mod retry;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod sidecar;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod tunnel;
pub mod watch;

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the local app to another service.
    Outbound,
    /// From another service to the local app.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}
