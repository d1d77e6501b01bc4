//! The compiled snapshot requests are routed by, behind an `ArcSwap` (one load per request,
//! never a lock), and its replacement: numbering, compiling against the registries whose state
//! outlives a snapshot (pools, endpoint health, destination limits), swapping in, and counting
//! applied and rejected changes.

use crate::client::Clients;
use crate::endpoint::EndpointRegistry;
use crate::routing::compile::{Compiler, DestRegistry};
use crate::routing::Compiled;
use crate::telemetry::Telemetry;
use crate::tls::identity::Identity;
use arc_swap::ArcSwapOption;
use outrigger_config::Snapshot;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The snapshot in force and what compiling the next one reuses.
pub struct CurrentSnapshot {
    current: ArcSwapOption<Compiled>,
    versions: AtomicU64,
    clients: Clients,
    endpoints: EndpointRegistry,
    dests: DestRegistry,
    /// The workload identity TLS configurations are built with, when the sidecar has one.
    identity: Option<Arc<Identity>>,
    /// One compile at a time: a recompile (new certificate, a DNS answer that changed) must
    /// not store its older snapshot over one applied meanwhile.
    compiling: Mutex<()>,
}

impl CurrentSnapshot {
    /// None in force yet.
    pub fn new(identity: Option<Arc<Identity>>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            versions: AtomicU64::new(0),
            clients: Clients::default(),
            endpoints: EndpointRegistry::default(),
            dests: DestRegistry::default(),
            identity,
            compiling: Mutex::new(()),
        }
    }

    /// The DNS names endpoints are given by, and what they resolve to.
    pub fn names(&self) -> &crate::endpoint::resolve::Names {
        self.endpoints.names()
    }

    /// The snapshot in force; `None` before the first one is applied.
    #[inline]
    pub fn current(&self) -> Option<Arc<Compiled>> {
        self.current.load_full()
    }

    /// Whether any snapshot has been applied.
    pub fn is_applied(&self) -> bool {
        self.current.load().is_some()
    }

    /// Compiles and swaps in a validated snapshot, its metric handles made from `telemetry`.
    /// Requests in flight keep the `Arc` of the snapshot they started with and finish on it.
    /// Returns the version now served.
    pub fn apply(&self, mut snapshot: Snapshot, source: &str, telemetry: &Telemetry) -> u64 {
        if snapshot.version == 0 {
            snapshot.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        } else {
            self.versions.fetch_max(snapshot.version, Ordering::Relaxed);
        }
        let version = snapshot.version;
        let one_at_a_time = self
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.swap_in(snapshot, telemetry);
        drop(one_at_a_time);
        let metrics = &telemetry.metrics;
        metrics.config_applied.with_label_values(&[source]).inc();
        // The rejection series exists at 0 from the first snapshot, so a dashboard's rate over
        // it answers 0 rather than nothing.
        metrics.config_rejected.with_label_values(&[source]);
        metrics.config_version.set(version as i64);
        version
    }

    /// Compiles the snapshot in force again (after a new certificate, so TLS configurations
    /// that could not be built without one are built now).
    pub fn recompile(&self, telemetry: &Telemetry) {
        let _one_at_a_time = self
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = self.current() {
            self.swap_in((*current.snapshot).clone(), telemetry);
        }
    }

    /// Counts a change from `source` that was refused; the snapshot in force stays.
    pub fn reject(&self, source: &str, telemetry: &Telemetry) {
        telemetry
            .metrics
            .config_rejected
            .with_label_values(&[source])
            .inc();
    }

    fn swap_in(&self, snapshot: Snapshot, telemetry: &Telemetry) {
        let compiled = Compiler {
            metrics: &telemetry.metrics,
            stats: &telemetry.stats,
            clients: &self.clients,
            endpoints: &self.endpoints,
            dests: &self.dests,
            identity: self.identity.as_ref(),
        }
        .compile(snapshot);
        self.current.store(Some(Arc::new(compiled)));
    }
}
