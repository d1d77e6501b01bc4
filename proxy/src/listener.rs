//! Accept loops for the outbound and inbound listeners. Each connection speaks HTTP/1.1 or h2c
//! (prior knowledge), detected from its first bytes, and is watched so shutdown can drain it:
//! HTTP/1 connections close after the response in flight, HTTP/2 ones get GOAWAY.

use crate::forward;
use crate::state::Shared;
use crate::Direction;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct Listener {
    stop: oneshot::Sender<()>,
    accepting: JoinHandle<GracefulShutdown>,
}

impl Listener {
    pub fn spawn(listener: TcpListener, direction: Direction, shared: Arc<Shared>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let accepting = tokio::spawn(accept_loop(listener, direction, shared, stopped));
        Self { stop, accepting }
    }

    /// Stops accepting, asks every connection to finish gracefully, and waits for them until
    /// `deadline`. Returns whether all of them finished in time.
    pub async fn drain(self, deadline: Instant) -> bool {
        let _ = self.stop.send(());
        let Ok(graceful) = self.accepting.await else {
            return true;
        };
        tokio::time::timeout_at(deadline, graceful.shutdown())
            .await
            .is_ok()
    }
}

fn builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let limit = shared.settings.max_header_bytes;
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper's own limits sit above ours, so that an oversized header block usually reaches
    // the proxy and gets its explained 431 rather than hyper's bare one.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size((limit + 64 * 1024).max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size((limit + 64 * 1024) as u32)
        .max_concurrent_streams(1024);
    b
}

async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&shared));
    let dir = direction.as_str();
    let accepted = shared.metrics.connections.with_label_values(&[dir]);
    let open = shared.metrics.connections_open.with_label_values(&[dir]);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, direction = dir, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        open.inc();
        let open = open.clone();
        let shared = shared.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = service_fn(move |req| forward::handle(shared.clone(), direction, peer, req));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            open.dec();
        });
    }
    graceful
}
