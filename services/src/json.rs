//! JSON in and out: the request-body extractor and the error response every service uses.
//!
//! axum's own `Json` extractor answers bad input with plain text and 415/422; the shop's
//! contract is that every error is JSON (`{"error":"<code>","detail":"…"}`) and any body that
//! is not the expected JSON is a 400. Keeping both here means no handler can get it wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An error answer: a status and a stable, machine-readable code, with optional detail for
/// people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str) -> ApiError {
        ApiError {
            status,
            code,
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> ApiError {
        self.detail = Some(detail.into());
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code).with_detail(detail)
    }

    pub fn not_found(code: &'static str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code)
    }

    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal").with_detail(detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            detail: self.detail.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON request body of type `T`. Whatever the `Content-Type`, since curl users and load
/// generators often omit it; anything that does not parse into `T` (syntax, missing field,
/// wrong type) is a 400 `bad-json` naming the problem.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Bytes enforces axum's default body limit (2 MiB): a larger body is a 413, in JSON.
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            ApiError::new(status, "bad-body").with_detail(rejection.body_text())
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body, mapping any failure to the 400 the contract asks for.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("bad-json", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Login {
        #[allow(dead_code)]
        username: String,
    }

    #[test]
    fn bad_input_is_a_400_with_a_reason() {
        for body in [&b"{"[..], b"[]", b"{\"username\":1}", b"{}", b""] {
            let err = parse::<Login>(body).err();
            let err = err.as_ref();
            assert_eq!(err.map(|e| e.status), Some(StatusCode::BAD_REQUEST));
            assert_eq!(err.map(|e| e.code), Some("bad-json"));
            assert!(err.and_then(|e| e.detail.as_ref()).is_some());
        }
        assert!(parse::<Login>(b"{\"username\":\"a\",\"extra\":true}").is_ok());
    }
}
