//! The storefront load: shoppers who sign up, log in, browse the catalog and place orders,
//! all through the storefront sidecar (the mesh's edge), at a steady pace. It counts what the
//! shoppers saw, which is the number that matters: orders that succeeded.

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
pub struct Counters {
    pub orders_ok: AtomicU64,
    pub orders_failed: AtomicU64,
    pub browse_ok: AtomicU64,
    pub browse_failed: AtomicU64,
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub success_rate: f64,
}

impl Counters {
    pub fn orders(&self) -> Outcome {
        outcome(&self.orders_ok, &self.orders_failed)
    }

    pub fn browsing(&self) -> Outcome {
        outcome(&self.browse_ok, &self.browse_failed)
    }

    pub fn logins(&self) -> Outcome {
        outcome(&self.logins_ok, &self.logins_failed)
    }
}

fn outcome(ok: &AtomicU64, failed: &AtomicU64) -> Outcome {
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let attempted = ok + failed;
    Outcome {
        attempted,
        succeeded: ok,
        failed,
        success_rate: if attempted == 0 {
            1.0
        } else {
            ok as f64 / attempted as f64
        },
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs `shoppers` concurrent shoppers placing about `orders_per_sec` orders a second in
/// total, until `until`.
pub async fn run(
    edge: SocketAddr,
    shoppers: usize,
    orders_per_sec: f64,
    until: Instant,
    counters: Arc<Counters>,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let products = product_ids(&client, edge).await;
    let period = Duration::from_secs_f64(shoppers.max(1) as f64 / orders_per_sec.max(0.1));
    let mut tasks = Vec::new();
    for n in 0..shoppers.max(1) {
        let (client, products, counters) = (client.clone(), products.clone(), counters.clone());
        // Spread the shoppers over one period so they do not all arrive at once.
        let start = Instant::now() + period.mul_f64(n as f64 / shoppers.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            shopper(n, client, edge, products, (start, period), until, counters).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn shopper(
    n: usize,
    client: HttpClient,
    edge: SocketAddr,
    products: Arc<Vec<Value>>,
    (mut next, period): (Instant, Duration),
    until: Instant,
    c: Arc<Counters>,
) {
    let mut round = 0u64;
    while Instant::now() < until {
        tokio::time::sleep_until(next.min(until)).await;
        if Instant::now() >= until {
            break;
        }
        next += period;
        if round.is_multiple_of(20) {
            let ok = sign_in(
                &client,
                edge,
                &format!("shopper-{n}-{round}-{}", fastrand::u32(..)),
            )
            .await;
            count(ok, &c.logins_ok, &c.logins_failed);
        }
        round += 1;
        let browsed = call(&client, edge, "catalog", Method::GET, "/products", None)
            .await
            .is_some_and(|(s, _)| s < 300);
        count(browsed, &c.browse_ok, &c.browse_failed);
        let product = products
            .get(fastrand::usize(..products.len().max(1)))
            .cloned()
            .unwrap_or(json!("p1"));
        // Many distinct users, so the sticky canary split sees a realistic spread.
        let order = json!({"user": format!("user-{}", fastrand::u32(..100_000)), "product_id": product, "quantity": 1});
        let ordered = call(&client, edge, "order", Method::POST, "/orders", Some(order)).await;
        count(
            ordered.is_some_and(|(s, _)| (200..300).contains(&s)),
            &c.orders_ok,
            &c.orders_failed,
        );
    }
}

fn count(ok: bool, good: &AtomicU64, bad: &AtomicU64) {
    if ok { good } else { bad }.fetch_add(1, Ordering::Relaxed);
}

async fn sign_in(client: &HttpClient, edge: SocketAddr, name: &str) -> bool {
    let creds = json!({"username": name, "password": "correct horse battery staple"});
    let registered = call(
        client,
        edge,
        "user",
        Method::POST,
        "/register",
        Some(creds.clone()),
    )
    .await;
    if registered.is_none_or(|(s, _)| s >= 300) {
        return false;
    }
    let Some((200, body)) = call(client, edge, "user", Method::POST, "/login", Some(creds)).await
    else {
        return false;
    };
    let Some(token) = body.get("token").and_then(Value::as_str) else {
        return false;
    };
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{edge}/profile"))
        .header(header::HOST, "user")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()));
    match req {
        Ok(req) => send(client, req).await.is_some_and(|(s, _)| s == 200),
        Err(_) => false,
    }
}

async fn product_ids(client: &HttpClient, edge: SocketAddr) -> Arc<Vec<Value>> {
    let ids = match call(client, edge, "catalog", Method::GET, "/products", None).await {
        Some((200, Value::Array(items))) => {
            items.iter().filter_map(|p| p.get("id").cloned()).collect()
        }
        _ => Vec::new(),
    };
    Arc::new(ids)
}

/// One request through the edge to `service`; `None` if it failed below HTTP.
async fn call(
    client: &HttpClient,
    edge: SocketAddr,
    service: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{edge}{path}"))
        .header(header::HOST, service);
    let bytes = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    send(client, b.body(Full::new(bytes)).ok()?).await
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Option<(u16, Value)> {
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = res.status().as_u16();
    let bytes = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}
