//! The payment service: idempotency, failed charges, and the v2 canary's failure rate.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::harness::{Http, Resp, Shop};

async fn charge(http: &Http, shop: &Shop, key: Option<&str>, order: &str, amount: u64) -> Resp {
    let body = serde_json::json!({"order_id": order, "amount_cents": amount}).to_string();
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    http.send(Method::POST, &shop.url("/charge"), &headers, Some(&body))
        .await
}

#[tokio::test]
async fn same_idempotency_key_same_payment() {
    let shop = Shop::start("payment", &[]);
    let http = Http::default();

    let first = charge(&http, &shop, Some("ord-1"), "ord-1", 1200).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json["status"], "captured");
    assert_eq!(first.header("x-payment-duplicate"), None);
    let payment_id = first.str("payment_id");

    let replay = charge(&http, &shop, Some("ord-1"), "ord-1", 1200).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.str("payment_id"), payment_id);
    assert_eq!(replay.json["status"], "captured");
    assert_eq!(replay.header("x-payment-duplicate"), Some("true"));

    let other = charge(&http, &shop, Some("ord-2"), "ord-2", 1200).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_ne!(other.str("payment_id"), payment_id);

    // The same key for a different charge is a client bug, not a replay.
    let reused = charge(&http, &shop, Some("ord-1"), "ord-1", 999).await;
    assert_eq!(reused.status, StatusCode::CONFLICT);
    assert_eq!(reused.json["error"], "idempotency-key-reused");

    let no_key = charge(&http, &shop, None, "ord-3", 100).await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_key.json["error"], "missing-idempotency-key");

    let bad = http
        .send(
            Method::POST,
            &shop.url("/charge"),
            &[("idempotency-key", "ord-4")],
            Some("{\"order_id\":"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"], "bad-json");
}

#[tokio::test]
async fn failed_charge_does_not_record_the_key() {
    let shop = Shop::start("payment", &["--error-rate", "1"]);
    let http = Http::default();

    let failed = charge(&http, &shop, Some("ord-9"), "ord-9", 500).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failed.json["error"], "injected");

    let healed = http
        .post(&shop.url("/admin/faults"), r#"{"error_rate":0}"#)
        .await;
    assert_eq!(healed.status, StatusCode::OK);

    let retry = charge(&http, &shop, Some("ord-9"), "ord-9", 500).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(
        retry.header("x-payment-duplicate"),
        None,
        "the failed try was recorded"
    );
}

#[tokio::test]
async fn v2_canary_is_slow_and_fails_about_a_fifth() {
    let shop = Shop::start("payment", &["--version", "v2"]);
    let http = Http::default();
    let health = http.get(&shop.url("/healthz")).await;
    assert_eq!(health.json["version"], "v2");
    assert_eq!(health.status, StatusCode::OK);

    const CHARGES: usize = 500;
    // 25 at a time: the 30 ms added to each keeps the whole run well under a second or two.
    let permits = Arc::new(Semaphore::new(25));
    let mut tasks = JoinSet::new();
    for i in 0..CHARGES {
        let http = http.clone();
        let url = shop.url("/charge");
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let key = format!("ord-{i}");
            let body = serde_json::json!({"order_id": key, "amount_cents": 100}).to_string();
            http.send(
                Method::POST,
                &url,
                &[("idempotency-key", &key)],
                Some(&body),
            )
            .await
        });
    }
    let mut failed = 0;
    while let Some(result) = tasks.join_next().await {
        let response = result.expect("charge task");
        assert!(
            response.elapsed >= Duration::from_millis(30),
            "v2 answered in {:?}",
            response.elapsed
        );
        match response.status {
            StatusCode::OK => assert_eq!(response.json["status"], "captured"),
            StatusCode::SERVICE_UNAVAILABLE => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let share = failed as f64 / CHARGES as f64;
    assert!(
        (0.12..=0.28).contains(&share),
        "v2 failed {failed} of {CHARGES} charges"
    );

    // v1 has no faults unless asked.
    let v1 = Shop::start("payment", &["--version", "v1"]);
    let faults = http.get(&v1.url("/admin/faults")).await;
    assert_eq!(
        faults.json,
        serde_json::json!({"error_rate": 0.0, "latency_ms": 0})
    );
    let v2_faults = http.get(&shop.url("/admin/faults")).await;
    assert_eq!(
        v2_faults.json,
        serde_json::json!({"error_rate": 0.2, "latency_ms": 30})
    );
}
