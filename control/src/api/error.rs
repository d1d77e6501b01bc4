//! API errors as JSON responses, and extractors whose rejections are those errors: a client's
//! bad JSON, query or body is always a 400 with the reason, never a 500.

use crate::state::ChangeError;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use outrigger_config::error::FieldError;
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Invalid(Vec<FieldError>),
    /// No credential that counts here, or a bootstrap token that is unknown, used up,
    /// revoked or expired: 401 with the reason.
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Internal(String),
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(r) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad-request", "reason": r}),
            ),
            ApiError::Invalid(details) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid", "details": details}),
            ),
            ApiError::Unauthenticated(r) => {
                return unauthorized(json!({"error": "unauthorized", "reason": r}))
            }
            ApiError::Forbidden(r) => (
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "reason": r}),
            ),
            ApiError::NotFound(r) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not-found", "reason": r}),
            ),
            ApiError::Conflict(r) => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "reason": r}),
            ),
            ApiError::Internal(r) => {
                tracing::error!(reason = %r, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal", "reason": r}),
                )
            }
            ApiError::Unavailable(r) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "reason": r}),
            ),
        };
        (status, Json(body)).into_response()
    }
}

fn unauthorized(body: serde_json::Value) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    r
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Invalid(details) => ApiError::Invalid(details),
            e @ ChangeError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            ChangeError::Missing(r) => ApiError::NotFound(r),
            ChangeError::Conflict(r) => ApiError::Conflict(r),
            ChangeError::Ca(e) => ApiError::Internal(e.to_string()),
            ChangeError::BadRequest(r) => ApiError::BadRequest(r),
            ChangeError::Store(e) => ApiError::Internal(e.to_string()),
            e @ ChangeError::Stopped => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// A JSON request body, whatever its content type; bad JSON is a 400 that says why.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Query parameters; a bad query is a 400 that says why.
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryArgs(q))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}
