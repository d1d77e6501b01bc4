//! The store: everything applied and registered survives `kill -9`, and revisions never go
//! backwards.

use crate::harness::{endpoints, Control, SHOP};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_survives_kill_9_and_the_revision_never_goes_back() {
    let mut c = Control::start();
    let (status, body) = c.apply(SHOP).await;
    assert_eq!(status, 200, "{body}");
    // Registry changes raise the revision too.
    let v1 = c.register("payment", "v1", 15106, 30).await;
    c.register("payment", "v2", 15107, 30).await;
    let (status, _) = c
        .call(
            http::Method::PATCH,
            "/v1/services/payment/split",
            Some(r#"{"weights":{"v2":30}}"#),
        )
        .await;
    assert_eq!(status, 200);
    // This one's sidecar "died" with the control plane: nothing will renew it.
    c.register("payment", "v3", 15108, 2).await;
    let mut stream = c.stream("order", "order-1").await;
    let before = stream.snapshot(Duration::from_secs(10)).await["version"]
        .as_u64()
        .expect("version");
    let instances = c.get("/v1/registry/instances").await.1;
    assert_eq!(instances.as_array().map(Vec::len), Some(3));
    let services = c.get("/v1/services").await.1;
    let routes = c.get("/v1/routes").await.1;
    let policies = c.get("/v1/policies").await.1;
    drop(stream);

    c.kill9_and_restart();

    assert_eq!(c.get("/v1/services").await.1, services);
    assert_eq!(c.get("/v1/routes").await.1, routes);
    assert_eq!(c.get("/v1/policies").await.1, policies);
    let (_, payment) = c.get("/v1/services/payment").await;
    assert_eq!(
        payment["spec"]["split"][1]["weight"], 30,
        "the split change was stored"
    );
    // Instances come back with a fresh lease, so callers keep their endpoints across the
    // restart, and their sidecars' heartbeats still work.
    assert_eq!(c.get("/v1/registry/instances").await.1, instances);
    let mut stream = c.stream("order", "order-1").await;
    let first = stream.snapshot(Duration::from_secs(10)).await;
    let after = first["version"].as_u64().expect("version");
    assert!(
        after >= before,
        "revision went back from {before} to {after}"
    );
    assert_eq!(
        endpoints(&first, "payment"),
        ["127.0.0.1:15106", "127.0.0.1:15107", "127.0.0.1:15108"]
    );
    let path = format!("/v1/registry/instances/{v1}/heartbeat");
    assert_eq!(c.call(http::Method::PUT, &path, None).await.0, 200);
    // The unrenewed one expires one TTL after the restart.
    let next = stream.snapshot(Duration::from_secs(10)).await;
    assert_eq!(
        endpoints(&next, "payment"),
        ["127.0.0.1:15106", "127.0.0.1:15107"]
    );
    let (_, applied) = c
        .apply("kind: Service\nmetadata: {name: extra}\nspec: {}\n")
        .await;
    assert!(applied["revision"].as_u64().expect("revision") > before);
}
