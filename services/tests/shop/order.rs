//! The order service against real catalog, inventory and payment processes, with a
//! Host-routing forwarder standing in for the mesh.

use axum::http::{Method, StatusCode};

use crate::harness::{Forwarder, Http, Shop};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "vendor=opaque";
const REQUEST_ID: &str = "order-test-req-1";

/// Catalog, inventory and payment (with `payment_args`), the forwarder, and order.
struct Shopfront {
    order: Shop,
    inventory: Shop,
    forwarder: Forwarder,
    _others: Vec<Shop>,
}

async fn shopfront(inventory_args: &[&str], payment_args: &[&str]) -> Shopfront {
    let catalog = Shop::start("catalog", &[]);
    let inventory = Shop::start("inventory", inventory_args);
    let payment = Shop::start("payment", payment_args);
    let forwarder = Forwarder::start(&[
        ("catalog", &catalog),
        ("inventory", &inventory),
        ("payment", &payment),
    ])
    .await;
    let order = Shop::start("order", &["--mesh", &forwarder.url]);
    Shopfront {
        order,
        inventory,
        forwarder,
        _others: vec![catalog, payment],
    }
}

async fn place(http: &Http, order: &Shop, body: &str) -> crate::harness::Resp {
    http.send(
        Method::POST,
        &order.url("/orders"),
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", TRACESTATE),
            ("x-request-id", REQUEST_ID),
        ],
        Some(body),
    )
    .await
}

async fn stock(http: &Http, inventory: &Shop, product: &str) -> u64 {
    let level = http.get(&inventory.url(&format!("/stock/{product}"))).await;
    level.json["available"].as_u64().expect("available")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_happy_path_propagates_trace_headers() {
    let shop = shopfront(&[], &[]).await;
    let http = Http::default();
    let before = stock(&http, &shop.inventory, "p3").await;

    let placed = place(
        &http,
        &shop.order,
        r#"{"user":"alice","product_id":"p3","quantity":2}"#,
    )
    .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.json);
    assert_eq!(placed.json["status"], "confirmed");
    let order_id = placed.str("order_id");
    let payment_id = placed.str("payment_id");
    assert_eq!(stock(&http, &shop.inventory, "p3").await, before - 2);

    let calls: Vec<_> = shop
        .forwarder
        .seen()
        .into_iter()
        .map(|s| (s.host, s.method, s.path))
        .collect();
    assert_eq!(
        calls,
        [
            ("catalog".to_owned(), Method::GET, "/products/p3".to_owned()),
            ("inventory".to_owned(), Method::POST, "/reserve".to_owned()),
            ("payment".to_owned(), Method::POST, "/charge".to_owned()),
        ]
    );
    for seen in shop.forwarder.seen() {
        let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("traceparent"), Some(TRACEPARENT), "{}", seen.host);
        assert_eq!(header("tracestate"), Some(TRACESTATE), "{}", seen.host);
        assert_eq!(header("x-request-id"), Some(REQUEST_ID), "{}", seen.host);
    }
    let charge = &shop.forwarder.seen_by("payment")[0];
    let header = |name: &str| charge.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("idempotency-key"), Some(order_id.as_str()));
    assert_eq!(header("x-user-id"), Some("alice"));

    let stored = http
        .get(&shop.order.url(&format!("/orders/{order_id}")))
        .await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.json["status"], "confirmed");
    assert_eq!(stored.json["payment_id"], payment_id.as_str());
    assert_eq!(stored.json["user"], "alice");
    assert_eq!(stored.json["quantity"], 2);
    assert_eq!(stored.json["amount_cents"], 2 * 6_500);

    let missing = http.get(&shop.order.url("/orders/ord-nope")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // Every service logged the request under the caller's correlation id.
    shop.order
        .wait_for_line(|line| line.contains(REQUEST_ID) && line.contains("POST /orders 201"));
    shop.inventory
        .wait_for_line(|line| line.contains(REQUEST_ID) && line.contains("POST /reserve 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_payment_releases_the_reservation() {
    let shop = shopfront(&[], &["--error-rate", "1"]).await;
    let http = Http::default();
    let before = stock(&http, &shop.inventory, "p5").await;

    let placed = place(
        &http,
        &shop.order,
        r#"{"user":"bob","product_id":"p5","quantity":4}"#,
    )
    .await;
    assert_eq!(placed.status, StatusCode::BAD_GATEWAY, "{}", placed.json);
    assert_eq!(placed.json["status"], "failed");
    assert!(
        placed.str("reason").starts_with("payment"),
        "{}",
        placed.json
    );
    assert!(placed.json.get("payment_id").is_none());
    assert_eq!(stock(&http, &shop.inventory, "p5").await, before);

    let paths: Vec<_> = shop
        .forwarder
        .seen_by("inventory")
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(paths, ["/reserve", "/release"]);

    let order_id = placed.str("order_id");
    let stored = http
        .get(&shop.order.url(&format!("/orders/{order_id}")))
        .await;
    assert_eq!(stored.json["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_orders_never_charge() {
    let shop = shopfront(&["--stock", "1"], &[]).await;
    let http = Http::default();

    let too_many = place(
        &http,
        &shop.order,
        r#"{"user":"carol","product_id":"p1","quantity":2}"#,
    )
    .await;
    assert_eq!(too_many.status, StatusCode::CONFLICT, "{}", too_many.json);
    assert_eq!(too_many.json["status"], "failed");
    assert_eq!(too_many.json["reason"], "out-of-stock");

    let unknown = place(
        &http,
        &shop.order,
        r#"{"user":"carol","product_id":"p404","quantity":1}"#,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.json);
    assert_eq!(unknown.json["reason"], "unknown-product");

    for body in [
        "{",
        r#"{"user":"carol"}"#,
        r#"{"user":"c","product_id":"p1","quantity":0}"#,
    ] {
        let bad = place(&http, &shop.order, body).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(bad.json["error"].is_string());
    }

    assert!(shop.forwarder.seen_by("payment").is_empty());
    assert_eq!(stock(&http, &shop.inventory, "p1").await, 1);
}
