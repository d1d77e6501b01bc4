//! Process-wide state shared by listeners, the admin server and config sources: the current
//! compiled snapshot behind an `ArcSwap` (one load per request, never a lock), readiness, and
//! the telemetry sinks.

use crate::client::Clients;
use crate::endpoint::EndpointRegistry;
use crate::routing::compile::{Compiler, DestRegistry};
use crate::routing::Compiled;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::stats::StatsRegistry;
use arc_swap::ArcSwapOption;
use outrigger_config::{ProxySettings, Snapshot};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub struct Shared {
    current: ArcSwapOption<Compiled>,
    pub settings: ProxySettings,
    pub metrics: Metrics,
    pub stats: StatsRegistry,
    pub clients: Clients,
    pub endpoints: EndpointRegistry,
    pub dests: DestRegistry,
    pub access_log: Option<AccessLog>,
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    versions: AtomicU64,
    /// Wakes the shutdown sequence (SIGTERM or `POST /shutdown`).
    pub shutdown: Notify,
    /// The workload identity, when this sidecar joins a mesh with mTLS.
    pub identity: Option<Arc<crate::tls::identity::Identity>>,
    /// Trace propagation, sampling and (when configured) the span exporter.
    pub tracer: crate::trace::Tracer,
}

impl Shared {
    pub fn new(settings: ProxySettings, access_log: Option<AccessLog>, metrics: Metrics) -> Self {
        Self::with_identity(settings, access_log, metrics, None)
    }

    pub fn with_identity(
        settings: ProxySettings,
        access_log: Option<AccessLog>,
        metrics: Metrics,
        identity: Option<Arc<crate::tls::identity::Identity>>,
    ) -> Self {
        let settings_tracing = settings.tracing.clone();
        Self {
            current: ArcSwapOption::empty(),
            stats: StatsRegistry::new(settings.stats_window),
            settings,
            metrics,
            clients: Clients::default(),
            endpoints: EndpointRegistry::default(),
            dests: DestRegistry::default(),
            access_log,
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            versions: AtomicU64::new(0),
            shutdown: Notify::new(),
            identity,
            tracer: crate::trace::Tracer::new(&settings_tracing),
        }
    }

    /// The snapshot in force; `None` before the first one is applied.
    #[inline]
    pub fn current(&self) -> Option<Arc<Compiled>> {
        self.current.load_full()
    }

    /// Compiles and swaps in a validated snapshot. Requests in flight keep the `Arc` of the
    /// snapshot they started with and finish on it. Returns the version now served.
    pub fn apply(&self, mut snapshot: Snapshot, source: &str) -> u64 {
        if snapshot.version == 0 {
            snapshot.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        } else {
            self.versions.fetch_max(snapshot.version, Ordering::Relaxed);
        }
        let version = snapshot.version;
        self.swap_in(snapshot);
        self.metrics
            .config_applied
            .with_label_values(&[source])
            .inc();
        // The rejection series exists at 0 from the first snapshot, so a dashboard's rate over
        // it answers 0 rather than nothing.
        self.metrics.config_rejected.with_label_values(&[source]);
        self.metrics.config_version.set(version as i64);
        version
    }

    /// Compiles the snapshot in force again (after a new certificate, so TLS configurations
    /// that could not be built without one are built now).
    pub fn recompile(&self) {
        if let Some(current) = self.current() {
            self.swap_in((*current.snapshot).clone());
        }
    }

    fn swap_in(&self, snapshot: Snapshot) {
        let compiled = Compiler {
            metrics: &self.metrics,
            stats: &self.stats,
            clients: &self.clients,
            endpoints: &self.endpoints,
            dests: &self.dests,
            identity: self.identity.as_ref(),
        }
        .compile(snapshot);
        self.current.store(Some(Arc::new(compiled)));
    }

    pub fn reject(&self, source: &str) {
        self.metrics
            .config_rejected
            .with_label_values(&[source])
            .inc();
    }

    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready: a snapshot applied, a certificate held (with mTLS), listeners bound, not
    /// shutting down.
    pub fn is_ready(&self) -> bool {
        self.listeners_bound.load(Ordering::Acquire)
            && !self.is_draining()
            && self.current.load().is_some()
            && self.identity.as_ref().is_none_or(|i| i.is_ready())
    }
}
