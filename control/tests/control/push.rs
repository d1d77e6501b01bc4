//! Push streams: the first snapshot, changes, only the allowed destinations, ACK/NACK, lease
//! expiry, and how fast endpoint changes reach a subscriber.

use crate::harness::{destinations, endpoints, eventually, Control, SHOP};
use http::Method;
use serde_json::json;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_starts_with_the_snapshot_of_only_the_called_services() {
    let c = Control::start();
    c.apply(SHOP).await;
    let mut order = c.stream("order", "order-1").await;
    assert_eq!(order.content_type, "application/x-ndjson");
    let first = order.snapshot(WAIT).await;
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["version"], first["snapshot"]["version"]);
    assert_eq!(first["snapshot"]["service"], "order");
    assert_eq!(destinations(&first), ["catalog", "inventory", "payment"]);
    assert_eq!(
        first["snapshot"]["inbound"]["timeout"], "10s",
        "order's own Policy"
    );
    let payment = &first["snapshot"]["destinations"][2];
    assert_eq!(
        payment["hosts"],
        json!(["payment", "payment.shop.svc.cluster.local"])
    );
    assert_eq!(payment["routes"][0]["name"], "charge-canary-testers");
    assert_eq!(payment["routes"][1]["name"], "charge");
    assert_eq!(payment["outlier_detection"]["base_ejection"], "10s");

    let mut front = c.stream("storefront", "front-1").await;
    assert_eq!(
        destinations(&front.snapshot(WAIT).await),
        ["user", "catalog", "order"]
    );
    let mut pay = c.stream("payment", "payment-1").await;
    assert!(destinations(&pay.snapshot(WAIT).await).is_empty());
    // A service not (yet) applied still gets a snapshot with its inbound side.
    let mut ghost = c.stream("ghost", "ghost-1").await;
    let g = ghost.snapshot(WAIT).await;
    assert!(destinations(&g).is_empty());
    assert!(g["snapshot"]["inbound"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_pushed_and_changes_elsewhere_are_not() {
    let c = Control::start();
    c.apply(SHOP).await;
    let mut order = c.stream("order", "order-1").await;
    let first = order.snapshot(WAIT).await;

    // user is not among order's calls: no line for it. The payment registration that
    // follows must be the very next snapshot order sees.
    c.register("user", "v1", 15101, 30).await;
    c.register("payment", "v2", 15107, 30).await;
    let next = order.snapshot(WAIT).await;
    assert_eq!(endpoints(&next, "payment"), ["127.0.0.1:15107"]);
    assert!(next["version"].as_u64() > first["version"].as_u64());
    assert_eq!(
        next["snapshot"]["destinations"][2]["endpoints"][0],
        json!({"address": "127.0.0.1:15107", "version": "v2"})
    );

    // A route change is pushed too.
    c.apply("kind: Route\nmetadata: {name: reserve}\nspec: {service: inventory, timeout: 7s}\n")
        .await;
    let next = order.snapshot(WAIT).await;
    assert_eq!(
        next["snapshot"]["destinations"][1]["routes"][0]["timeout"],
        "7s"
    );

    // And a canary change.
    let (status, _) = c
        .call(
            Method::PATCH,
            "/v1/services/payment/split",
            Some(r#"{"weights":{"v2":50}}"#),
        )
        .await;
    assert_eq!(status, 200);
    let next = order.snapshot(WAIT).await;
    assert_eq!(
        next["snapshot"]["destinations"][2]["split"],
        json!([{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_and_nacks_show_in_the_sidecar_status() {
    let c = Control::start();
    c.apply(SHOP).await;
    let mut order = c.stream("order", "order-7").await;
    let version = order.snapshot(WAIT).await["version"]
        .as_u64()
        .expect("version");
    let (_, list) = c.get("/v1/sidecars").await;
    assert_eq!(list[0]["id"], "order-7");
    assert_eq!(list[0]["service"], "order");
    assert_eq!(list[0]["connected"], true);
    assert_eq!(list[0]["acked_version"], json!(null));
    assert_eq!(list[0]["last_nack"], json!(null));
    assert!(list[0]["last_seen"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));

    let ack = json!({"version": version, "error": null}).to_string();
    let (status, _) = c
        .call(Method::POST, "/v1/sidecars/order-7/ack", Some(&ack))
        .await;
    assert_eq!(status, 204);
    assert_eq!(c.get("/v1/sidecars").await.1[0]["acked_version"], version);

    let nack = json!({"version": version + 1, "error": "destinations[0].hosts[0]: bad host"});
    let (status, _) = c
        .call(
            Method::POST,
            "/v1/sidecars/order-7/ack",
            Some(&nack.to_string()),
        )
        .await;
    assert_eq!(status, 204);
    let (_, list) = c.get("/v1/sidecars").await;
    assert_eq!(
        list[0]["last_nack"],
        json!({"version": version + 1, "reason": "destinations[0].hosts[0]: bad host"})
    );
    assert_eq!(
        list[0]["acked_version"], version,
        "a NACK keeps the last good version"
    );

    let (status, _) = c
        .call(Method::POST, "/v1/sidecars/nobody/ack", Some(&ack))
        .await;
    assert_eq!(status, 404);

    let (_, metrics) = c.get("/metrics").await;
    let text = metrics.as_str().expect("text");
    assert!(text.contains("outrigger_control_acks_total 1"), "{text}");
    assert!(text.contains("outrigger_control_nacks_total 1"), "{text}");
    assert!(
        text.contains("outrigger_control_sidecars_connected 1"),
        "{text}"
    );

    drop(order);
    eventually(WAIT, "the sidecar to show disconnected", || async {
        (c.get("/v1/sidecars").await.1[0]["connected"] == false).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_removes_the_endpoint_and_pushes() {
    let c = Control::start();
    c.apply(SHOP).await;
    let mut order = c.stream("order", "order-1").await;
    order.snapshot(WAIT).await;
    let registered = Instant::now();
    let id = c.register("payment", "v1", 15106, 1).await;
    let with = order.snapshot(WAIT).await;
    assert_eq!(endpoints(&with, "payment"), ["127.0.0.1:15106"]);

    // No heartbeat: the lease runs out after 1 s and the removal is pushed.
    let without = order.snapshot(WAIT).await;
    let took = registered.elapsed();
    assert!(endpoints(&without, "payment").is_empty());
    assert!(without["version"].as_u64() > with["version"].as_u64());
    assert!(
        took >= Duration::from_millis(900),
        "expired early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "expired late: {took:?}");

    let path = format!("/v1/registry/instances/{id}/heartbeat");
    let (status, body) = c.call(Method::PUT, &path, None).await;
    assert_eq!(status, 404, "the sidecar must register again: {body}");
    assert_eq!(
        c.get("/v1/registry/instances?service=payment").await.1,
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_calls_list_heartbeat_and_deregister() {
    let c = Control::start();
    let id = c.register("payment", "v2", 15107, 30).await;
    c.register("user", "v1", 15101, 30).await;
    let (_, list) = c.get("/v1/registry/instances?service=payment").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["endpoint"], "127.0.0.1:15107");
    assert_eq!(list[0]["ports"], json!({"app": 8080, "inbound": 15107}));
    assert_eq!(
        c.get("/v1/registry/instances")
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let path = format!("/v1/registry/instances/{id}/heartbeat");
    assert_eq!(c.call(Method::PUT, &path, None).await.0, 200);
    let path = format!("/v1/registry/instances/{id}");
    assert_eq!(c.call(Method::DELETE, &path, None).await.0, 204);
    assert_eq!(c.call(Method::DELETE, &path, None).await.0, 404);
    let (status, body) = c
        .call(
            Method::POST,
            "/v1/registry/instances",
            Some(r#"{"service":"a","address":"127.0.0.1","ports":{"http":9}}"#),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["ttl_secs"], 10, "the default TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_reach_a_subscriber_within_a_second_at_p99() {
    let c = Control::start();
    c.apply(SHOP).await;
    let mut order = c.stream("order", "order-1").await;
    order.snapshot(WAIT).await;
    let mut took = Vec::new();
    let mut live: Vec<(String, String)> = Vec::new();
    for i in 0..20u16 {
        let start = Instant::now();
        if i % 4 < 2 {
            let port = 20_000 + i;
            let id = c.register("payment", "v1", port, 30).await;
            live.push((id, format!("127.0.0.1:{port}")));
        } else {
            let (id, _) = live.remove(0);
            let path = format!("/v1/registry/instances/{id}");
            assert_eq!(c.call(Method::DELETE, &path, None).await.0, 204);
        }
        let mut want: Vec<String> = live.iter().map(|(_, a)| a.clone()).collect();
        want.sort();
        loop {
            let line = order.snapshot(WAIT).await;
            if endpoints(&line, "payment") == want {
                break;
            }
        }
        took.push(start.elapsed());
    }
    took.sort();
    let p50 = took[took.len() / 2];
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    println!(
        "endpoint change propagation over {} changes: p50 {p50:?}, p99 {p99:?}, max {:?}",
        took.len(),
        took[took.len() - 1]
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_flow_between_snapshots() {
    let c = Control::start_with(&["--keepalive", "100ms"]);
    let mut s = c.stream("order", "order-1").await;
    assert_eq!(s.line(WAIT).await.expect("first line")["type"], "snapshot");
    for _ in 0..3 {
        assert_eq!(
            s.line(WAIT).await.expect("a keepalive"),
            json!({"type": "keepalive"})
        );
    }
}
