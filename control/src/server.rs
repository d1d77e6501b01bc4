//! Running the control plane: open the store and the CA in it, start the state task, bind,
//! serve until the shutdown signal, then end the push streams so connections can close.

use crate::api::{self, AppState};
use crate::auth::Token;
use crate::ca::{Authority, CaError, CaOptions};
use crate::clock;
use crate::metrics::Metrics;
use crate::push::{Sidecars, KEEPALIVE};
use crate::state;
use crate::store::{Change, Loaded, Store, StoreError};
use outrigger_config::{MtlsMode, DEFAULT_TRUST_DOMAIN};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long shutdown waits for open connections after the push streams have ended.
const GRACE: Duration = Duration::from_secs(5);
/// Of a leaf certificate, unless `--cert-lifetime` says otherwise.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub token: Token,
    /// Between keepalive lines on push streams.
    pub keepalive: Duration,
    /// Identities are `spiffe://<trust_domain>/service/<name>`.
    pub trust_domain: String,
    pub cert_lifetime: Duration,
    /// The mTLS mode pushed to the sidecars.
    pub mtls: MtlsMode,
    /// An operator's root CA: (certificate file, key file); else one is made under
    /// `<data_dir>/ca` on first start.
    pub ca_root: Option<(PathBuf, PathBuf)>,
}

impl Options {
    pub fn new(listen: SocketAddr, data_dir: PathBuf, token: Token) -> Self {
        Self {
            listen,
            data_dir,
            token,
            keepalive: KEEPALIVE,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cert_lifetime: DEFAULT_CERT_LIFETIME,
            mtls: MtlsMode::Strict,
            ca_root: None,
        }
    }

    fn ca(&self) -> CaOptions {
        CaOptions {
            dir: self.data_dir.join("ca"),
            trust_domain: self.trust_domain.clone(),
            cert_lifetime: self.cert_lifetime,
            mode: self.mtls,
            operator_root: self.ca_root.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Opens the store and the CA from it; on first start (or with a new operator root) the CA's
/// root is stored before anything else happens. Blocking: key generation and disk writes.
pub fn open(data_dir: &Path, ca: CaOptions) -> Result<(Store, Loaded, Authority), ServeError> {
    let (store, mut loaded) = Store::open(data_dir)?;
    let (ca, changes) = Authority::open(ca, std::mem::take(&mut loaded.ca), clock::now())?;
    if !changes.is_empty() {
        let changes: Vec<Change> = changes.into_iter().map(Change::Ca).collect();
        store.commit(&changes, loaded.high_water)?;
    }
    Ok((store, loaded, ca))
}

/// Serves until `shutdown` completes.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Metrics::new()?;
    let data_dir = options.data_dir.clone();
    let ca_options = options.ca();
    let (store, loaded, ca) = tokio::task::spawn_blocking(move || open(&data_dir, ca_options))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    tracing::info!(
        data_dir = %options.data_dir.display(),
        resources = loaded.resources.len(),
        revision = loaded.high_water,
        "store open"
    );
    tracing::info!(
        trust_domain = %ca.trust_domain(),
        active_root = %ca.active_id(),
        roots = ca.trust_bundle().len(),
        mtls = ?options.mtls,
        cert_lifetime = %humantime::format_duration(options.cert_lifetime),
        "CA ready"
    );
    let state = state::start(store, loaded, ca, metrics.clone());
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = AppState {
        state,
        sidecars: Arc::new(Sidecars::new(metrics.clone())),
        metrics,
        token: Arc::new(options.token),
        ready: ready.clone(),
        keepalive: options.keepalive,
        shutdown: stop_rx,
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: options.listen,
        source,
    })?;
    tracing::info!(addr = %addr, "listening");

    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, api::router(app)).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down");
        ready.store(false, Ordering::Relaxed);
        // Push streams never end by themselves; this ends them.
        let _ = stop_tx.send(true);
        let _ = stopped_tx.send(());
    });
    tokio::select! {
        r = serve.into_future() => r.map_err(ServeError::Serve)?,
        _ = async {
            if stopped_rx.await.is_ok() {
                tokio::time::sleep(GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!("connections still open after the grace period; exiting anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}
