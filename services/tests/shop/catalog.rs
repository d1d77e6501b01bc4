//! The catalog service: the product list and single products.

use axum::http::StatusCode;

use crate::harness::{Http, Shop};

#[tokio::test]
async fn lists_and_finds_products() {
    let shop = Shop::start("catalog", &[]);
    let http = Http::default();

    let list = http.get(&shop.url("/products")).await;
    assert_eq!(list.status, StatusCode::OK);
    let products = list.json.as_array().expect("a list");
    assert_eq!(products.len(), 10);
    for product in products {
        let mut keys: Vec<_> = product.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["id", "name", "price_cents"]);
        assert!(product["price_cents"].as_u64().is_some_and(|p| p > 0));
    }

    let first = &products[0];
    let id = first["id"].as_str().expect("id");
    let one = http.get(&shop.url(&format!("/products/{id}"))).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(&one.json, first);

    let missing = http.get(&shop.url("/products/no-such-thing")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json["error"], "unknown-product");
}
