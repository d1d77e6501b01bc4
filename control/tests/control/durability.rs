//! The store: everything applied survives `kill -9`, and revisions never go backwards.

use crate::harness::{Control, SHOP};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_survives_kill_9_and_the_revision_never_goes_back() {
    let mut c = Control::start();
    let (status, body) = c.apply(SHOP).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = c
        .call(
            http::Method::PATCH,
            "/v1/services/payment/split",
            Some(r#"{"weights":{"v2":30}}"#),
        )
        .await;
    assert_eq!(status, 200);
    // Registry changes raise the revision without a write per change.
    c.register("payment", "v1", 15106, 30).await;
    c.register("payment", "v2", 15107, 30).await;
    let mut stream = c.stream("order", "order-1").await;
    let before = stream.snapshot(Duration::from_secs(10)).await["version"]
        .as_u64()
        .expect("version");
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
    assert_eq!(
        c.get("/v1/registry/instances").await.1,
        serde_json::json!([]),
        "the registry is rebuilt from heartbeats, not stored"
    );
    let mut stream = c.stream("order", "order-1").await;
    let after = stream.snapshot(Duration::from_secs(10)).await["version"]
        .as_u64()
        .expect("version");
    assert!(
        after >= before,
        "revision went back from {before} to {after}"
    );
    let (_, applied) = c
        .apply("kind: Service\nmetadata: {name: extra}\nspec: {}\n")
        .await;
    assert!(applied["revision"].as_u64().expect("revision") > before);
}
