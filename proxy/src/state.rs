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
use std::time::SystemTime;
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

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Ready: not shutting down, a valid certificate held (with mTLS), a snapshot applied,
    /// listeners bound. Otherwise the first of these that fails, which `/ready` reports.
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.readiness_at(SystemTime::now())
    }

    fn readiness_at(&self, now: SystemTime) -> Result<(), NotReady> {
        use crate::tls::identity::CertStatus;
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        match self.identity.as_ref().map(|i| i.status(now)) {
            None | Some(CertStatus::Valid) => {}
            Some(CertStatus::Missing { error }) => return Err(NotReady::NoCertificate(error)),
            Some(CertStatus::Expired { at, error }) => {
                return Err(NotReady::CertificateExpired { at, error })
            }
        }
        if self.current.load().is_none() {
            return Err(NotReady::NoSnapshot);
        }
        if !self.listeners_bound.load(Ordering::Acquire) {
            return Err(NotReady::ListenersNotBound);
        }
        Ok(())
    }
}

/// Why the sidecar is not ready, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("draining")]
    Draining,
    #[error("no workload certificate yet{}", failing("; last attempt failed: ", .0))]
    NoCertificate(Option<String>),
    #[error(
        "workload certificate expired at {}{}",
        humantime::format_rfc3339_seconds(*.at),
        failing("; renewal failing: ", .error)
    )]
    CertificateExpired {
        at: SystemTime,
        error: Option<String>,
    },
    #[error("no snapshot applied yet")]
    NoSnapshot,
    #[error("listeners not bound yet")]
    ListenersNotBound,
}

fn failing(lead: &str, error: &Option<String>) -> String {
    error
        .as_deref()
        .map(|e| format!("{lead}{e}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity::{tests::issued, Identity};
    use std::time::Duration;

    fn shared(identity: Option<Arc<Identity>>) -> Shared {
        Shared::with_identity(ProxySettings::default(), None, Metrics::new(), identity)
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            version: 0,
            service: "web".into(),
            inbound: None,
            destinations: Vec::new(),
            mtls: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_missing_piece_is_named() {
        let s = shared(None);
        assert_eq!(s.readiness(), Err(NotReady::NoSnapshot));
        s.apply(snapshot(), "test");
        assert_eq!(s.readiness(), Err(NotReady::ListenersNotBound));
        s.set_listeners_bound();
        assert_eq!(s.readiness(), Ok(()));
        assert!(s.is_ready());
        s.start_draining();
        assert_eq!(s.readiness(), Err(NotReady::Draining));
        assert_eq!(NotReady::Draining.to_string(), "draining");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sidecar_with_mtls_needs_a_certificate_that_has_not_expired() {
        let id = Arc::new(Identity::default());
        let s = shared(Some(id.clone()));
        s.apply(snapshot(), "test");
        s.set_listeners_bound();
        assert_eq!(s.readiness(), Err(NotReady::NoCertificate(None)));
        assert_eq!(
            NotReady::NoCertificate(Some("401 unknown token".into())).to_string(),
            "no workload certificate yet; last attempt failed: 401 unknown token"
        );

        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let end = start + Duration::from_secs(3600);
        id.publish(issued("spiffe://td/service/web", end));
        assert_eq!(s.readiness_at(start), Ok(()));
        let expired = s.readiness_at(end).expect_err("expired");
        assert_eq!(
            expired,
            NotReady::CertificateExpired {
                at: end,
                error: None
            }
        );
        let text = NotReady::CertificateExpired {
            at: end,
            error: Some("control plane request failed: connection refused".into()),
        }
        .to_string();
        assert_eq!(
            text,
            "workload certificate expired at 2026-09-21T15:13:20Z; renewal failing: control plane request failed: connection refused"
        );
    }
}
