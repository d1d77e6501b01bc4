//! Metrics of opaque TCP, per direction and destination: connections open and total, bytes each way, and
//! how long connections lasted. `destination` is a service's name, or `passthrough` for
//! destinations no service claims (their addresses would make labels unbounded).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// A TCP connection lasts from milliseconds (a probe) to hours (a database pool's), not a
/// request's milliseconds.
const CONNECTION_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0,
];

#[derive(Clone)]
pub struct TcpMetrics {
    connections: IntCounterVec,
    open: IntGaugeVec,
    bytes: IntCounterVec,
    duration: HistogramVec,
    /// Intercepted connections by detected protocol and what became of them.
    pub intercepted: IntCounterVec,
    /// The listener's timeouts counter: tunnels closed idle count as `tunnel_idle`.
    timeouts: IntCounterVec,
}

impl TcpMetrics {
    /// `timeouts` is `outrigger_connection_timeouts_total` (by direction and reason).
    pub fn new(registry: &Registry, timeouts: IntCounterVec) -> prometheus::Result<Self> {
        let m = Self {
            connections: IntCounterVec::new(
                Opts::new("outrigger_tcp_connections_total", "Opaque TCP connections relayed, by destination."),
                &["direction", "destination"],
            )?,
            open: IntGaugeVec::new(
                Opts::new("outrigger_tcp_connections_open", "Opaque TCP connections open now, by destination."),
                &["direction", "destination"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "outrigger_tcp_bytes_total",
                    "Bytes relayed over opaque TCP, by direction, destination and flow (sent: toward the destination).",
                ),
                &["direction", "destination", "flow"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "outrigger_tcp_connection_duration_seconds",
                    "How long opaque TCP connections lasted, by destination.",
                )
                .buckets(CONNECTION_BUCKETS.to_vec()),
                &["direction", "destination"],
            )?,
            intercepted: IntCounterVec::new(
                Opts::new(
                    "outrigger_intercepted_connections_total",
                    "Connections redirected to the outbound listener, by detected protocol and outcome (routed, passthrough, refused).",
                ),
                &["protocol", "outcome"],
            )?,
            timeouts,
        };
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.intercepted.clone()))?;
        Ok(m)
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        let timeouts = IntCounterVec::new(Opts::new("t", "t"), &["direction", "reason"])
            .unwrap_or_else(|e| panic!("{e}"));
        Self::new(&Registry::new(), timeouts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Counts a connection as open until [`Open::close`].
    /// Counts a connection as open until [`Open::close`]; `labels` are direction and
    /// destination.
    pub fn open(&self, labels: [&str; 2]) -> Open {
        self.connections.with_label_values(&labels).inc();
        let open = self.open.with_label_values(&labels);
        open.inc();
        Open {
            metrics: self.clone(),
            labels: labels.map(str::to_string),
            open,
        }
    }
}

pub struct Open {
    metrics: TcpMetrics,
    labels: [String; 2],
    open: prometheus::IntGauge,
}

impl TcpMetrics {
    /// Counts a tunnel closed for idleness.
    pub fn idle_closed(&self, direction: &str) {
        self.timeouts
            .with_label_values(&[direction, "tunnel_idle"])
            .inc();
    }
}

impl Open {
    /// `sent` toward the destination, `received` back from it.
    pub fn close(self, sent: u64, received: u64, lasted: std::time::Duration) {
        let [dir, dest] = [self.labels[0].as_str(), self.labels[1].as_str()];
        self.metrics
            .bytes
            .with_label_values(&[dir, dest, "sent"])
            .inc_by(sent);
        self.metrics
            .bytes
            .with_label_values(&[dir, dest, "received"])
            .inc_by(received);
        self.metrics
            .duration
            .with_label_values(&[dir, dest])
            .observe(lasted.as_secs_f64());
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.open.dec();
    }
}
