//! The control plane's Prometheus metrics. Label values are bounded: kinds, service names from
//! the registry, route templates and status codes, never ids.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub(crate) resources: IntGaugeVec,
    pub(crate) instances: IntGaugeVec,
    pub revision: IntGauge,
    pub sidecars_connected: IntGauge,
    pub snapshots_pushed: IntCounter,
    pub acks: IntCounter,
    pub nacks: IntCounter,
    pub api_requests: IntCounterVec,
    pub applies_rejected: IntCounter,
    pub certificates_issued: IntCounter,
    /// By reason: token, identity, malformed, signature.
    pub csr_rejected: IntCounterVec,
    pub(crate) ca_roots: IntGauge,
    /// Connections and requests cut off by a server bound, by limit.
    pub connection_limits: IntCounterVec,
    /// TLS handshakes completed, by kind: full, or resumed from a session ticket.
    pub tls_handshakes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Metrics {
            resources: IntGaugeVec::new(
                Opts::new("outrigger_control_resources", "Stored mesh resources"),
                &["kind"],
            )?,
            instances: IntGaugeVec::new(
                Opts::new(
                    "outrigger_control_registry_instances",
                    "Live registered instances",
                ),
                &["service"],
            )?,
            revision: IntGauge::new("outrigger_control_revision", "Current mesh revision")?,
            sidecars_connected: IntGauge::new(
                "outrigger_control_sidecars_connected",
                "Sidecars with an open push stream",
            )?,
            snapshots_pushed: IntCounter::new(
                "outrigger_control_snapshots_pushed_total",
                "Snapshots sent on push streams",
            )?,
            acks: IntCounter::new(
                "outrigger_control_acks_total",
                "Snapshots acknowledged by sidecars",
            )?,
            nacks: IntCounter::new(
                "outrigger_control_nacks_total",
                "Snapshots refused by sidecars",
            )?,
            api_requests: IntCounterVec::new(
                Opts::new("outrigger_control_api_requests_total", "API requests"),
                &["route", "status"],
            )?,
            applies_rejected: IntCounter::new(
                "outrigger_control_applies_rejected_total",
                "Applies refused as invalid",
            )?,
            certificates_issued: IntCounter::new(
                "outrigger_control_certificates_issued_total",
                "Leaf certificates signed",
            )?,
            csr_rejected: IntCounterVec::new(
                Opts::new(
                    "outrigger_control_csr_rejected_total",
                    "CSRs refused, by reason (token, identity, malformed, signature)",
                ),
                &["reason"],
            )?,
            ca_roots: IntGauge::new("outrigger_control_ca_roots", "Roots in the trust bundle")?,
            connection_limits: IntCounterVec::new(
                Opts::new(
                    "outrigger_control_connection_limits_total",
                    "Connections or requests cut off by a server bound: max_connections, header_read_timeout, max_body_bytes",
                ),
                &["limit"],
            )?,
            tls_handshakes: IntCounterVec::new(
                Opts::new(
                    "outrigger_control_tls_handshakes_total",
                    "TLS handshakes completed, by kind: full, or resumed from a session ticket",
                ),
                &["kind"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.resources.clone()))?;
        m.registry.register(Box::new(m.instances.clone()))?;
        m.registry.register(Box::new(m.revision.clone()))?;
        m.registry
            .register(Box::new(m.sidecars_connected.clone()))?;
        m.registry.register(Box::new(m.snapshots_pushed.clone()))?;
        m.registry.register(Box::new(m.acks.clone()))?;
        m.registry.register(Box::new(m.nacks.clone()))?;
        m.registry.register(Box::new(m.api_requests.clone()))?;
        m.registry.register(Box::new(m.applies_rejected.clone()))?;
        m.registry
            .register(Box::new(m.certificates_issued.clone()))?;
        m.registry.register(Box::new(m.csr_rejected.clone()))?;
        m.registry.register(Box::new(m.ca_roots.clone()))?;
        m.registry.register(Box::new(m.connection_limits.clone()))?;
        m.registry.register(Box::new(m.tls_handshakes.clone()))?;
        for kind in ["full", "resumed"] {
            m.tls_handshakes.with_label_values(&[kind]);
        }
        // Every reason shows from the start, at 0, so a rate over it is defined.
        for reason in ["token", "identity", "malformed", "signature"] {
            m.csr_rejected.with_label_values(&[reason]);
        }
        Ok(m)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// A count as a gauge value.
pub fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
