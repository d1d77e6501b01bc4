//! Runs a sidecar: admin first (so `/ready` answers 503 while starting), then the first
//! snapshot, then the listeners, then the config watcher. On shutdown: readiness drops at
//! once, inbound drains first (the app finishes what it was asked), then outbound (the app may
//! still call out while finishing), all within the drain timeout.

use crate::admin;
use crate::listener::Listener;
use crate::shutdown;
use crate::state::Shared;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::watch;
use crate::Direction;
use outrigger_config::SidecarFile;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Options {
    pub config: SidecarFile,
    /// The file to watch, when the config came from one; its text as applied.
    pub watch: Option<(PathBuf, String)>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

pub async fn run(opts: Options) -> Result<(), ServerError> {
    let SidecarFile {
        proxy: settings,
        snapshot,
    } = opts.config;
    let metrics = Metrics::new();
    let access_log = settings
        .access_log
        .then(|| AccessLog::spawn(tokio::io::stdout(), metrics.access_log_dropped.clone()));
    let shared = Arc::new(Shared::new(settings.clone(), access_log, metrics));

    let admin = bind("admin", settings.admin).await?;
    if !settings.admin.ip().is_loopback() {
        tracing::warn!(addr = %settings.admin, "the admin listener is not on loopback");
    }
    tracing::info!(addr = %admin.local_addr().unwrap_or(settings.admin), "admin listening");
    admin::spawn(admin, shared.clone());

    let version = shared.apply(snapshot, watch::SOURCE);
    tracing::info!(version, "applied initial config");

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
    if let Some((path, text)) = opts.watch {
        watch::spawn(path, text, shared.clone());
    }
    tracing::info!("ready");

    shutdown::requested(&shared).await;
    shared.start_draining();
    let deadline = Instant::now() + settings.drain_timeout;
    // Inbound was pushed first, so it drains first.
    let mut clean = true;
    for l in listeners {
        clean &= l.drain(deadline).await;
    }
    if clean {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached with connections still open; exiting");
    }
    Ok(())
}
