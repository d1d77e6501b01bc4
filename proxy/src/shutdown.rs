//! What starts a shutdown: SIGTERM, SIGINT, or `POST /shutdown` on the admin port.

use crate::lifecycle::Lifecycle;

pub async fn requested(lifecycle: &Lifecycle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = sigterm => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = lifecycle.shutdown_requested() => tracing::info!("shutdown requested on the admin port"),
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = lifecycle.shutdown_requested() => {}
    }
}
