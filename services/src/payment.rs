//! The payment service: idempotent charges, kept in the service's SQLite database.
//!
//! - `POST /charge {"order_id","amount_cents"}` with `Idempotency-Key: <key>` → 200
//!   `{"payment_id","status":"captured","order_id","amount_cents"}`; 400
//!   `missing-idempotency-key`; 409 `idempotency-key-reused` (same key, different charge)
//!
//! - `GET /admin/stats` → `{"charges_attempted","charges_deduplicated","charges"}`, service-wide
//!
//! The key is what makes retries safe, and a mesh retries, possibly on another instance: the
//! key is the charges table's primary key in the database every instance shares, so a replayed
//! key gets the original payment back (with `X-Payment-Duplicate: true`) and nothing is
//! charged twice, even when the first instance committed and died before answering. A charge
//! that fails (an injected 503, the v2 canary's failures) never reaches the handler, so its key
//! is not recorded and a retry with the same key can still succeed.
//!
//! Version `v2` is the demo's bad canary; its slower, failing defaults are set in `main.rs`
//! through the common fault settings, so they can be changed at runtime like any fault.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::faults::FaultSettings;
use crate::ids;
use crate::json::{ApiError, JsonBody};
use crate::store::Db;

/// The charges, keyed by idempotency key, and the service-wide counts `up` reports.
pub const SCHEMA: &str = "
    CREATE TABLE charges (
        idempotency_key TEXT PRIMARY KEY,
        payment_id TEXT NOT NULL UNIQUE,
        order_id TEXT NOT NULL,
        amount_cents INTEGER NOT NULL
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters VALUES ('attempted', 0), ('deduplicated', 0)";

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

#[derive(Clone)]
struct Shared {
    db: Db,
    /// Test fault: the process dies right after committing a new charge, so its answer is
    /// lost and the caller's retry lands on another instance.
    crash_after_commit: bool,
}

/// What the ledger did with a charge.
enum Recorded {
    New(Payment),
    Replayed(Payment),
    Conflict,
}

/// The service's routes (faults, health and logging are added by `server`), and its admin
/// routes (never faulted).
pub fn routes(db: Db, crash_after_commit: bool) -> (Router, Router) {
    let state = Shared {
        db,
        crash_after_commit,
    };
    let app = Router::new()
        .route("/charge", post(charge))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/admin/stats", get(stats))
        .with_state(state);
    (app, admin)
}

async fn charge(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ChargeRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?.to_owned();
    if req.amount_cents == 0 {
        return Err(ApiError::bad_request(
            "bad-amount",
            "amount_cents must be at least 1",
        ));
    }
    let payment = Payment {
        payment_id: ids::new_id("pay"),
        status: "captured",
        order_id: req.order_id,
        amount_cents: req.amount_cents,
    };
    let recorded = state
        .db
        .call(move |c| record(c, &key, payment))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ledger-unavailable")
                .with_detail(e.to_string())
        })?;
    match recorded {
        Recorded::New(p) => {
            if state.crash_after_commit {
                // Committed, never answered: what a crash between commit and reply looks like.
                std::process::abort();
            }
            Ok(Json(p).into_response())
        }
        Recorded::Replayed(p) => {
            let mut response = Json(p).into_response();
            response.headers_mut().insert(
                HeaderName::from_static(DUPLICATE_HEADER),
                HeaderValue::from_static("true"),
            );
            Ok(response)
        }
        Recorded::Conflict => Err(
            ApiError::new(StatusCode::CONFLICT, "idempotency-key-reused")
                .with_detail("this key already paid a different order or amount"),
        ),
    }
}

/// Inserts the charge unless its key is taken, in one transaction: two instances charging one
/// key at once cannot both pay, because the key is the primary key.
fn record(c: &mut rusqlite::Connection, key: &str, new: Payment) -> rusqlite::Result<Recorded> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "UPDATE counters SET value = value + 1 WHERE name = 'attempted'",
        [],
    )?;
    let inserted = tx.execute(
        "INSERT INTO charges (idempotency_key, payment_id, order_id, amount_cents)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (idempotency_key) DO NOTHING",
        rusqlite::params![key, new.payment_id, new.order_id, new.amount_cents as i64],
    )?;
    let recorded = if inserted == 1 {
        Recorded::New(new)
    } else {
        let (payment_id, order_id, amount): (String, String, i64) = tx.query_row(
            "SELECT payment_id, order_id, amount_cents FROM charges WHERE idempotency_key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if order_id != new.order_id || amount != new.amount_cents as i64 {
            Recorded::Conflict
        } else {
            tx.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'deduplicated'",
                [],
            )?;
            Recorded::Replayed(Payment {
                payment_id,
                status: "captured",
                order_id,
                amount_cents: new.amount_cents,
            })
        }
    };
    tx.commit()?;
    Ok(recorded)
}

#[derive(Serialize)]
struct Stats {
    charges_attempted: i64,
    charges_deduplicated: i64,
    charges: i64,
}

async fn stats(State(state): State<Shared>) -> Result<Json<Stats>, ApiError> {
    state
        .db
        .call(|c| {
            let counter = |name: &str| {
                c.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
            };
            Ok(Stats {
                charges_attempted: counter("attempted")?,
                charges_deduplicated: counter("deduplicated")?,
                charges: c.query_row("SELECT count(*) FROM charges", [], |r| r.get(0))?,
            })
        })
        .await
        .map(Json)
        .map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ledger-unavailable")
                .with_detail(e.to_string())
        })
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

    fn pay(order: &str, amount: u64) -> Payment {
        Payment {
            payment_id: ids::new_id("pay"),
            status: "captured",
            order_id: order.into(),
            amount_cents: amount,
        }
    }

    #[test]
    fn a_key_pays_once_and_replays_are_counted() -> rusqlite::Result<()> {
        let mut c = rusqlite::Connection::open_in_memory()?;
        c.execute_batch(SCHEMA)?;
        let first = match record(&mut c, "ord-1", pay("ord-1", 500))? {
            Recorded::New(p) => p.payment_id,
            _ => panic!("the first charge is new"),
        };
        match record(&mut c, "ord-1", pay("ord-1", 500))? {
            Recorded::Replayed(p) => assert_eq!(p.payment_id, first),
            _ => panic!("the same charge again is a replay"),
        }
        assert!(matches!(
            record(&mut c, "ord-1", pay("ord-2", 500))?,
            Recorded::Conflict
        ));
        let count: i64 = c.query_row("SELECT count(*) FROM charges", [], |r| r.get(0))?;
        let dedup: i64 = c.query_row(
            "SELECT value FROM counters WHERE name='deduplicated'",
            [],
            |r| r.get(0),
        )?;
        let attempted: i64 = c.query_row(
            "SELECT value FROM counters WHERE name='attempted'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!((count, dedup, attempted), (1, 1, 3));
        Ok(())
    }

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
