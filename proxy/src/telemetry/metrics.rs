//! Prometheus metrics. Label values are bounded: they come from config (service, route,
//! version names) or small fixed sets (direction, status code, reason), never from requests.
//! Per-route handles are resolved when a snapshot is compiled ([`StatusMetrics`]), so recording
//! a request is an index and two atomic adds.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};

/// Fine below 100 ms, where a mesh's latency lives; coarse above.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const REQUEST_LABELS: &[&str] = &[
    "direction",
    "service",
    "dst_service",
    "dst_version",
    "route",
    "status_code",
];

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub proxy_errors: IntCounterVec,
    pub config_applied: IntCounterVec,
    pub config_rejected: IntCounterVec,
    pub config_version: IntGauge,
    pub access_log_dropped: IntCounter,
    pub connections: IntCounterVec,
    pub connections_open: IntGaugeVec,
    /// Connections closed at accept by a listener bound, by reason (`max_connections`,
    /// `max_tls_handshakes`).
    pub connections_refused: IntCounterVec,
    /// Connections and HTTP/2 streams ended by a listener timeout, by reason.
    pub connection_timeouts: IntCounterVec,
    pub upgrades: IntCounterVec,
    pub retries: IntCounterVec,
    pub per_try_timeouts: IntCounterVec,
    pub faults: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub overloads: IntCounterVec,
    pub ejections: IntCounterVec,
    pub ejected: IntGaugeVec,
    pub control_plane_connected: IntGauge,
    pub control_plane_reconnects: IntCounter,
    pub registered: IntGauge,
    pub split_decisions: IntCounterVec,
    pub identity_expiry: IntGauge,
    pub identity_renewals: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub inbound_security: IntCounterVec,
    /// The inbound handles resolved once, for the request and accept paths.
    pub inbound: InboundCounters,
    pub authz_denied: IntCounterVec,
    /// The span pipeline's counters (exported, dropped by reason).
    pub spans: crate::trace::export::SpanCounters,
    /// Intercepted connections and opaque TCP.
    pub tcp: super::tcp::TcpMetrics,
}

