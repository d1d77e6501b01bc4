//! The order service: places an order by calling catalog, inventory and payment through the
//! mesh, and remembers the outcome.
//!
//! - `POST /orders {"user","product_id","quantity"}` → 201
//!   `{"order_id","status":"confirmed","payment_id"}`, or a failure
//!   `{"order_id","status":"failed","reason"}` with 404 (unknown product), 409 (out of stock)
//!   or 502 (a dependency failed)
//! - `GET /orders/{id}` → 200 the stored order; 404 `unknown-order`
//!
//! - `GET /admin/stats` → `{"orders","confirmed","failed","compensated","resumed"}`
//!
//! Placing an order is a saga whose state is in the service's SQLite database after every
//! step: price from `catalog` (`GET /products/{id}`; the order is then `pending`), stock from
//! `inventory` (`POST /reserve`; `reserved`), money from `payment` (`POST /charge`,
//! `Idempotency-Key: <order_id>`, `x-user-id: <user>`; `confirmed`). If the charge fails the
//! reservation is released (the compensation) before answering, so a failed order never holds
//! stock; if the reserve fails nothing is charged. An order service that dies mid-saga
//! finishes it when it starts again (`resume`): a `reserved` order retries its charge with the
//! same key, which payment deduplicates, and compensates if that fails; a `pending` one
//! releases whatever it may have reserved and fails.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::client::{MeshClient, Reply};
use crate::ids;
use crate::json::{ApiError, JsonBody};
use crate::log::Logger;
use crate::store::Db;
use crate::trace::TraceContext;
use crate::{catalog, inventory, payment};

pub const NAME: &str = "order";

/// Longest accepted user or product id: ids, not documents.
const MAX_FIELD: usize = 256;

#[derive(Deserialize)]
struct OrderRequest {
    user: String,
    product_id: String,
    quantity: u64,
}

/// An order as stored and as `GET /orders/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
struct Order {
    order_id: String,
    status: Status,
    user: String,
    product_id: String,
    quantity: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount_cents: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pending,
    Reserved,
    Confirmed,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Reserved => "reserved",
            Status::Confirmed => "confirmed",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "pending" => Status::Pending,
            "reserved" => Status::Reserved,
            "confirmed" => Status::Confirmed,
            _ => Status::Failed,
        }
    }
}

/// Orders, their saga state, and the counts `up` reports.
pub const SCHEMA: &str = "
    CREATE TABLE orders (
        order_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        user TEXT NOT NULL,
        product_id TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        amount_cents INTEGER,
        reservation_id TEXT,
        payment_id TEXT,
        reason TEXT,
        compensated INTEGER NOT NULL DEFAULT 0,
        resumed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX orders_unfinished ON orders (status) WHERE status IN ('pending', 'reserved')";

/// The answer to `POST /orders`: the spec'd fields only.
#[derive(Serialize)]
struct Placed<'a> {
    order_id: &'a str,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Deserialize)]
struct ProductReply {
    price_cents: u64,
}

#[derive(Deserialize)]
struct ReservationReply {
    reservation_id: String,
}

#[derive(Deserialize)]
struct PaymentReply {
    payment_id: String,
}

#[derive(Clone)]
struct Shared {
    mesh: MeshClient,
    log: Logger,
    db: Db,
}

/// The service's routes, calling the other services through `mesh`, and its admin routes.
/// Unfinished sagas left in `db` by an instance that died are finished in the background.
pub fn routes(mesh: MeshClient, db: Db) -> (Router, Router) {
    let state = Shared {
        mesh,
        log: Logger::new(NAME),
        db,
    };
    tokio::spawn(resume(state.clone()));
    let app = Router::new()
        .route("/orders", post(place))
        .route("/orders/{id}", get(show))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/admin/stats", get(stats))
        .with_state(state);
    (app, admin)
}

fn unavailable(e: crate::store::StoreError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "orders-unavailable").with_detail(e.to_string())
}

impl Shared {
    /// Writes the order's whole state: every saga step is on disk before the next begins.
    async fn store(&self, order: &Order) -> Result<(), Failure> {
        let o = order.clone();
        self.db
            .call(move |c| {
                c.execute(
                    "INSERT INTO orders (order_id, status, user, product_id, quantity, amount_cents,
                         reservation_id, payment_id, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (order_id) DO UPDATE SET status = ?2, amount_cents = ?6,
                         reservation_id = ?7, payment_id = ?8, reason = ?9",
                    rusqlite::params![
                        o.order_id,
                        o.status.as_str(),
                        o.user,
                        o.product_id,
                        o.quantity as i64,
                        o.amount_cents.map(|a| a as i64),
                        o.reservation_id,
                        o.payment_id,
                        o.reason
                    ],
                )
            })
            .await
            .map(|_| ())
            .map_err(|e| failure(StatusCode::SERVICE_UNAVAILABLE, format!("orders: {e}")))
    }

