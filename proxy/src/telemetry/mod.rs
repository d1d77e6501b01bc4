//! What the proxy reports about each request: Prometheus metrics ([`metrics`]), exact
//! percentiles over a sliding window ([`stats`]) and the JSON access log ([`access_log`]).
//! A [`record::Record`] travels with the response body and reports once when it ends.
//! [`Telemetry`] holds the sidecar's sinks for all of them, spans ([`crate::trace::Tracer`])
//! included.

pub mod access_log;
pub mod metrics;
pub mod record;
pub mod stats;
pub mod tcp;

use crate::trace::Tracer;
use access_log::AccessLog;
use metrics::Metrics;
use outrigger_config::ProxySettings;
use stats::StatsRegistry;

/// Where the sidecar reports: metrics, per-destination percentiles, the access log (when
/// enabled) and spans.
pub struct Telemetry {
    pub metrics: Metrics,
    pub stats: StatsRegistry,
    pub access_log: Option<AccessLog>,
    /// Trace propagation, sampling and (when configured) the span exporter.
    pub tracer: Tracer,
}

impl Telemetry {
    /// The sinks `settings` ask for; spans are exported only once `tracer.export` is set.
    pub fn new(settings: &ProxySettings, access_log: Option<AccessLog>, metrics: Metrics) -> Self {
        Self {
            metrics,
            stats: StatsRegistry::new(settings.stats_window),
            access_log,
            tracer: Tracer::new(&settings.tracing),
        }
    }
}
