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
    /// The route exists, the method does not (axum's bare 405, answered in the format).
    MethodNotAllowed,
    /// A body over its route's limit: the message names the limit.
    TooLarge(String),
}

impl ApiError {
    /// Every reason the API answers with, and its status: the README's table, walked by a test.
    pub const REASONS: &'static [(&'static str, u16)] = &[
        ("bad-request", 400),
        ("invalid", 400),
        ("unauthorized", 401),
        ("forbidden", 403),
        ("not-found", 404),
        ("method-not-allowed", 405),
        ("conflict", 409),
        ("too-large", 413),
        ("internal", 500),
        ("unavailable", 503),
    ];
}

impl IntoResponse for ApiError {
    /// The mesh's one error format (the proxy's too): `{"reason", "message", "hint"}`, plus
    /// `request_id` (added on the way out, see `api::count`) and, for invalid resources, the
    /// placed `details`.
    fn into_response(self) -> Response {
        let (status, reason, message, hint): (StatusCode, &str, String, Option<&str>) = match self {
            ApiError::BadRequest(r) => (StatusCode::BAD_REQUEST, "bad-request", r, None),
            ApiError::Invalid(details) => {
                let message = format!(
                    "{} field(s) invalid; nothing was applied: {}",
                    details.len(),
                    details.first().map(|d| d.to_string()).unwrap_or_default()
                );
                let body = json!({
                    "reason": "invalid",
                    "message": message,
                    "hint": "each of details names the document, field, line and column; outrigger validate checks offline",
                    "details": details,
                });
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
            ApiError::Unauthenticated(r) => {
                return unauthorized(json!({
                    "reason": "unauthorized",
                    "message": r,
                    "hint": "give an operator token (--token-file FILE or OUTRIGGER_TOKEN): admin to change, reader to read",
                }))
            }
            ApiError::Forbidden(r) => (StatusCode::FORBIDDEN, "forbidden", r, None),
            ApiError::NotFound(r) => (
                StatusCode::NOT_FOUND,
                "not-found",
                r,
                Some("outrigger get services|routes|policies|instances lists what there is"),
            ),
            ApiError::Conflict(r) => (StatusCode::CONFLICT, "conflict", r, None),
            ApiError::TooLarge(r) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                r,
                Some("split the body (several applies), or raise the limit it names"),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not take that method".into(),
                Some("GET /v1/openapi.yaml lists every route and its methods"),
            ),
            ApiError::Internal(r) => {
                tracing::error!(reason = %r, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    r,
                    Some("see the control plane's log"),
                )
            }
            ApiError::Unavailable(r) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", r, None),
        };
        let mut body = json!({"reason": reason, "message": message});
        if let Some(h) = hint {
            body["hint"] = h.into();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_of(e: ApiError) -> (String, u16) {
        let res = e.into_response();
        let status = res.status().as_u16();
        let body = futures_body(res);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (v["reason"].as_str().unwrap_or_default().to_string(), status)
    }

    fn futures_body(res: Response) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().build();
        match rt {
            Ok(rt) => rt
                .block_on(res.into_body().collect())
                .map(|c| c.to_bytes())
                .unwrap_or_default(),
            Err(_) => Bytes::new(),
        }
    }

    #[test]
    fn every_reason_is_answered_and_in_the_readme() {
        let all = [
            ApiError::BadRequest("x".into()),
            ApiError::Invalid(vec![]),
            ApiError::Unauthenticated("x".into()),
            ApiError::Forbidden("x".into()),
            ApiError::NotFound("x".into()),
            ApiError::MethodNotAllowed,
            ApiError::Conflict("x".into()),
            ApiError::TooLarge("x".into()),
            ApiError::Internal("x".into()),
            ApiError::Unavailable("x".into()),
        ];
        let answered: Vec<(String, u16)> = all.into_iter().map(reason_of).collect();
        let listed: Vec<(String, u16)> = ApiError::REASONS
            .iter()
            .map(|(r, s)| (r.to_string(), *s))
            .collect();
        assert_eq!(answered, listed);
        let readme = include_str!("../../../README.md");
        for (reason, status) in ApiError::REASONS {
            assert!(
                readme.contains(&format!("| {status} | `{reason}` |")),
                "README's API table lacks {status} `{reason}`"
            );
        }
    }
}
