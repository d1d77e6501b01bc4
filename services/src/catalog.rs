//! The catalog service and the product list it owns.
//!
//! - `GET /products` → 200 `[{"id","name","price_cents"}]` (a fixed list of ten)
//! - `GET /products/{id}` → 200 `{"id","name","price_cents"}`; 404 `unknown-product`
//!
//! The list is fixed in code so every process (and the inventory, which stocks the same
//! ids) agrees on it without a database.

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::json::ApiError;

pub const NAME: &str = "catalog";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Product {
    pub id: &'static str,
    pub name: &'static str,
    pub price_cents: u64,
}

const fn product(id: &'static str, name: &'static str, price_cents: u64) -> Product {
    Product {
        id,
        name,
        price_cents,
    }
}

/// Everything the shop sells. Ids are short strings so paths and load scripts stay readable.
pub const PRODUCTS: [Product; 10] = [
    product("p1", "Outrigger canoe paddle", 8_900),
    product("p2", "Carbon ama", 45_000),
    product("p3", "Spray skirt", 6_500),
    product("p4", "Dry bag 20 L", 2_400),
    product("p5", "Buoyancy aid", 11_900),
    product("p6", "Bailer", 900),
    product("p7", "Hull repair kit", 3_200),
    product("p8", "Deck bungee set", 1_500),
    product("p9", "Rudder cable", 2_750),
    product("p10", "Team jersey", 3_900),
];

/// The product with this id, if the shop sells it.
pub fn find(id: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|product| product.id == id)
}

/// The service's routes (faults, health and logging are added by `server`).
pub fn routes() -> Router {
    Router::new()
        .route("/products", get(list))
        .route("/products/{id}", get(one))
}

async fn list() -> Json<&'static [Product]> {
    Json(&PRODUCTS)
}

async fn one(Path(id): Path<String>) -> Result<Json<&'static Product>, ApiError> {
    find(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("unknown-product"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prices_positive() {
        for (i, a) in PRODUCTS.iter().enumerate() {
            assert!(a.price_cents > 0);
            assert!(PRODUCTS[i + 1..].iter().all(|b| b.id != a.id));
        }
        assert_eq!(find("p3").map(|p| p.price_cents), Some(6_500));
        assert_eq!(find("nope"), None);
    }
}
