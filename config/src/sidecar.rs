//! The static sidecar file: `proxy` (bootstrap, read once at start) and `snapshot` (the same
//! type the control plane pushes; re-read whenever the file changes).

mod interception;

pub use interception::{Interception, OutboundPolicy};

use crate::duration::Family;
use crate::path::FieldPath;
use crate::snapshot::Snapshot;
use crate::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarFile {
    #[serde(default)]
    pub proxy: ProxySettings,
    pub snapshot: Snapshot,
}

/// Listener addresses and process-wide settings. Changing these needs a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// Where the local app sends its outbound calls.
    pub outbound: Option<SocketAddr>,
    /// Where other sidecars send calls for the local app. `null` disables it.
    pub inbound: Option<SocketAddr>,
    /// Admin endpoints; keep it on loopback.
    pub admin: SocketAddr,
    /// The health listener for the kubelet and Prometheus (read-only: `/live`, `/ready`,
    /// `/metrics`, `/app-health/…`), e.g. `0.0.0.0:15021`. `null` (the default) = off.
    pub health: Option<SocketAddr>,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "crate::duration")]
    pub drain_timeout: Duration,
    pub access_log: bool,
    /// Largest request header block accepted; bigger gets 431.
    pub max_header_bytes: usize,
    /// Window of the exact percentiles at `/stats`.
    #[serde(with = "crate::duration")]
    pub stats_window: Duration,
    /// Trace propagation and span export.
    pub tracing: TracingSettings,
    /// Bounds on what downstream clients can hold: connections, handshakes, streams, time.
    pub limits: ListenerLimits,
    /// Connections the pod's rules redirected to the outbound listener.
    pub interception: Interception,
}

/// Per-listener bounds (outbound and inbound each get their own), so that idle, slow or
/// abusive clients hold a bounded share of file descriptors, memory and in-flight slots.
/// Each default is set against Envoy's and Linkerd's; Envoy leaves most of these unbounded
/// and asks operators to set them ("best practices for edge proxies"), which a sidecar whose
/// callers may be any pod cannot rely on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// Downstream connections open at once; beyond this a new connection is closed at accept.
    /// 10,000: Envoy has no per-listener cap by default (its overload manager's
    /// `global_downstream_max_connections` is opt-in, 50,000 in its edge example) and Linkerd
    /// none; a sidecar fronts one app, so 10,000 is far above any real fan-in while keeping
    /// descriptors (two per proxied connection) well inside a container's usual 1,048,576.
    pub max_connections: usize,
    /// Inbound mTLS handshakes in progress at once; beyond this a new TLS client is closed.
    /// 256: neither Envoy nor Linkerd caps handshakes by default (Envoy bounds them only
    /// through connection limits). A handshake costs ~1 ms of CPU, so 256 at once is far more
    /// than two cores can finish in the handshake timeout, while a flood of slow ClientHellos
    /// cannot pin more than 256 half-open sessions.
    pub max_tls_handshakes: usize,
    /// From the first TLS byte to a finished handshake. 10 s: Linkerd's protocol-detection
    /// timeout (10 s); Envoy's `transport_socket_connect_timeout` is unset by default and its
    /// `listener_filters_timeout` is 15 s.
    #[serde(with = "crate::duration")]
    pub tls_handshake_timeout: Duration,
    /// HTTP/1: from the first byte of a request to the end of its header block (slowloris).
    /// 10 s: Envoy's `request_headers_timeout` is off by default and Linkerd has none;
    /// hyper's own 30 s also counts the idle time before the request. A header block takes
    /// milliseconds on any real network, so 10 s only ever cuts off a trickle.
    #[serde(with = "crate::duration")]
    pub http1_header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1 keep-alive) or
    /// sent GOAWAY (HTTP/2). 5 min: Envoy's `idle_timeout` is 1 h and Linkerd closes none;
    /// ours is shorter so that idle connections cannot pile up, yet longer than the pools of
    /// common clients (Go and hyper: 90 s), so the client closes first and no request races
    /// our close.
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// A response the client takes nothing of for this long is abandoned: its in-flight
    /// slot and upstream connection are freed (HTTP/1: the connection is closed; HTTP/2: the
    /// stream is reset). 60 s: Envoy's `stream_idle_timeout` is 5 min (and also counts a
    /// silent upstream); Linkerd has none. One minute of a client not reading is no
    /// flow-control hiccup, and a silent upstream does not count against it.
    #[serde(with = "crate::duration")]
    pub response_idle_timeout: Duration,
    /// A byte tunnel (opaque TCP, an upgraded WebSocket) with nothing moving either way for
    /// this long is closed. 1 h: Envoy's TCP proxy `idle_timeout` default; Linkerd has none.
    /// Long, because a quiet database connection in a client's pool is not abandoned.
    #[serde(with = "crate::duration")]
    pub tunnel_idle_timeout: Duration,
    /// HTTP/2 streams a client may open at once on one connection. 200: hyper's server
    /// default, under Go's 250 and above the 100 that RFC 9113 §6.5.2 sets as the least and
    /// Envoy's edge best practices use (its built-in default is 2^31 - 1; Linkerd sets none).
    /// Not 100, because a calling sidecar sends all its requests for one endpoint over one
    /// connection, so this is also the in-flight ceiling between two sidecars (beyond it,
    /// requests wait for a stream rather than fail).
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 PING sent after this long without a frame from the client, to find dead peers.
    /// 10 s: Linkerd's injected `..._SERVER_HTTP2_KEEP_ALIVE_INTERVAL` (10 s); Envoy sends
    /// none unless `connection_keepalive` is set.
    #[serde(with = "crate::duration")]
    pub http2_keepalive_interval: Duration,
    /// A PING unanswered for this long closes the connection. 5 s: Linkerd uses 3 s; a little
    /// more keeps a briefly stalled, loaded node from dropping healthy connections.
    #[serde(with = "crate::duration")]
    pub http2_keepalive_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_tls_handshakes: 256,
            tls_handshake_timeout: Duration::from_secs(10),
            http1_header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            response_idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            http2_max_concurrent_streams: 200,
            http2_keepalive_interval: Duration::from_secs(10),
            http2_keepalive_timeout: Duration::from_secs(5),
        }
    }
}

