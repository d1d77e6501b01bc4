//! The payment service: idempotent charges, in memory.
//!
//! - `POST /charge {"order_id","amount_cents"}` with `Idempotency-Key: <key>` → 200
//!   `{"payment_id","status":"captured","order_id","amount_cents"}`; 400
//!   `missing-idempotency-key`; 409 `idempotency-key-reused` (same key, different charge)
//!
//! The key is what makes retries safe, and a mesh retries: a replayed key gets the original
//! payment back (with `X-Payment-Duplicate: true`) and nothing is charged twice. A charge that
//! fails (an injected 503, the v2 canary's failures) never reaches the handler, so its key is
//! not recorded and a retry with the same key can still succeed.
//!
//! Version `v2` is the demo's bad canary; its slower, failing defaults are set in `main.rs`
//! through the common fault settings, so they can be changed at runtime like any fault.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::faults::FaultSettings;
use crate::ids;
use crate::json::{ApiError, JsonBody};

pub const NAME: &str = "payment";

/// The request header that names a charge.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Set to `true` on a response replayed from an earlier charge with the same key.
pub const DUPLICATE_HEADER: &str = "x-payment-duplicate";

/// Longest accepted idempotency key: keys are ids, not documents.
const MAX_KEY: usize = 256;

/// The bad canary's faults when `--error-rate`/`--latency-ms` are not given.
pub const V2_DEFAULT_FAULTS: FaultSettings = FaultSettings {
    error_rate: 0.2,
    latency_ms: 30,
};

#[derive(Deserialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Payment {
    payment_id: String,
    status: &'static str,
    order_id: String,
    amount_cents: u64,
}

type Shared = Arc<Mutex<HashMap<String, Payment>>>;

/// The service's routes (faults, health and logging are added by `server`).
pub fn routes() -> Router {
    let state: Shared = Arc::default();
    Router::new()
        .route("/charge", post(charge))
        .with_state(state)
}

async fn charge(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ChargeRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    if req.amount_cents == 0 {
        return Err(ApiError::bad_request(
            "bad-amount",
            "amount_cents must be at least 1",
        ));
    }
    // Check and record under one lock: two concurrent charges with one key cannot both pay.
    // Each insert is a single step, so a poisoned lock still guards a consistent map.
    let mut payments = state.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(earlier) = payments.get(key) {
        if earlier.order_id != req.order_id || earlier.amount_cents != req.amount_cents {
            return Err(
                ApiError::new(StatusCode::CONFLICT, "idempotency-key-reused")
                    .with_detail("this key already paid a different order or amount"),
            );
        }
        let mut response = Json(earlier.clone()).into_response();
        response.headers_mut().insert(
            HeaderName::from_static(DUPLICATE_HEADER),
            HeaderValue::from_static("true"),
        );
        return Ok(response);
    }
    let payment = Payment {
        payment_id: ids::new_id("pay"),
        status: "captured",
        order_id: req.order_id,
        amount_cents: req.amount_cents,
    };
    payments.insert(key.to_owned(), payment.clone());
    Ok(Json(payment).into_response())
}

fn idempotency_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::bad_request(
            "missing-idempotency-key",
            "send an Idempotency-Key header (1-256 visible ASCII characters)",
        )
    };
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .ok_or_else(missing)?;
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(missing());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_present_and_short() {
        let mut headers = HeaderMap::new();
        assert!(idempotency_key(&headers).is_err());
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("  "));
        assert!(idempotency_key(&headers).is_err());
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("ord-1"));
        assert_eq!(idempotency_key(&headers), Ok("ord-1"));
        let long = "k".repeat(MAX_KEY + 1);
        headers.insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static("")),
        );
        assert!(idempotency_key(&headers).is_err());
    }
}