    async fn mark(&self, order_id: &str, column: &'static str) {
        let id = order_id.to_owned();
        let sql = format!("UPDATE orders SET {column} = 1 WHERE order_id = ?1");
        if let Err(e) = self.db.call(move |c| c.execute(&sql, [id])).await {
            self.log
                .error(&format!("cannot mark order {order_id} {column}: {e}"), None);
        }
    }
}

fn order_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    let status: String = r.get("status")?;
    let quantity: i64 = r.get("quantity")?;
    let amount: Option<i64> = r.get("amount_cents")?;
    Ok(Order {
        order_id: r.get("order_id")?,
        status: Status::parse(&status),
        user: r.get("user")?,
        product_id: r.get("product_id")?,
        quantity: quantity.max(0) as u64,
        amount_cents: amount.map(|a| a.max(0) as u64),
        reservation_id: r.get("reservation_id")?,
        payment_id: r.get("payment_id")?,
        reason: r.get("reason")?,
    })
}

async fn show(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    let found = state
        .db
        .call(move |c| {
            use rusqlite::OptionalExtension;
            c.query_row(
                "SELECT * FROM orders WHERE order_id = ?1",
                [id],
                order_from_row,
            )
            .optional()
        })
        .await
        .map_err(unavailable)?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found("unknown-order"))
}

#[derive(Serialize)]
struct Stats {
    orders: i64,
    confirmed: i64,
    failed: i64,
    compensated: i64,
    resumed: i64,
}

async fn stats(State(state): State<Shared>) -> Result<Json<Stats>, ApiError> {
    state
        .db
        .call(|c| {
            c.query_row(
                "SELECT count(*), count(*) FILTER (WHERE status = 'confirmed'),
                        count(*) FILTER (WHERE status = 'failed'),
                        coalesce(sum(compensated), 0), coalesce(sum(resumed), 0) FROM orders",
                [],
                |r| {
                    Ok(Stats {
                        orders: r.get(0)?,
                        confirmed: r.get(1)?,
                        failed: r.get(2)?,
                        compensated: r.get(3)?,
                        resumed: r.get(4)?,
                    })
                },
            )
        })
        .await
        .map(Json)
        .map_err(unavailable)
}

/// Finishes every saga an earlier process left half done. Several instances may run this at
/// once: each step is idempotent (the charge by its key, the release by order id), so the
/// worst case is a step done twice to the same effect.
async fn resume(state: Shared) {
    let unfinished = state
        .db
        .call(|c| {
            let mut q =
                c.prepare("SELECT * FROM orders WHERE status IN ('pending', 'reserved')")?;
            let rows = q.query_map([], order_from_row)?;
            rows.collect::<rusqlite::Result<Vec<Order>>>()
        })
        .await;
    let unfinished = match unfinished {
        Ok(o) => o,
        Err(e) => {
            state
                .log
                .error(&format!("cannot read unfinished orders: {e}"), None);
            return;
        }
    };
    for mut order in unfinished {
        let trace = TraceContext::from_headers(&HeaderMap::new());
        state.mark(&order.order_id, "resumed").await;
        let outcome = match (
            order.status,
            order.amount_cents,
            order.reservation_id.clone(),
        ) {
            (Status::Reserved, Some(amount), Some(reservation)) => {
                match charge(&state, &trace, &order, amount).await {
                    Ok(payment_id) => {
                        order.payment_id = Some(payment_id);
                        order.status = Status::Confirmed;
                        "confirmed"
                    }
                    Err(failed) => {
                        release(&state, &trace, &reservation).await;
                        state.mark(&order.order_id, "compensated").await;
                        order.status = Status::Failed;
                        order.reason = Some(failed.reason);
                        "compensated"
                    }
                }
            }
            _ => {
                // Interrupted before its reservation was recorded: give back whatever the
                // reserve may have taken, by order id.
                release_by_order(&state, &trace, &order.order_id).await;
                state.mark(&order.order_id, "compensated").await;
                order.status = Status::Failed;
                order.reason = Some("interrupted before the charge".into());
                "failed"
            }
        };
        let _ = state.store(&order).await;
        state.log.info(
            &format!("resumed order {}: {outcome}", order.order_id),
            None,
        );
    }
}

