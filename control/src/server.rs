//! Running the control plane: open the store, start the state task, bind, serve until the
//! shutdown signal, then end the push streams so connections can close.

use crate::api::{self, AppState};
use crate::auth::Token;
use crate::metrics::Metrics;
use crate::push::{Sidecars, KEEPALIVE};
use crate::state;
use crate::store::{Store, StoreError};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long shutdown waits for open connections after the push streams have ended.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub token: Token,
    /// Between keepalive lines on push streams.
    pub keepalive: Duration,
}

impl Options {
    pub fn new(listen: SocketAddr, data_dir: PathBuf, token: Token) -> Self {
        Self {
            listen,
            data_dir,
            token,
            keepalive: KEEPALIVE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
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

/// Serves until `shutdown` completes.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Metrics::new()?;
    let data_dir = options.data_dir.clone();
    let (store, loaded) = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    tracing::info!(
        data_dir = %options.data_dir.display(),
        resources = loaded.resources.len(),
        revision = loaded.high_water,
        "store open"
    );
    let state = state::start(store, loaded, metrics.clone());
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
