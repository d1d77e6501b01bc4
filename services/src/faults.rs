//! Fault injection inside the services: a share of requests answered 503 and latency added
//! to every response, set at start (`--error-rate`, `--latency-ms`) and changed at runtime
//! (`GET`/`POST /admin/faults`).
//!
//! This is how mesh demos and tests make a service misbehave without a special build: the
//! sidecar's retries, outlier ejection and canary analysis need a real upstream that fails.
//! `/healthz` and `/admin/*` are never faulted (they are mounted outside this middleware), so
//! a faulty service can still be probed and repaired.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::json::{ApiError, JsonBody};

/// Latency above this is refused: a minute already outlives any sane client deadline, and a
/// typo (an extra zero or three) should not wedge a test run.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// The fault settings in force, as the admin API shows and accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultSettings {
    pub error_rate: f64,
    pub latency_ms: u64,
}

/// A partial update: fields left out keep their current value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultUpdate {
    error_rate: Option<f64>,
    latency_ms: Option<u64>,
}

/// The live settings, shared by the middleware and the admin handlers. Atomics, not a lock:
/// every faulted request reads them.
#[derive(Debug)]
pub struct Faults {
    error_rate_bits: AtomicU64,
    latency_ms: AtomicU64,
}

impl Faults {
    /// Settings must already be valid (`validate_rate`, `validate_latency`).
    pub fn new(settings: FaultSettings) -> Arc<Faults> {
        Arc::new(Faults {
            error_rate_bits: AtomicU64::new(settings.error_rate.to_bits()),
            latency_ms: AtomicU64::new(settings.latency_ms),
        })
    }

    pub fn get(&self) -> FaultSettings {
        FaultSettings {
            error_rate: f64::from_bits(self.error_rate_bits.load(Ordering::Relaxed)),
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
        }
    }

    fn set(&self, settings: FaultSettings) {
        self.error_rate_bits
            .store(settings.error_rate.to_bits(), Ordering::Relaxed);
        self.latency_ms
            .store(settings.latency_ms, Ordering::Relaxed);
    }
}

/// An error rate is a share of requests: finite and within 0..=1.
pub fn validate_rate(rate: f64) -> Result<f64, String> {
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("error rate must be between 0 and 1, got {rate}"))
    }
}

pub fn validate_latency(ms: u64) -> Result<u64, String> {
    if ms <= MAX_LATENCY_MS {
        Ok(ms)
    } else {
        Err(format!(
            "latency must be at most {MAX_LATENCY_MS} ms, got {ms}"
        ))
    }
}

/// clap parser for `--error-rate`.
pub fn parse_rate(arg: &str) -> Result<f64, String> {
    let rate: f64 = arg.parse().map_err(|_| format!("not a number: {arg:?}"))?;
    validate_rate(rate)
}

/// clap parser for `--latency-ms`.
pub fn parse_latency(arg: &str) -> Result<u64, String> {
    let ms: u64 = arg
        .parse()
        .map_err(|_| format!("not a whole number of milliseconds: {arg:?}"))?;
    validate_latency(ms)
}

/// Middleware for the application routes: wait the added latency, then maybe answer 503.
/// The latency comes first so injected errors are slow too, as real overload errors are.
pub async fn inject(State(faults): State<Arc<Faults>>, req: Request, next: Next) -> Response {
    let settings = faults.get();
    if settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
    }
    if settings.error_rate > 0.0 && fastrand::f64() < settings.error_rate {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "injected").into_response();
    }
    next.run(req).await
}

/// `GET /admin/faults` and `POST /admin/faults`.
pub fn admin_routes(faults: Arc<Faults>) -> Router {
    Router::new()
        .route("/admin/faults", get(show).post(update))
        .with_state(faults)
}

async fn show(State(faults): State<Arc<Faults>>) -> Json<FaultSettings> {
    Json(faults.get())
}

async fn update(
    State(faults): State<Arc<Faults>>,
    JsonBody(update): JsonBody<FaultUpdate>,
) -> Result<Json<FaultSettings>, ApiError> {
    let mut settings = faults.get();
    if let Some(rate) = update.error_rate {
        settings.error_rate =
            validate_rate(rate).map_err(|e| ApiError::bad_request("bad-faults", e))?;
    }
    if let Some(ms) = update.latency_ms {
        settings.latency_ms =
            validate_latency(ms).map_err(|e| ApiError::bad_request("bad-faults", e))?;
    }
    faults.set(settings);
    Ok(Json(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_latencies_are_bounded() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("0.2"), Ok(0.2));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.01").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("lots").is_err());
        assert_eq!(parse_latency("30"), Ok(30));
        assert!(parse_latency("60001").is_err());
        assert!(parse_latency("-1").is_err());
    }

    #[test]
    fn settings_round_trip_through_the_atomics() {
        let faults = Faults::new(FaultSettings {
            error_rate: 0.25,
            latency_ms: 7,
        });
        assert_eq!(faults.get().error_rate, 0.25);
        faults.set(FaultSettings {
            error_rate: 1.0,
            latency_ms: 0,
        });
        assert_eq!(
            faults.get(),
            FaultSettings {
                error_rate: 1.0,
                latency_ms: 0
            }
        );
    }
}
