//! The inventory service: stock per product and reservations against it, in memory.
//!
//! - `GET /stock/{product_id}` → 200 `{"product_id","available"}`; 404 `unknown-product`
//! - `POST /reserve {"product_id","quantity","order_id"}` → 200 `{"reservation_id"}`;
//!   409 `out-of-stock`; 404 `unknown-product`
//! - `POST /release {"reservation_id"}` (or `{"order_id"}`) → 200
//!   `{"reservation_id","released"}`; 404 `unknown-reservation`
//!
//! Both writes are idempotent, because through a mesh they may be retried: a second reserve
//! with the same `order_id` returns the first reservation (header
//! `X-Reservation-Duplicate: true`) instead of taking stock again, and releasing twice returns
//! the stock once (`released` is true only for the call that returned it). Release by
//! `order_id` exists for a caller whose reserve timed out and who so never learnt the id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::catalog::PRODUCTS;
use crate::ids;
use crate::json::{ApiError, JsonBody};

pub const NAME: &str = "inventory";

/// Stock each product starts with unless `--stock` says otherwise: enough that load tests do
/// not run out.
pub const DEFAULT_STOCK: u64 = 1_000_000;

/// Set on a reserve answered from an earlier reservation with the same `order_id`.
pub const DUPLICATE_HEADER: &str = "x-reservation-duplicate";

#[derive(Deserialize)]
struct ReserveRequest {
    product_id: String,
    quantity: u64,
    order_id: Option<String>,
}

#[derive(Serialize)]
struct Reserved {
    reservation_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    reservation_id: Option<String>,
    order_id: Option<String>,
}

#[derive(Serialize)]
struct Released {
    reservation_id: String,
    /// True only for the call that actually returned the stock.
    released: bool,
}

#[derive(Serialize)]
struct StockLevel {
    product_id: String,
    available: u64,
}

struct Reservation {
    product_id: &'static str,
    quantity: u64,
    released: bool,
}

struct Stock {
    available: HashMap<&'static str, u64>,
    reservations: HashMap<String, Reservation>,
    /// order_id → reservation_id, for idempotent reserves and release by order.
    by_order: HashMap<String, String>,
}

type Shared = Arc<Mutex<Stock>>;

/// The service's routes, every product starting with `initial` units.
pub fn routes(initial: u64) -> Router {
    let stock = Stock {
        available: PRODUCTS.iter().map(|p| (p.id, initial)).collect(),
        reservations: HashMap::new(),
        by_order: HashMap::new(),
    };
    Router::new()
        .route("/stock/{product_id}", get(stock_level))
        .route("/reserve", post(reserve))
        .route("/release", post(release))
        .with_state(Arc::new(Mutex::new(stock)))
}

/// Every update below finishes its bookkeeping before it could panic, so a poisoned lock
/// still guards consistent data: keep serving.
fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Stock> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn stock_level(
    State(state): State<Shared>,
    Path(product_id): Path<String>,
) -> Result<Json<StockLevel>, ApiError> {
    let available = *lock(&state)
        .available
        .get(product_id.as_str())
        .ok_or_else(|| ApiError::not_found("unknown-product"))?;
    Ok(Json(StockLevel {
        product_id,
        available,
    }))
}

async fn reserve(
    State(state): State<Shared>,
    JsonBody(req): JsonBody<ReserveRequest>,
) -> Result<Response, ApiError> {
    if req.quantity == 0 {
        return Err(ApiError::bad_request(
            "bad-quantity",
            "quantity must be at least 1",
        ));
    }
    let mut stock = lock(&state);
    let Stock {
        available,
        reservations,
        by_order,
    } = &mut *stock;

    if let Some(existing_id) = req.order_id.as_ref().and_then(|id| by_order.get(id)) {
        let existing = reservations
            .get(existing_id)
            .ok_or_else(|| ApiError::internal("reservation index out of step"))?;
        if existing.product_id != req.product_id || existing.quantity != req.quantity {
            return Err(ApiError::new(StatusCode::CONFLICT, "order-id-reused")
                .with_detail("this order_id already reserved a different product or quantity"));
        }
        if existing.released {
            return Err(ApiError::new(StatusCode::CONFLICT, "reservation-released")
                .with_detail("this order's reservation was already released"));
        }
        let mut response = Json(Reserved {
            reservation_id: existing_id.clone(),
        })
        .into_response();
        response.headers_mut().insert(
            HeaderName::from_static(DUPLICATE_HEADER),
            HeaderValue::from_static("true"),
        );
        return Ok(response);
    }

    let (&product_id, left) = available
        .get_key_value(req.product_id.as_str())
        .ok_or_else(|| ApiError::not_found("unknown-product"))?;
    let left = *left;
    if left < req.quantity {
        return Err(ApiError::new(StatusCode::CONFLICT, "out-of-stock")
            .with_detail(format!("{left} available")));
    }
    available.insert(product_id, left - req.quantity);
    let reservation_id = ids::new_id("res");
    reservations.insert(
        reservation_id.clone(),
        Reservation {
            product_id,
            quantity: req.quantity,
            released: false,
        },
    );
    if let Some(order_id) = req.order_id {
        by_order.insert(order_id, reservation_id.clone());
    }
    Ok(Json(Reserved { reservation_id }).into_response())
}

async fn release(
    State(state): State<Shared>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    let mut stock = lock(&state);
    let Stock {
        available,
        reservations,
        by_order,
    } = &mut *stock;
    let reservation_id = match (req.reservation_id, req.order_id) {
        (Some(id), None) => id,
        (None, Some(order_id)) => by_order
            .get(&order_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("unknown-reservation"))?,
        _ => {
            return Err(ApiError::bad_request(
                "bad-release",
                "give exactly one of reservation_id and order_id",
            ))
        }
    };
    let reservation = reservations
        .get_mut(&reservation_id)
        .ok_or_else(|| ApiError::not_found("unknown-reservation"))?;
    let released = !reservation.released;
    if released {
        reservation.released = true;
        let level = available.entry(reservation.product_id).or_insert(0);
        *level = level.saturating_add(reservation.quantity);
    }
    Ok(Json(Released {
        reservation_id,
        released,
    }))
}
