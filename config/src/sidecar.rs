//! The static sidecar file: `proxy` (bootstrap, read once at start) and `snapshot` (the same
//! type the control plane pushes; re-read whenever the file changes).

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
            drain_timeout: Duration::from_secs(30),
            access_log: true,
            max_header_bytes: 64 * 1024,
            stats_window: Duration::from_secs(60),
            tracing: TracingSettings::default(),
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
        let addrs = [self.outbound, self.inbound, Some(self.admin)];
        let mut seen = Vec::new();
        for (key, a) in ["outbound", "inbound", "admin"].into_iter().zip(addrs) {
            if let Some(a) = a {
                if a.port() != 0 && seen.contains(&a) {
                    v.fail(at.key(key), format!("{a} is used by another listener"));
                }
                seen.push(a);
            }
        }
    }
}
