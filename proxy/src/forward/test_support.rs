//! What the request path's unit tests share: a sidecar with a snapshot applied.

use crate::routing::Compiled;
use crate::sidecar::Sidecar;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Telemetry;
use outrigger_config::ProxySettings;
use std::sync::Arc;

/// A sidecar (access log off) with the snapshot `yaml` applied.
pub fn sidecar(yaml: &str) -> Arc<Sidecar> {
    let settings = ProxySettings {
        access_log: false,
        ..ProxySettings::default()
    };
    let telemetry = Telemetry::new(&settings, None, Metrics::new());
    let sidecar = Arc::new(Sidecar::new(settings, telemetry, None));
    let snapshot = outrigger_config::from_yaml(yaml).expect("test snapshot");
    sidecar.snapshot.apply(snapshot, "test", &sidecar.telemetry);
    sidecar
}

/// The compiled form of the snapshot `yaml`.
pub fn compiled(yaml: &str) -> Arc<Compiled> {
    sidecar(yaml).snapshot.current().expect("applied")
}
