//! The admin server (loopback by default): liveness, readiness, Prometheus metrics, the applied
//! snapshot, exact percentiles, the runtime log filter, and a loopback-only shutdown trigger.

use crate::sidecar::Sidecar;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub fn spawn(listener: TcpListener, sidecar: Arc<Sidecar>) {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let sidecar = sidecar.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let sidecar = sidecar.clone();
                    async move { Ok::<_, Infallible>(route(sidecar, peer, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

async fn route(
    sidecar: Arc<Sidecar>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/metrics") => metrics(sidecar).await,
        (&Method::GET, "/ready") => ready(&sidecar),
        (&Method::GET, "/config") => match sidecar.snapshot.current() {
            Some(c) => json_response(
                StatusCode::OK,
                &json!({"version": c.version, "snapshot": &*c.snapshot}),
            ),
            None => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"version": null, "snapshot": null}),
            ),
        },
        (&Method::GET, "/stats") => stats(&sidecar),
        (&Method::POST, "/shutdown") => {
            if !peer.ip().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "shutdown is only accepted from loopback\n",
                );
            }
            sidecar.lifecycle.request_shutdown();
            text(StatusCode::OK, "shutting down\n")
        }
        (_, "/logging") => logging(peer, req.method(), req.uri().query()),
        (_, "/live" | "/ready" | "/metrics" | "/config" | "/stats" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/ready`: 200, or 503 with the reason, so whoever sees the probe fail knows what to fix.
pub(crate) fn ready(sidecar: &Sidecar) -> Response<Full<Bytes>> {
    match sidecar.lifecycle.readiness(&sidecar.snapshot) {
        // Still ready: a native sidecar must be before its app starts. But said.
        Ok(()) => match sidecar.lifecycle.app_problem() {
            Some(p) => Response::new(Full::new(Bytes::from(format!("ready\nwarning: {p}\n")))),
            None => text(StatusCode::OK, "ready\n"),
        },
        Err(reason) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("not ready: {reason}\n"))));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

/// `/stats`: exact percentiles per destination over the stats window.
pub(crate) fn stats(sidecar: &Sidecar) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        &json!({
            "window_secs": sidecar.telemetry.stats.window().as_secs(),
            "service": sidecar.snapshot.current().map(|c| c.service.to_string()),
            "destinations": sidecar.telemetry.stats.rows(),
        }),
    )
}

/// `GET /logging` shows the log filter; `PUT /logging?level=FILTER` (loopback only) replaces it.
fn logging(peer: SocketAddr, method: &Method, query: Option<&str>) -> Response<Full<Bytes>> {
    use crate::logging::{current_filter, set_filter, LoggingError};
    let failed = |status: StatusCode, error: String| {
        json_response(
            status,
            &json!({ "error": error, "level": current_filter().ok() }),
        )
    };
    let reply = |r: Result<String, LoggingError>| match r {
        Ok(level) => json_response(StatusCode::OK, &json!({ "level": level })),
        Err(e @ (LoggingError::NotInitialised | LoggingError::Reload(_))) => {
            failed(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => failed(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match *method {
        Method::GET => reply(current_filter()),
        Method::PUT => {
            if !peer.ip().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "changing the log level is only accepted from loopback\n",
                );
            }
            let level = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .find_map(|(k, v)| (k == "level").then_some(v));
            match level {
                Some(level) => reply(set_filter(&level)),
                None => failed(
                    StatusCode::BAD_REQUEST,
                    "give the new filter as ?level=FILTER, e.g. ?level=debug".into(),
                ),
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// `/metrics`, encoded on the blocking pool: with hundreds of series an encode takes
/// milliseconds, which on a single-worker runtime would stall every request for as long.
pub(crate) async fn metrics(sidecar: Arc<Sidecar>) -> Response<Full<Bytes>> {
    let body = match tokio::task::spawn_blocking(move || sidecar.telemetry.metrics.encode()).await {
        Ok(text) => text,
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n"),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
