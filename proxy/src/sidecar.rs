//! One sidecar's process-wide parts, held in one `Arc` by the listeners, the admin server and
//! the config sources: the settings it started with, the snapshot in force
//! ([`CurrentSnapshot`]), where it reports ([`Telemetry`]) and where it is in its life
//! ([`Lifecycle`]).

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
    pub snapshot: CurrentSnapshot,
    pub telemetry: Telemetry,
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
        Self {
            settings,
            snapshot: CurrentSnapshot::new(identity.clone()),
            telemetry,
            lifecycle: Lifecycle::new(identity),
        }
    }
}
