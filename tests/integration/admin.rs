//! The admin port: liveness, readiness, metrics, the applied config and exact percentiles,
//! bound to loopback, with a loopback-only shutdown.

use outrigger_tests::client::{self, admin_request, get};
use outrigger_tests::proxy::ProxyBuilder;
use outrigger_tests::upstream::Upstream;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_and_report_the_applied_snapshot() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    assert!(proxy.admin.ip().is_loopback());
    assert_eq!(proxy.admin_get("/live").await.0, 200);
    assert_eq!(proxy.admin_get("/ready").await.0, 200);

    let (status, body) = proxy.admin_get("/config").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("config json");
    assert_eq!(v["version"], 1);
    assert_eq!(
        v["snapshot"]["destinations"][0]["endpoints"][0]["address"],
        up.addr.to_string()
    );
    assert_eq!(v["snapshot"]["destinations"][0]["hosts"][0], "*");
    // What the operator did not set shows as the default in force.
    assert_eq!(
        v["snapshot"]["destinations"][0]["limits"],
        serde_json::json!({"max_connections": 10000, "max_pending_requests": 1000, "max_requests": 10000})
    );

    let (status, text) = proxy.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("outrigger_config_applied_total{source=\"file\"} 1"),
        "{text}"
    );
    assert!(text.contains("outrigger_config_version 1"), "{text}");

    assert_eq!(proxy.admin_get("/nope").await.0, 404);
    assert_eq!(admin_request(proxy.admin, "GET", "/shutdown").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_gives_exact_percentiles_per_destination() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let c = client::h1();
    // 19 fast requests and one slow one: p50 is fast, max is the slow one.
    for _ in 0..19 {
        assert_eq!(
            get(&c, &format!("http://{}/", proxy.outbound()))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        get(&c, &format!("http://{}/delay/300", proxy.outbound()))
            .await
            .status(),
        200
    );
    let (status, body) = proxy.admin_get("/stats").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("stats json");
    assert_eq!(v["window_secs"], 60);
    let row = &v["destinations"][0];
    assert_eq!(row["destination"], "upstream");
    assert_eq!(row["direction"], "outbound");
    assert_eq!(row["count"], 20);
    let (p50, p99, max) = (
        row["p50_ms"].as_f64().expect("p50"),
        row["p99_ms"].as_f64().expect("p99"),
        row["max_ms"].as_f64().expect("max"),
    );
    assert!(p50 < 250.0, "p50 {p50}");
    assert!(max >= 300.0 && p99 >= 300.0, "p99 {p99} max {max}");
    assert!(row["p95_ms"].as_f64().expect("p95") <= p99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_from_loopback_stops_the_proxy_cleanly() {
    let up = Upstream::start("a").await;
    let mut proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let (status, _) = admin_request(proxy.admin, "POST", "/shutdown").await;
    assert_eq!(status, 200);
    assert_eq!(proxy.exit_code(Duration::from_secs(10)).await, Some(0));
}