async fn place(
    State(state): State<Shared>,
    trace: TraceContext,
    JsonBody(req): JsonBody<OrderRequest>,
) -> Result<Response, ApiError> {
    validate(&req)?;
    let mut order = Order {
        order_id: ids::new_id("ord"),
        status: Status::Pending,
        user: req.user,
        product_id: req.product_id,
        quantity: req.quantity,
        amount_cents: None,
        reservation_id: None,
        payment_id: None,
        reason: None,
    };
    let status = match run_steps(&state, &trace, &mut order).await {
        Ok(()) => {
            order.status = Status::Confirmed;
            StatusCode::CREATED
        }
        Err(failure) => {
            state.log.warn(
                &format!("order {} failed: {}", order.order_id, failure.reason),
                trace.request_id(),
            );
            order.status = Status::Failed;
            order.reason = Some(failure.reason);
            failure.status
        }
    };
    if let Err(f) = state.store(&order).await {
        state.log.error(
            &format!("order {}: {}", order.order_id, f.reason),
            trace.request_id(),
        );
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "orders-unavailable")
                .with_detail(f.reason),
        );
    }
    let body = Placed {
        order_id: &order.order_id,
        status: order.status,
        payment_id: order.payment_id.as_deref(),
        reason: order.reason.as_deref(),
    };
    Ok((status, Json(body)).into_response())
}

fn validate(req: &OrderRequest) -> Result<(), ApiError> {
    if req.user.is_empty() || req.product_id.is_empty() {
        return Err(ApiError::bad_request(
            "bad-order",
            "user and product_id must not be empty",
        ));
    }
    if req.user.len() > MAX_FIELD || req.product_id.len() > MAX_FIELD {
        return Err(ApiError::bad_request(
            "bad-order",
            format!("user and product_id are at most {MAX_FIELD} bytes"),
        ));
    }
    if req.quantity == 0 {
        return Err(ApiError::bad_request(
            "bad-order",
            "quantity must be at least 1",
        ));
    }
    // user goes into a header on the charge: it must be a valid header value.
    if HeaderValue::from_str(&req.user).is_err() {
        return Err(ApiError::bad_request(
            "bad-order",
            "user must be printable ASCII",
        ));
    }
    Ok(())
}

/// Why an order failed: the status to answer and the `reason` to show.
struct Failure {
    status: StatusCode,
    reason: String,
}

fn failure(status: StatusCode, reason: impl Into<String>) -> Failure {
    Failure {
        status,
        reason: reason.into(),
    }
}

/// A dependency answered nothing usable: 502 with what and why.
fn dependency_failed(step: &str, error: impl std::fmt::Display) -> Failure {
    failure(StatusCode::BAD_GATEWAY, format!("{step}: {error}"))
}

/// A dependency answered with an unexpected status: 502, quoting its error code if it has one.
fn unexpected(step: &str, reply: &Reply) -> Failure {
    let code = reply.json::<serde_json::Value>().ok().and_then(|body| {
        body.get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
    });
    let status = reply.status.as_u16();
    match code {
        Some(code) => dependency_failed(step, format!("status {status} ({code})")),
        None => dependency_failed(step, format!("status {status}")),
    }
}

async fn run_steps(state: &Shared, trace: &TraceContext, order: &mut Order) -> Result<(), Failure> {
    let price = price(state, trace, &order.product_id).await?;
    let amount = price
        .checked_mul(order.quantity)
        .ok_or_else(|| failure(StatusCode::BAD_REQUEST, "amount too large"))?;
    order.amount_cents = Some(amount);
    state.store(order).await?;

    let reservation_id = reserve(state, trace, order).await?;
    order.reservation_id = Some(reservation_id.clone());
    order.status = Status::Reserved;
    state.store(order).await?;

    match charge(state, trace, order, amount).await {
        Ok(payment_id) => {
            order.payment_id = Some(payment_id);
            Ok(())
        }
        Err(failed) => {
            release(state, trace, &reservation_id).await;
            state.mark(&order.order_id, "compensated").await;
            Err(failed)
        }
    }
}

