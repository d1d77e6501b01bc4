//! Runs a sidecar: admin first (so `/ready` answers 503 while starting), then the first
//! snapshot, then the listeners, then the config watcher. On shutdown: readiness drops at
//! once, inbound drains first (the app finishes what it was asked), then outbound (the app may
//! still call out while finishing), all within the drain timeout.

use crate::admin;
use crate::control_plane::api::Api;
use crate::control_plane::{self, register, subscribe, ControlPlane};
use crate::listener::Listener;
use crate::shutdown;
use crate::state::Shared;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::tls;
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
    let Options { settings, source } = opts;
    let metrics = Metrics::new();
    let access_log = settings
        .access_log
        .then(|| AccessLog::spawn(tokio::io::stdout(), metrics.access_log_dropped.clone()));
    // With a bootstrap token the sidecar joins the mesh's mTLS and is not ready without a
    // certificate.
    let identity = match &source {
        Source::ControlPlane(cp) if cp.bootstrap_token.is_some() => {
            Some(Arc::new(Identity::default()))
        }
        _ => None,
    };
    let mut shared = Shared::with_identity(settings.clone(), access_log, metrics, identity.clone());
    if let Some(endpoint) = &settings.tracing.otlp_endpoint {
        shared.tracer.export = Some(SpanExport::otlp(
            endpoint,
            resource_info(&source),
            settings.tracing.queue,
            shared.metrics.spans.clone(),
        )?);
        tracing::info!(%endpoint, sampling = settings.tracing.sampling, "exporting spans over OTLP");
    }
    let shared = Arc::new(shared);

    let admin = bind("admin", settings.admin).await?;
    if !settings.admin.ip().is_loopback() {
        tracing::warn!(addr = %settings.admin, "the admin listener is not on loopback");
    }
    let admin_addr = admin.local_addr().unwrap_or(settings.admin);
    tracing::info!(addr = %admin_addr, "admin listening");
    admin::spawn(admin, shared.clone());

    let (watch_file, control_plane) = match source {
        Source::Static { snapshot, watch } => {
            let version = shared.apply(*snapshot, watch::SOURCE);
            tracing::info!(version, "applied initial config");
            (watch, None)
        }
        Source::ControlPlane(cp) => {
            let mut cp = *cp;
            cp.admin = Some(control_plane::reported_admin(admin_addr, cp.advertise));
            if let (Some(id), Some(token)) = (&identity, &cp.bootstrap_token) {
                let ca = Api::new(&cp.url, Some(token.clone()));
                tls::identity::spawn(
                    id.clone(),
                    ca,
                    cp.service.clone(),
                    cp.trust_domain.clone(),
                    shared.clone(),
                );
            }
            let api = Api::new(&cp.url, cp.token.clone());
            subscribe::spawn(cp.clone(), api.clone(), shared.clone());
            (None, Some((cp, api)))
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
            listeners.push(Listener::spawn(l, dir, shared.clone()));
        }
    }
    shared.set_listeners_bound();
    if let Some((path, text)) = watch_file {
        watch::spawn(path, text, shared.clone());
    }
    let lease = control_plane.as_ref().map(|(cp, api)| {
        (
            register::spawn(cp.clone(), api.clone(), shared.clone()),
            api,
        )
    });
    tracing::info!("listeners bound");

    shutdown::requested(&shared).await;
    shared.start_draining();
    // Leave the registry first, so callers stop choosing this instance while it drains.
    if let Some((lease, api)) = &lease {
        lease.deregister(api).await;
    }
    let deadline = Instant::now() + settings.drain_timeout;
    // Inbound was pushed first, so it drains first.
    let mut clean = true;
    for l in listeners {
        clean &= l.drain(deadline).await;
    }
    if let Some(export) = &shared.tracer.export {
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
