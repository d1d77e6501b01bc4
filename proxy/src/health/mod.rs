//! The health listener: what the kubelet and Prometheus may reach from outside the pod while
//! the admin listener stays on loopback. Read-only: `/live`, `/ready` (the admin's readiness),
//! `/metrics`, `/stats` (what `outrigger top` reads), and `/app-health/…`, the app's own HTTP
//! probes made on the kubelet's behalf ([`app_probe`]). Nothing here changes the sidecar or
//! shows its config: `/shutdown`, `/config` and `/logging` exist only on the admin listener.

pub mod app_probe;
pub mod app_watch;
pub mod http_get;

use crate::admin;
use crate::sidecar::Sidecar;
use app_probe::AppProbes;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connections open at once: the kubelet and a scraper need a handful; more is abuse.
const MAX_CONNECTIONS: usize = 64;

pub fn spawn(listener: TcpListener, sidecar: Arc<Sidecar>, probes: Arc<AppProbes>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "health accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let sidecar = sidecar.clone();
            let probes = probes.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let sidecar = sidecar.clone();
                    let probes = probes.clone();
                    async move { Ok::<_, Infallible>(route(&sidecar, &probes, req).await) }
                });
                let serving = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                // A probe connection has no business lasting: bounded like its requests.
                let _ = tokio::time::timeout(Duration::from_secs(120), serving).await;
                drop(slot);
            });
        }
    });
}

async fn route(
    sidecar: &Arc<Sidecar>,
    probes: &AppProbes,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() != Method::GET {
        return admin::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path {
        "/live" => admin::text(StatusCode::OK, "live\n"),
        "/ready" => admin::ready(sidecar),
        "/metrics" => admin::metrics(sidecar.clone()).await,
        "/stats" => admin::stats(sidecar),
        _ => match probes.get(path) {
            Some(p) => {
                let (status, body) = p.run().await;
                let mut r = Response::new(Full::new(body));
                *r.status_mut() = status;
                r
            }
            None => admin::text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}
