//! Runs a sidecar: admin first (so `/ready` answers 503 while starting), then the first
//! snapshot, then the listeners, then the config watcher. On shutdown: readiness drops at
//! once, the instance leaves the registry and callers get a moment to learn it, inbound drains
//! first (the app finishes what it was asked), then outbound (the app may still call out while
//! finishing), all within the drain timeout.

use crate::admin;
use crate::control_plane::api::ApiError;
use crate::control_plane::renew::{self, RenewalMetrics};
use crate::control_plane::trust::Trust;
use crate::control_plane::{self, register, subscribe, ControlPlane};
use crate::listener::Listener;
use crate::shutdown;
use crate::sidecar::Sidecar;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Telemetry;
use crate::tls::identity::Identity;
use crate::trace::export::{ResourceInfo, SpanExport};
use crate::watch;
use crate::Direction;
use outrigger_config::{ProxySettings, Snapshot};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tracing(#[from] crate::trace::export::ExportError),
    #[error(transparent)]
    ControlChannel(#[from] ApiError),
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Options {
    pub settings: ProxySettings,
    pub source: Source,
    /// The app's HTTP probes the health listener makes for the kubelet.
    pub app_probes: crate::health::app_probe::AppProbes,
}

/// Where snapshots come from.
pub enum Source {
    /// A snapshot given at start; with `watch`, the file it came from and its text as applied.
    Static {
        snapshot: Box<Snapshot>,
        watch: Option<(PathBuf, String)>,
    },
    /// Pushed by the control plane; not ready until the first one arrives.
    ControlPlane(Box<ControlPlane>),
}

/// Who this sidecar is, for the spans it exports.
fn resource_info(source: &Source) -> ResourceInfo {
    match source {
        Source::Static { snapshot, .. } => ResourceInfo {
            service: snapshot.service.clone(),
            version: None,
            instance: format!("{}-{}", snapshot.service, std::process::id()),
        },
        Source::ControlPlane(cp) => ResourceInfo {
            service: cp.service.clone(),
            version: Some(cp.version.clone()),
            instance: cp.sidecar_id.clone(),
        },
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

pub async fn run(opts: Options) -> Result<(), ServerError> {
    let Options {
        settings,
        source,
        app_probes,
    } = opts;
    raise_open_files_limit(&settings);
    let metrics = Metrics::new();
    let access_log = settings
        .access_log
        .then(|| AccessLog::spawn(tokio::io::stdout(), metrics.access_log_dropped.clone()));
    let resource = resource_info(&source);
    let (initial, control) = match source {
        Source::Static { snapshot, watch } => (Some((snapshot, watch)), None),
        Source::ControlPlane(cp) => {
            let connection = cp.connect()?;
            (None, Some((*cp, connection)))
        }
    };
    // With a bootstrap token the sidecar joins the mesh's mTLS and is not ready without a
    // certificate.
    let identity = control
        .as_ref()
        .and_then(|(_, c)| c.identity.as_ref())
        .map(|(id, _)| id.clone());
    let mut telemetry = Telemetry::new(&settings, access_log, metrics);
    if let Some(endpoint) = &settings.tracing.otlp_endpoint {
        telemetry.tracer.export = Some(SpanExport::otlp(
            endpoint,
            resource,
            settings.tracing.queue,
            telemetry.metrics.spans.clone(),
        )?);
        tracing::info!(%endpoint, sampling = settings.tracing.sampling, "exporting spans over OTLP");
    }
    let sidecar = Arc::new(Sidecar::new(settings.clone(), telemetry, identity));

    let admin = bind("admin", settings.admin).await?;
    if !settings.admin.ip().is_loopback() {
        tracing::warn!(addr = %settings.admin, "the admin listener is not on loopback");
    }
    let admin_addr = admin.local_addr().unwrap_or(settings.admin);
    tracing::info!(addr = %admin_addr, "admin listening");
    admin::spawn(admin, sidecar.clone());
    // What the control plane is told to read this sidecar at (`outrigger top`, `check`):
    // the health listener when there is one, since the admin stays on loopback.
    let mut read_at = admin_addr;
    if let Some(addr) = settings.health {
        let health = bind("health", addr).await?;
        read_at = health.local_addr().unwrap_or(addr);
        tracing::info!(addr = %read_at, app_probes = app_probes.len(), "health listening");
        crate::health::spawn(health, sidecar.clone(), Arc::new(app_probes));
    } else if !app_probes.is_empty() {
        tracing::warn!(
            "app probes are given but there is no health listener (--health) to serve them"
        );
    }

    let mut watch_file = None;
    if let Some((snapshot, watch)) = initial {
        let version = sidecar
            .snapshot
            .apply(*snapshot, watch::SOURCE, &sidecar.telemetry);
        tracing::info!(version, "applied initial config");
        watch_file = watch;
    }
    let control_plane = match control {
        None => None,
        Some((mut cp, connection)) => {
            cp.admin = Some(control_plane::reported_admin(read_at, cp.advertise));
            let trust = connection.trust;
            if let Some((id, issuer)) = connection.identity {
                follow_certificates(&id, trust.clone(), sidecar.clone());
                let metrics = RenewalMetrics {
                    expiry: sidecar.telemetry.metrics.identity_expiry.clone(),
                    renewals: sidecar.telemetry.metrics.identity_renewals.clone(),
                };
                let spiffe = outrigger_config::identity(&cp.trust_domain, &cp.service);
                renew::spawn(id, issuer, spiffe, metrics);
            }
            let api = connection.api;
            subscribe::spawn(cp.clone(), api.clone(), trust, sidecar.clone());
            Some((cp, api))
        }
    };

    let mut listeners = Vec::new();
    for (dir, addr) in [
        (Direction::Inbound, settings.inbound),
        (Direction::Outbound, settings.outbound),
    ] {
        if let Some(addr) = addr {
            let l = bind(dir.as_str(), addr).await?;
            tracing::info!(direction = dir.as_str(), addr = %l.local_addr().unwrap_or(addr), "listening");
            listeners.push(Listener::spawn(l, dir, sidecar.clone()));
        }
    }
    sidecar.lifecycle.set_listeners_bound();
    crate::health::app_watch::spawn(sidecar.clone());
    if let Some((path, text)) = watch_file {
        watch::spawn(path, text, sidecar.clone());
    }
    let lease = control_plane.as_ref().map(|(cp, api)| {
        (
            register::spawn(cp.clone(), api.clone(), sidecar.clone()),
            api,
        )
    });
    tracing::info!("listeners bound");

    shutdown::requested(&sidecar.lifecycle).await;
    let deadline = Instant::now() + settings.drain_timeout;
    // Callers stop choosing this instance before its listeners stop accepting.
    let deregister = async {
        match lease {
            Some((lease, api)) => lease.deregister(api).await,
            None => false,
        }
    };
    shutdown::leave(&sidecar.lifecycle, deregister, deadline).await;
    // Inbound was pushed first, so it drains first.
    let mut clean = true;
    for l in listeners {
        clean &= l.drain(deadline).await;
    }
    if let Some(export) = &sidecar.telemetry.tracer.export {
        // The last requests' spans, if the collector answers quickly.
        export.flush(std::time::Duration::from_secs(2)).await;
    }
    if clean {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached with connections still open; exiting");
    }
    Ok(())
}

/// Each new certificate: the roots that came with it join the control channel's, and the
/// snapshot in force is compiled again (TLS configurations that needed a certificate's bundle
/// are built now).
fn follow_certificates(identity: &Identity, trust: Option<Arc<Trust>>, sidecar: Arc<Sidecar>) {
    let mut renewals = identity.subscribe();
    tokio::spawn(async move {
        while renewals.changed().await.is_ok() {
            let issued = renewals.borrow_and_update().clone();
            if let (Some(trust), Some(issued)) = (&trust, &issued) {
                trust.set_issued(&issued.bundle);
            }
            sidecar.snapshot.recompile(&sidecar.telemetry);
        }
    });
}

/// Raises the soft limit on open files to the hard limit. The soft limit is often 1024, which
/// a proxy (two descriptors per proxied connection) runs out of long before its connection
/// caps; Envoy's and Linkerd's deployments raise it for the same reason. The hard limit is
/// the operator's ceiling and is left alone.
fn raise_open_files_limit(settings: &ProxySettings) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) if hard > soft => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => hard,
                Err(e) => {
                    tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
                    soft
                }
            }
        }
        // Unlimited, or already at the hard limit.
        (soft, _) => soft.unwrap_or(u64::MAX),
    };
    let listeners = [settings.inbound, settings.outbound]
        .iter()
        .flatten()
        .count() as u64;
    let wanted = 2 * listeners * settings.limits.max_connections as u64;
    if soft < wanted {
        tracing::warn!(
            open_files = soft,
            wanted,
            "the open-files limit is below two per connection the listeners may hold (proxy.limits.max_connections): accept will fail before the cap"
        );
    } else {
        tracing::debug!(open_files = soft, "open-files limit");
    }
}
