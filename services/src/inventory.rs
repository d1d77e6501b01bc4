//! The inventory service: stock per product and reservations against it, in the service's
//! SQLite database (each reserve and release one transaction).
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

use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::catalog::PRODUCTS;
use crate::ids;
use crate::json::{ApiError, JsonBody};
use crate::store::{Db, StoreError};

/// Stock per product and every reservation (an order reserves once: `order_id` is unique).
pub const SCHEMA: &str = "
    CREATE TABLE stock (product_id TEXT PRIMARY KEY, available INTEGER NOT NULL);
    CREATE TABLE reservations (
        reservation_id TEXT PRIMARY KEY,
        product_id TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        released INTEGER NOT NULL DEFAULT 0,
        order_id TEXT UNIQUE
    )";

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

/// Stocks every product with `initial` units the first time the database is opened; later
/// starts keep what is there.
pub fn stock_up(db: &Db, initial: u64) -> Result<(), StoreError> {
    let conn = db.blocking();
    for p in PRODUCTS {
        conn.execute(
            "INSERT OR IGNORE INTO stock (product_id, available) VALUES (?1, ?2)",
            params![p.id, initial as i64],
        )?;
    }
    Ok(())
}

/// The service's routes.
pub fn routes(db: Db) -> Router {
    Router::new()
        .route("/stock/{product_id}", get(stock_level))
        .route("/reserve", post(reserve))
        .route("/release", post(release))
        .with_state(db)
}

fn unavailable(e: StoreError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stock-unavailable").with_detail(e.to_string())
}

async fn stock_level(
    State(db): State<Db>,
    Path(product_id): Path<String>,
) -> Result<Json<StockLevel>, ApiError> {
    let id = product_id.clone();
    let available: Option<i64> = db
        .call(move |c| {
            c.query_row(
                "SELECT available FROM stock WHERE product_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
        })
        .await
        .map_err(unavailable)?;
    let available = available.ok_or_else(|| ApiError::not_found("unknown-product"))?;
    Ok(Json(StockLevel {
        product_id,
        available: available.max(0) as u64,
    }))
}

/// A reserve's outcome, decided inside its transaction.
enum Reserve {
    New(String),
    Duplicate(String),
    Reused,
    AlreadyReleased,
    Unknown,
    Short(i64),
}

async fn reserve(
    State(db): State<Db>,
    JsonBody(req): JsonBody<ReserveRequest>,
) -> Result<Response, ApiError> {
    if req.quantity == 0 {
        return Err(ApiError::bad_request(
            "bad-quantity",
            "quantity must be at least 1",
        ));
    }
    let outcome = db
        .call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(order_id) = &req.order_id {
                let existing: Option<(String, String, i64, bool)> = tx
                    .query_row(
                        "SELECT reservation_id, product_id, quantity, released FROM reservations WHERE order_id = ?1",
                        [order_id],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()?;
                if let Some((id, product, quantity, released)) = existing {
                    return Ok(if product != req.product_id || quantity != req.quantity as i64 {
                        Reserve::Reused
                    } else if released {
                        Reserve::AlreadyReleased
                    } else {
                        Reserve::Duplicate(id)
                    });
                }
            }
            let left: Option<i64> = tx
                .query_row("SELECT available FROM stock WHERE product_id = ?1", [&req.product_id], |r| r.get(0))
                .optional()?;
            let Some(left) = left else {
                return Ok(Reserve::Unknown);
            };
            if left < req.quantity as i64 {
                return Ok(Reserve::Short(left));
            }
            let id = ids::new_id("res");
            tx.execute(
                "UPDATE stock SET available = available - ?1 WHERE product_id = ?2",
                params![req.quantity as i64, req.product_id],
            )?;
            tx.execute(
                "INSERT INTO reservations (reservation_id, product_id, quantity, order_id) VALUES (?1, ?2, ?3, ?4)",
                params![id, req.product_id, req.quantity as i64, req.order_id],
            )?;
            tx.commit()?;
            Ok(Reserve::New(id))
        })
        .await
        .map_err(unavailable)?;
    match outcome {
        Reserve::New(reservation_id) => Ok(Json(Reserved { reservation_id }).into_response()),
        Reserve::Duplicate(reservation_id) => {
            let mut response = Json(Reserved { reservation_id }).into_response();
            response.headers_mut().insert(
                HeaderName::from_static(DUPLICATE_HEADER),
                HeaderValue::from_static("true"),
            );
            Ok(response)
        }
        Reserve::Reused => Err(ApiError::new(StatusCode::CONFLICT, "order-id-reused")
            .with_detail("this order_id already reserved a different product or quantity")),
        Reserve::AlreadyReleased => {
            Err(ApiError::new(StatusCode::CONFLICT, "reservation-released")
                .with_detail("this order's reservation was already released"))
        }
        Reserve::Unknown => Err(ApiError::not_found("unknown-product")),
        Reserve::Short(left) => Err(ApiError::new(StatusCode::CONFLICT, "out-of-stock")
            .with_detail(format!("{left} available"))),
    }
}

async fn release(
    State(db): State<Db>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    let by = match (req.reservation_id, req.order_id) {
        (Some(id), None) => ("reservation_id", id),
        (None, Some(order_id)) => ("order_id", order_id),
        _ => {
            return Err(ApiError::bad_request(
                "bad-release",
                "give exactly one of reservation_id and order_id",
            ))
        }
    };
    let outcome = db
        .call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found: Option<(String, String, i64, bool)> = tx
                .query_row(
                    &format!("SELECT reservation_id, product_id, quantity, released FROM reservations WHERE {} = ?1", by.0),
                    [&by.1],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((id, product, quantity, was_released)) = found else {
                return Ok(None);
            };
            if !was_released {
                tx.execute("UPDATE reservations SET released = 1 WHERE reservation_id = ?1", [&id])?;
                tx.execute(
                    "UPDATE stock SET available = available + ?1 WHERE product_id = ?2",
                    params![quantity, product],
                )?;
            }
            tx.commit()?;
            Ok(Some((id, !was_released)))
        })
        .await
        .map_err(unavailable)?;
    let (reservation_id, released) =
        outcome.ok_or_else(|| ApiError::not_found("unknown-reservation"))?;
    Ok(Json(Released {
        reservation_id,
        released,
    }))
}