impl Validate for ListenerLimits {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.ensure(
            (1..=1_000_000).contains(&self.max_connections),
            || at.key("max_connections"),
            "must be between 1 and 1000000",
        );
        v.ensure(
            (1..=100_000).contains(&self.max_tls_handshakes),
            || at.key("max_tls_handshakes"),
            "must be between 1 and 100000",
        );
        v.ensure(
            (1..=10_000).contains(&self.http2_max_concurrent_streams),
            || at.key("http2_max_concurrent_streams"),
            "must be between 1 and 10000",
        );
        for (key, d) in [
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("http1_header_read_timeout", self.http1_header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("response_idle_timeout", self.response_idle_timeout),
            ("tunnel_idle_timeout", self.tunnel_idle_timeout),
            ("http2_keepalive_interval", self.http2_keepalive_interval),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout),
        ] {
            v.ensure(
                d >= Duration::from_millis(100),
                || at.key(key),
                "must be at least 100ms",
            );
            v.duration(d, Family::Timeout, || at.key(key));
        }
    }
}

/// Spans for proxied requests. Trace headers are always propagated; spans are recorded for
/// sampled traces and exported when `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`. Unset: no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces (no sampling decision arrived) that are sampled, 0.0 to 1.0. A
    /// decision that arrives with the request is always respected.
    pub sampling: f64,
    /// Also send B3 multi-headers (`x-b3-traceid` ...) upstream, for apps that only read B3.
    /// B3 headers that arrive are always rewritten so they never name a stale parent.
    pub b3: bool,
    /// Spans waiting for export; beyond this they are dropped and counted.
    pub queue: usize,
}

