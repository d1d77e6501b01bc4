//! What every service's HTTP server has in common: `/healthz`, the fault middleware and
//! `/admin/faults`, one JSON log line per request, JSON 404/405, binding, and graceful
//! shutdown on SIGTERM/SIGINT. A service module only supplies its own routes.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::faults::{self, Faults};
use crate::json::ApiError;
use crate::log::{Level, Logger};
use crate::trace;

/// How long shutdown waits for requests in flight before giving up on them. Shorter than the
/// sidecar's default drain (30 s) so the app is gone before its sidecar stops forwarding.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Who this process is, for `/healthz` and the logs.
#[derive(Debug, Clone)]
pub struct Identity {
    pub service: &'static str,
    pub version: String,
}

/// Serves `app` (the service's own routes) on `listen` until SIGTERM or SIGINT, then drains.
/// Returns once the server has stopped; an error only if it could not start.
pub async fn run(
    identity: Identity,
    listen: &str,
    faults: Arc<Faults>,
    app: Router,
    admin: Router,
) -> anyhow::Result<()> {
    let log = Logger::new(identity.service);
    let router = app
        .layer(middleware::from_fn_with_state(
            Arc::clone(&faults),
            faults::inject,
        ))
        .merge(health_routes(identity.clone()))
        .merge(faults::admin_routes(Arc::clone(&faults)))
        // The service's own admin routes (its stats): never faulted.
        .merge(admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            version_header(&identity.version),
            stamp_version,
        ))
        .layer(middleware::from_fn_with_state(log, log_request));

    let mut signals = ShutdownSignals::install(log);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // Responses are small and latency is what the mesh measures: never wait on Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let settings = faults.get();
    // Tests and `outrigger up` read the real address from this line (`--listen 127.0.0.1:0`).
    log.info(
        &format!(
            "listening on {addr} version={} error_rate={} latency_ms={}",
            identity.version, settings.error_rate, settings.latency_ms
        ),
        None,
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(server.into_future());

    tokio::select! {
        result = &mut server => {
            result.context("server failed")?;
        }
        signal = signals.recv() => {
            log.info(&format!("{signal} received, draining"), None);
            let _ = stop_tx.send(());
            match tokio::time::timeout(DRAIN_GRACE, server).await {
                Ok(result) => result.context("server failed while draining")?,
                Err(_) => log.warn(
                    &format!("requests still in flight after {DRAIN_GRACE:?}, stopping anyway"),
                    None,
                ),
            }
        }
    }
    log.info("stopped", None);
    Ok(())
}

fn health_routes(identity: Identity) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .with_state(Arc::new(identity))
}

async fn health(State(identity): State<Arc<Identity>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "service": identity.service,
        "version": identity.version,
    }))
}

/// Names the instance's version on every response, so canary splits can be checked from
/// the client side without access to the mesh's metrics.
pub const VERSION_HEADER: &str = "x-service-version";

fn version_header(version: &str) -> HeaderValue {
    HeaderValue::from_str(version).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn stamp_version(State(version): State<HeaderValue>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response
        .headers_mut()
        .insert(HeaderName::from_static(VERSION_HEADER), version);
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("not-found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
}

/// One log line per request, after its response headers are ready.
async fn log_request(State(log): State<Logger>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let correlation_id = trace::correlation_id(req.headers());
    let response = next.run(req).await.into_response();
    let status = response.status().as_u16();
    let millis = start.elapsed().as_secs_f64() * 1000.0;
    log.log(
        Level::for_status(status),
        &format!("{method} {path} {status} {millis:.1}ms"),
        correlation_id.as_deref(),
    );
    response
}

/// SIGTERM and SIGINT, watched from the moment this is made. Made before the startup line
/// is printed: a signal that arrives once the service looks up must find a handler, not the
/// default action (instant death, exit by signal instead of a drained exit 0).
struct ShutdownSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn install(log: Logger) -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            // Failing to watch a signal (it never does on Linux) leaves that signal's default
            // action; it should not stop the service from starting.
            let watch = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(stream) => Some(stream),
                Err(e) => {
                    log.warn(&format!("cannot watch {name}: {e}"), None);
                    None
                }
            };
            ShutdownSignals {
                term: watch(SignalKind::terminate(), "SIGTERM"),
                int: watch(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = log;
            ShutdownSignals {}
        }
    }

    /// Resolves with the name of the first signal received.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        // None means the signal driver is gone: no more signals will come.
                        if signal.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => "SIGTERM",
                () = next(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}
