//! The bounds one listener puts on its clients ([`ListenerLimits`]), with the counters that
//! tell when one bit, resolved once per listener so a connection only bumps an `Arc`.

use crate::telemetry::metrics::Metrics;
use outrigger_config::sidecar::ListenerLimits;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub(crate) struct Bounds {
    /// One permit per open connection, held by its task until it ends.
    pub connections: Arc<Semaphore>,
    /// One permit per inbound TLS handshake in progress.
    pub handshakes: Semaphore,
    pub handshake_timeout: Duration,
    pub header_read: Duration,
    pub idle: Duration,
    pub response_idle: Duration,
    /// `max_header_bytes`, for the message of a head hyper refused.
    pub header_limit: usize,
    pub refused_connections: IntCounter,
    pub refused_handshakes: IntCounter,
    pub handshake_timeouts: IntCounter,
    pub header_read_timeouts: IntCounter,
    pub idle_timeouts: IntCounter,
    pub response_idle_timeouts: IntCounter,
    /// Requests hyper could not parse, answered for it ([`super::hyper_errors`]), by reason.
    pub malformed_requests: IntCounter,
    pub oversized_heads: IntCounter,
}

impl Bounds {
    pub fn new(
        limits: &ListenerLimits,
        header_limit: usize,
        metrics: &Metrics,
        direction: &str,
    ) -> Self {
        let refused = |reason| {
            metrics
                .connections_refused
                .with_label_values(&[direction, reason])
        };
        let timeout = |reason| {
            metrics
                .connection_timeouts
                .with_label_values(&[direction, reason])
        };
        Self {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Semaphore::new(limits.max_tls_handshakes),
            handshake_timeout: limits.tls_handshake_timeout,
            header_read: limits.http1_header_read_timeout,
            idle: limits.idle_timeout,
            response_idle: limits.response_idle_timeout,
            header_limit,
            refused_connections: refused("max_connections"),
            refused_handshakes: refused("max_tls_handshakes"),
            handshake_timeouts: timeout("tls_handshake"),
            header_read_timeouts: timeout("header_read"),
            idle_timeouts: timeout("idle"),
            response_idle_timeouts: timeout("response_idle"),
            malformed_requests: metrics
                .proxy_errors
                .with_label_values(&[direction, "malformed-request"]),
            oversized_heads: metrics
                .proxy_errors
                .with_label_values(&[direction, "headers-too-large"]),
        }
    }
}