impl TracingSettings {
    /// The collector URL the exporter can use: plaintext OTLP/gRPC (`http://host:port`). TLS to
    /// the collector is not built in; a node-local collector or a mesh sidecar provides it.
    pub fn check_endpoint(url: &str) -> Result<(), &'static str> {
        match url.strip_prefix("http://") {
            Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(()),
            _ if url.starts_with("https://") => Err(
                "https is not supported: export to a local collector over http:// (it can forward with TLS)",
            ),
            _ => Err("must be an absolute http:// URL such as http://127.0.0.1:4317"),
        }
    }
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling: 0.01,
            b3: false,
            queue: 4096,
        }
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            outbound: Some(SocketAddr::from(([127, 0, 0, 1], 15001))),
            inbound: Some(SocketAddr::from(([0, 0, 0, 0], 15006))),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            health: None,
            drain_timeout: Duration::from_secs(30),
            access_log: true,
            max_header_bytes: 64 * 1024,
            stats_window: Duration::from_secs(60),
            tracing: TracingSettings::default(),
            limits: ListenerLimits::default(),
            interception: Interception::default(),
        }
    }
}

impl Validate for SidecarFile {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        self.proxy.validate(&at.key("proxy"), v);
        self.snapshot.validate(&at.key("snapshot"), v);
        if let Some(i) = &self.snapshot.inbound {
            v.ensure(
                i.app.is_some(),
                || at.key("snapshot").key("inbound").key("app"),
                "required: the local app's address",
            );
        }
    }
}

impl Validate for ProxySettings {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.ensure(
            (1024..=1024 * 1024).contains(&self.max_header_bytes),
            || at.key("max_header_bytes"),
            "must be between 1024 and 1048576",
        );
        v.ensure(
            self.stats_window >= Duration::from_secs(1),
            || at.key("stats_window"),
            "must be at least 1s",
        );
        v.duration(self.stats_window, Family::Window, || at.key("stats_window"));
        v.duration(self.drain_timeout, Family::Timeout, || {
            at.key("drain_timeout")
        });
        v.ensure(
            self.outbound.is_some() || self.inbound.is_some(),
            || at.key("outbound"),
            "at least one of outbound and inbound must be set",
        );
        v.ensure(
            (0.0..=1.0).contains(&self.tracing.sampling),
            || at.key("tracing").key("sampling"),
            "must be between 0.0 and 1.0",
        );
        v.ensure(
            (1..=1_000_000).contains(&self.tracing.queue),
            || at.key("tracing").key("queue"),
            "must be between 1 and 1000000",
        );
        if let Some(e) = &self.tracing.otlp_endpoint {
            if let Err(reason) = TracingSettings::check_endpoint(e) {
                v.fail(at.key("tracing").key("otlp_endpoint"), reason);
            }
        }
        self.limits.validate(&at.key("limits"), v);
        self.interception.validate(&at.key("interception"), v);
        let addrs = [self.outbound, self.inbound, Some(self.admin), self.health];
        let mut seen = Vec::new();
        for (key, a) in ["outbound", "inbound", "admin", "health"]
            .into_iter()
            .zip(addrs)
        {
            if let Some(a) = a {
                if a.port() != 0 && seen.contains(&a) {
                    v.fail(at.key(key), format!("{a} is used by another listener"));
                }
                seen.push(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_yaml_validated;

    #[test]
    fn listener_limits_default_and_a_bad_one_is_named_with_its_line() {
        let ok: SidecarFile = from_yaml_validated(
            "proxy:\n  limits:\n    idle_timeout: 2m\nsnapshot:\n  service: order\n",
        )
        .expect("valid");
        assert_eq!(ok.proxy.limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(ok.proxy.limits.max_connections, 10_000);
        let e = from_yaml_validated::<SidecarFile>(
            "proxy:\n  limits:\n    max_connections: 0\n    response_idle_timeout: 1ms\nsnapshot:\n  service: order\n",
        )
        .expect_err("must be rejected");
        let at: Vec<_> = e.errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            at,
            [
                ("proxy.limits.max_connections", 3),
                ("proxy.limits.response_idle_timeout", 4)
            ],
            "{e}"
        );
    }
}
