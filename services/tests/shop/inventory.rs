//! The inventory service: stock levels, reservations, idempotent releases.

use axum::http::StatusCode;
use serde_json::json;

use crate::harness::{Http, Resp, Shop};

async fn available(http: &Http, shop: &Shop, product: &str) -> u64 {
    let stock = http.get(&shop.url(&format!("/stock/{product}"))).await;
    assert_eq!(stock.status, StatusCode::OK);
    assert_eq!(stock.json["product_id"], product);
    stock.json["available"].as_u64().expect("available")
}

async fn reserve(http: &Http, shop: &Shop, product: &str, quantity: u64, order: &str) -> Resp {
    let body = json!({"product_id": product, "quantity": quantity, "order_id": order});
    http.post(&shop.url("/reserve"), &body.to_string()).await
}

#[tokio::test]
async fn reserve_and_release_move_stock_once() {
    let shop = Shop::start("inventory", &[]);
    let http = Http::default();
    assert_eq!(available(&http, &shop, "p1").await, 1_000_000);

    let reserved = reserve(&http, &shop, "p1", 3, "ord-a").await;
    assert_eq!(reserved.status, StatusCode::OK);
    let reservation = reserved.str("reservation_id");
    assert_eq!(available(&http, &shop, "p1").await, 999_997);

    // A retried reserve for the same order takes no more stock.
    let retried = reserve(&http, &shop, "p1", 3, "ord-a").await;
    assert_eq!(retried.status, StatusCode::OK);
    assert_eq!(retried.str("reservation_id"), reservation);
    assert_eq!(retried.header("x-reservation-duplicate"), Some("true"));
    assert_eq!(available(&http, &shop, "p1").await, 999_997);

    let release = json!({"reservation_id": reservation}).to_string();
    let first = http.post(&shop.url("/release"), &release).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json["released"], true);
    assert_eq!(available(&http, &shop, "p1").await, 1_000_000);

    let second = http.post(&shop.url("/release"), &release).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.json["released"], false);
    assert_eq!(available(&http, &shop, "p1").await, 1_000_000);

    // Release by order id finds the same reservation (for callers whose reserve timed out).
    let reserved = reserve(&http, &shop, "p2", 2, "ord-b").await;
    assert_eq!(reserved.status, StatusCode::OK);
    let by_order = http
        .post(&shop.url("/release"), r#"{"order_id":"ord-b"}"#)
        .await;
    assert_eq!(by_order.status, StatusCode::OK);
    assert_eq!(
        by_order.str("reservation_id"),
        reserved.str("reservation_id")
    );
    assert_eq!(available(&http, &shop, "p2").await, 1_000_000);
}

#[tokio::test]
async fn refuses_what_it_cannot_do() {
    let shop = Shop::start("inventory", &["--stock", "5"]);
    let http = Http::default();
    assert_eq!(available(&http, &shop, "p3").await, 5);

    let too_many = reserve(&http, &shop, "p3", 6, "ord-1").await;
    assert_eq!(too_many.status, StatusCode::CONFLICT);
    assert_eq!(too_many.json["error"], "out-of-stock");
    assert_eq!(available(&http, &shop, "p3").await, 5);
    assert_eq!(
        reserve(&http, &shop, "p3", 5, "ord-2").await.status,
        StatusCode::OK
    );
    assert_eq!(available(&http, &shop, "p3").await, 0);

    let unknown = reserve(&http, &shop, "nope", 1, "ord-3").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json["error"], "unknown-product");
    let unknown_stock = http.get(&shop.url("/stock/nope")).await;
    assert_eq!(unknown_stock.status, StatusCode::NOT_FOUND);

    let zero = reserve(&http, &shop, "p1", 0, "ord-4").await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST);

    for body in [
        "{",
        r#"{"product_id":"p1"}"#,
        r#"{"product_id":"p1","quantity":-1}"#,
    ] {
        let bad = http.post(&shop.url("/reserve"), body).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(bad.json["error"], "bad-json");
    }
    let bad_release = http.post(&shop.url("/release"), "[1,2]").await;
    assert_eq!(bad_release.status, StatusCode::BAD_REQUEST);
    let unknown_release = http
        .post(&shop.url("/release"), r#"{"reservation_id":"res-nope"}"#)
        .await;
    assert_eq!(unknown_release.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_release.json["error"], "unknown-reservation");
}