async fn price(state: &Shared, trace: &TraceContext, product_id: &str) -> Result<u64, Failure> {
    // The id goes into a path: anything that is not a plain id cannot be a product.
    if !product_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(failure(StatusCode::NOT_FOUND, "unknown-product"));
    }
    let reply = state
        .mesh
        .call::<()>(
            catalog::NAME,
            Method::GET,
            &format!("/products/{product_id}"),
            None,
            HeaderMap::new(),
            trace,
        )
        .await
        .map_err(|e| dependency_failed("catalog", e))?;
    match reply.status {
        StatusCode::OK => reply
            .json::<ProductReply>()
            .map(|product| product.price_cents)
            .map_err(|e| dependency_failed("catalog", format!("bad reply: {e}"))),
        StatusCode::NOT_FOUND => Err(failure(StatusCode::NOT_FOUND, "unknown-product")),
        _ => Err(unexpected("catalog", &reply)),
    }
}

async fn reserve(state: &Shared, trace: &TraceContext, order: &Order) -> Result<String, Failure> {
    let body = serde_json::json!({
        "product_id": order.product_id,
        "quantity": order.quantity,
        "order_id": order.order_id,
    });
    let result = state
        .mesh
        .call(
            inventory::NAME,
            Method::POST,
            "/reserve",
            Some(&body),
            HeaderMap::new(),
            trace,
        )
        .await;
    let reserved = match result {
        Ok(reply) => match reply.status {
            StatusCode::OK => reply
                .json::<ReservationReply>()
                .map(|r| r.reservation_id)
                .map_err(|e| dependency_failed("inventory", format!("bad reply: {e}"))),
            StatusCode::CONFLICT => Err(failure(StatusCode::CONFLICT, "out-of-stock")),
            StatusCode::NOT_FOUND => Err(failure(StatusCode::NOT_FOUND, "unknown-product")),
            _ => Err(unexpected("inventory", &reply)),
        },
        Err(error) => Err(dependency_failed("inventory", error)),
    };
    // A timeout or a gateway error may hide a reserve that did happen (its answer was lost);
    // releasing by order id is idempotent and a no-op when nothing was reserved.
    if let Err(failed) = &reserved {
        if failed.status == StatusCode::BAD_GATEWAY {
            release_by_order(state, trace, &order.order_id).await;
        }
    }
    reserved
}

async fn charge(
    state: &Shared,
    trace: &TraceContext,
    order: &Order,
    amount_cents: u64,
) -> Result<String, Failure> {
    let body = serde_json::json!({
        "order_id": order.order_id,
        "amount_cents": amount_cents,
    });
    let mut headers = HeaderMap::new();
    // The order id names the charge: a retried charge (by us or the mesh) never pays twice.
    let key = HeaderValue::from_str(&order.order_id)
        .map_err(|e| dependency_failed("payment", format!("bad idempotency key: {e}")))?;
    headers.insert(payment::IDEMPOTENCY_KEY, key);
    let user = HeaderValue::from_str(&order.user)
        .map_err(|e| dependency_failed("payment", format!("bad user: {e}")))?;
    headers.insert("x-user-id", user);
    let reply = state
        .mesh
        .call(
            payment::NAME,
            Method::POST,
            "/charge",
            Some(&body),
            headers,
            trace,
        )
        .await
        .map_err(|e| dependency_failed("payment", e))?;
    if !reply.status.is_success() {
        return Err(unexpected("payment", &reply));
    }
    reply
        .json::<PaymentReply>()
        .map(|p| p.payment_id)
        .map_err(|e| dependency_failed("payment", format!("bad reply: {e}")))
}

/// Gives the stock back after a failed charge. Failure here is logged, not returned: the
/// order has failed either way, and the caller is owed the payment's reason, not this one.
async fn release(state: &Shared, trace: &TraceContext, reservation_id: &str) {
    let body = serde_json::json!({ "reservation_id": reservation_id });
    release_with(state, trace, &body, reservation_id).await;
}

async fn release_by_order(state: &Shared, trace: &TraceContext, order_id: &str) {
    let body = serde_json::json!({ "order_id": order_id });
    release_with(state, trace, &body, order_id).await;
}

async fn release_with(state: &Shared, trace: &TraceContext, body: &serde_json::Value, what: &str) {
    let result = state
        .mesh
        .call(
            inventory::NAME,
            Method::POST,
            "/release",
            Some(body),
            HeaderMap::new(),
            trace,
        )
        .await;
    let problem = match result {
        Ok(reply) if reply.status.is_success() => return,
        // Nothing was reserved under that order: nothing to give back.
        Ok(reply) if reply.status == StatusCode::NOT_FOUND => return,
        Ok(reply) => format!("status {}", reply.status.as_u16()),
        Err(e) => e.to_string(),
    };
    state.log.error(
        &format!("release of {what} failed, stock stays reserved: {problem}"),
        trace.request_id(),
    );
}