const ROUTE_LABELS: &[&str] = &["direction", "service", "dst_service", "route"];

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only fails on a malformed metric definition, which is a programming error caught by
    // every test run.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new("outrigger_requests_total", "Requests handled, by outcome."),
            REQUEST_LABELS,
        ));
        let latency = must(HistogramVec::new(
            HistogramOpts::new(
                "outrigger_request_duration_seconds",
                "Time from request headers received to response end.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            REQUEST_LABELS,
        ));
        let proxy_errors = must(IntCounterVec::new(
            Opts::new(
                "outrigger_proxy_errors_total",
                "Responses the proxy generated itself, by reason.",
            ),
            &["direction", "reason"],
        ));
        let config_applied = must(IntCounterVec::new(
            Opts::new("outrigger_config_applied_total", "Snapshots applied."),
            &["source"],
        ));
        let config_rejected = must(IntCounterVec::new(
            Opts::new(
                "outrigger_config_rejected_total",
                "Config changes rejected as invalid; the previous snapshot kept serving.",
            ),
            &["source"],
        ));
        let config_version = must(IntGauge::new(
            "outrigger_config_version",
            "Version of the snapshot being served.",
        ));
        let access_log_dropped = must(IntCounter::new(
            "outrigger_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        ));
        let connections = must(IntCounterVec::new(
            Opts::new(
                "outrigger_connections_total",
                "Downstream connections accepted.",
            ),
            &["direction"],
        ));
        let connections_open = must(IntGaugeVec::new(
            Opts::new(
                "outrigger_connections_open",
                "Downstream connections open now.",
            ),
            &["direction"],
        ));
        let connections_refused = must(IntCounterVec::new(
            Opts::new(
                "outrigger_connections_refused_total",
                "Downstream connections closed at accept by a listener limit: max_connections, max_tls_handshakes.",
            ),
            &["direction", "reason"],
        ));
        let connection_timeouts = must(IntCounterVec::new(
            Opts::new(
                "outrigger_connection_timeouts_total",
                "Downstream connections (or HTTP/2 streams) ended by a timeout: tls_handshake, header_read, idle, response_idle.",
            ),
            &["direction", "reason"],
        ));
        let upgrades = must(IntCounterVec::new(
            Opts::new(
                "outrigger_upgrades_total",
                "HTTP/1.1 upgrades (WebSocket) tunnelled.",
            ),
            &["direction"],
        ));
        let retries = must(IntCounterVec::new(
            Opts::new(
                "outrigger_retries_total",
                "Failed attempts by what happened next: retried, budget_exhausted, not_retryable (method not safe), body_too_large.",
            ),
            &["direction", "service", "dst_service", "route", "outcome"],
        ));
        let per_try_timeouts = must(IntCounterVec::new(
            Opts::new(
                "outrigger_per_try_timeouts_total",
                "Attempts that hit the per-try timeout.",
            ),
            ROUTE_LABELS,
        ));
        let faults = must(IntCounterVec::new(
            Opts::new(
                "outrigger_faults_injected_total",
                "Faults injected, by kind (delay, abort).",
            ),
            &["direction", "service", "dst_service", "route", "kind"],
        ));
        let rate_limited = must(IntCounterVec::new(
            Opts::new(
                "outrigger_rate_limited_total",
                "Requests refused by a local rate limit (429).",
            ),
            ROUTE_LABELS,
        ));
        let overloads = must(IntCounterVec::new(
            Opts::new(
                "outrigger_overload_rejections_total",
                "Requests failed fast by a destination limit (pending, deadline, connections).",
            ),
            &["direction", "service", "dst_service", "limit"],
        ));
        let ejections = must(IntCounterVec::new(
            Opts::new(
                "outrigger_ejections_total",
                "Endpoints ejected by outlier detection.",
            ),
            &["service", "dst_service"],
        ));
        let ejected = must(IntGaugeVec::new(
            Opts::new("outrigger_endpoints_ejected", "Endpoints ejected now."),
            &["service", "dst_service"],
        ));
        let control_plane_connected = must(IntGauge::new(
            "outrigger_control_plane_connected",
            "1 while the snapshot stream from the control plane is open.",
        ));
        let control_plane_reconnects = must(IntCounter::new(
            "outrigger_control_plane_reconnects_total",
            "Snapshot streams lost and reopened.",
        ));
        let registered = must(IntGauge::new(
            "outrigger_registered",
            "1 while this instance holds a registry lease.",
        ));
        let split_decisions = must(IntCounterVec::new(
            Opts::new(
                "outrigger_split_decisions_total",
                "Versions a canary split chose for first attempts: the canary share as decided.",
            ),
            &["direction", "service", "dst_service", "route", "version"],
        ));
        let identity_expiry = must(IntGauge::new(
            "outrigger_identity_cert_expiry_timestamp_seconds",
            "When the workload certificate expires (Unix time).",
        ));
        let identity_renewals = must(IntCounterVec::new(
            Opts::new(
                "outrigger_identity_renewals_total",
                "Certificate requests to the mesh CA, by result.",
            ),
            &["result"],
        ));
        let tls_handshakes = must(IntCounterVec::new(
            Opts::new(
                "outrigger_tls_handshakes_total",
                "mTLS handshakes between sidecars, by direction and result; they scale with connections, not requests.",
            ),
            &["direction", "result"],
        ));
        let inbound_security = must(IntCounterVec::new(
            Opts::new(
                "outrigger_inbound_requests_by_security_total",
                "Inbound requests, by whether they came over mTLS.",
            ),
            &["security"],
        ));
        let authz_denied = must(IntCounterVec::new(
            Opts::new(
                "outrigger_authz_denied_total",
                "Inbound requests refused by the allow-list (403).",
            ),
            &["service"],
        ));
        let spans_exported = must(IntCounter::new(
            "outrigger_spans_exported_total",
            "Spans the OTLP collector accepted.",
        ));
        let spans_dropped = must(IntCounterVec::new(
            Opts::new(
                "outrigger_spans_dropped_total",
                "Spans dropped: queue_full (the export queue was full) or export_failed (the collector refused or did not answer in time).",
            ),
            &["reason"],
        ));
        let spans = crate::trace::export::SpanCounters {
            exported: spans_exported.clone(),
            dropped_queue_full: spans_dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: spans_dropped.with_label_values(&["export_failed"]),
        };
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(spans_exported),
            Box::new(spans_dropped),
            Box::new(latency.clone()),
            Box::new(proxy_errors.clone()),
            Box::new(config_applied.clone()),
            Box::new(config_rejected.clone()),
            Box::new(config_version.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(connections.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connection_timeouts.clone()),
            Box::new(upgrades.clone()),
            Box::new(retries.clone()),
            Box::new(per_try_timeouts.clone()),
            Box::new(faults.clone()),
            Box::new(rate_limited.clone()),
            Box::new(overloads.clone()),
            Box::new(ejections.clone()),
            Box::new(ejected.clone()),
            Box::new(control_plane_connected.clone()),
            Box::new(control_plane_reconnects.clone()),
            Box::new(registered.clone()),
            Box::new(split_decisions.clone()),
            Box::new(identity_expiry.clone()),
            Box::new(identity_renewals.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(inbound_security.clone()),
            Box::new(authz_denied.clone()),
        ] {
            must(registry.register(c));
        }
        must(registry.register(Box::new(must(crate::logging::DroppedLinesCollector::new()))));
        let tcp = must(super::tcp::TcpMetrics::new(
            &registry,
            connection_timeouts.clone(),
        ));
        let inbound = InboundCounters {
            mtls: LazyCounter::new(&inbound_security, &["mtls"]),
            plaintext: LazyCounter::new(&inbound_security, &["plaintext"]),
            handshakes_ok: LazyCounter::new(&tls_handshakes, &["inbound", "ok"]),
            handshakes_failed: LazyCounter::new(&tls_handshakes, &["inbound", "error"]),
        };
        Self {
            inbound,
            registry,
            requests,
            latency,
            proxy_errors,
            config_applied,
            config_rejected,
            config_version,
            access_log_dropped,
            connections,
            connections_open,
            connections_refused,
            connection_timeouts,
            upgrades,
            retries,
            per_try_timeouts,
            faults,
            rate_limited,
            overloads,
            ejections,
            ejected,
            control_plane_connected,
            control_plane_reconnects,
            registered,
            split_decisions,
            identity_expiry,
            identity_renewals,
            tls_handshakes,
            inbound_security,
            authz_denied,
            spans,
            tcp,
        }
    }

    /// Handles for one label set (direction, service, destination, version, route); the status
    /// code is filled in lazily, once per code seen.
    pub fn status_metrics(&self, labels: [&str; 5]) -> Arc<StatusMetrics> {
        Arc::new(StatusMetrics {
            labels: labels.map(str::to_string),
            requests: self.requests.clone(),
            latency: self.latency.clone(),
            by_status: (0..500).map(|_| OnceLock::new()).collect(),
        })
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct InboundCounters {
    pub mtls: LazyCounter,
    pub plaintext: LazyCounter,
    pub handshakes_ok: LazyCounter,
    pub handshakes_failed: LazyCounter,
}

/// A counter whose labels are fixed in advance but whose series appears only when first
/// counted (a sidecar that never saw plaintext shows no plaintext series), looked up once.
pub struct LazyCounter {
    vec: IntCounterVec,
    labels: &'static [&'static str],
    cell: OnceLock<IntCounter>,
}

impl LazyCounter {
    fn new(vec: &IntCounterVec, labels: &'static [&'static str]) -> Self {
        Self {
            vec: vec.clone(),
            labels,
            cell: OnceLock::new(),
        }
    }

    pub fn inc(&self) {
        self.cell
            .get_or_init(|| self.vec.with_label_values(self.labels))
            .inc();
    }

    /// The count so far (0 before the series appears).
    pub fn get(&self) -> u64 {
        self.cell.get().map_or(0, IntCounter::get)
    }
}

/// Pre-resolved request metrics for one route and destination version, indexed by status.
pub struct StatusMetrics {
    labels: [String; 5],
    requests: IntCounterVec,
    latency: HistogramVec,
    by_status: Box<[OnceLock<(IntCounter, Histogram)>]>,
}

impl StatusMetrics {
    pub fn record(&self, status: http::StatusCode, seconds: f64) {
        let i = (status.as_u16() as usize).saturating_sub(100);
        let Some(slot) = self.by_status.get(i) else {
            return;
        };
        let (count, hist) = slot.get_or_init(|| {
            let l = &self.labels;
            let values = [&*l[0], &*l[1], &*l[2], &*l[3], &*l[4], status.as_str()];
            (
                self.requests.with_label_values(&values),
                self.latency.with_label_values(&values),
            )
        });
        count.inc();
        hist.observe(seconds);
    }
}
