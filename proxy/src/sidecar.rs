//! One sidecar's process-wide parts, held in one `Arc` by the listeners, the admin server and
//! the config sources: the settings it started with, the snapshot in force
//! ([`CurrentSnapshot`]), where it reports ([`Telemetry`]) and where it is in its life
//! ([`Lifecycle`]). The snapshot and telemetry are shared with the tasks that resolve endpoint
//! names, which compile the snapshot again when an answer changes; those tasks end with the
//! sidecar.

use crate::lifecycle::Lifecycle;
use crate::snapshot::CurrentSnapshot;
use crate::telemetry::Telemetry;
use crate::tls::identity::Identity;
use outrigger_config::ProxySettings;
use std::sync::Arc;

/// The parts, side by side; each is used on its own.
pub struct Sidecar {
    /// The `proxy` section, fixed for the life of the process.
    pub settings: ProxySettings,
    pub snapshot: Arc<CurrentSnapshot>,
    pub telemetry: Arc<Telemetry>,
    pub lifecycle: Lifecycle,
}

impl Sidecar {
    /// A sidecar with no snapshot yet. With an `identity` it joins a mesh with mTLS: TLS
    /// configurations are built with it and it is not ready without a valid certificate.
    pub fn new(
        settings: ProxySettings,
        telemetry: Telemetry,
        identity: Option<Arc<Identity>>,
    ) -> Self {
        let snapshot = Arc::new(CurrentSnapshot::new(identity.clone()));
        let telemetry = Arc::new(telemetry);
        let names = snapshot.names();
        if let Err(e) = telemetry
            .metrics
            .registry
            .register(Box::new(names.metric()))
        {
            tracing::warn!(error = %e, "cannot register the DNS resolution metric");
        }
        // Weak: the hook lives inside the snapshot it recompiles, and must not keep it alive.
        let (s, t) = (Arc::downgrade(&snapshot), Arc::downgrade(&telemetry));
        names.on_change(move || {
            if let (Some(s), Some(t)) = (s.upgrade(), t.upgrade()) {
                s.recompile(&t);
            }
        });
        Self {
            settings,
            snapshot,
            telemetry,
            lifecycle: Lifecycle::new(identity),
        }
    }
}
