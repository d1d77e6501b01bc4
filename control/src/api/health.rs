//! Liveness, readiness and Prometheus metrics.

use super::{ApiError, AppState};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use http::{header, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;

/// The API's OpenAPI document, the one `every_route_is_in_the_openapi_document` holds equal to
/// [`super::ROUTES`].
pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/yaml")],
        include_str!("../../openapi.yaml"),
    )
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if app.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready"})),
        )
    }
}

pub async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = app
        .metrics
        .render()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
