//! Canary routing through the real control plane: a 90/10 split holds within ±3 points over
//! 2000 requests, a header match overrides the weights, a sticky header keeps each user on one
//! version, and `outrigger canary payment v2=25` moves the split live.

use outrigger_tests::client::{self, send};
use outrigger_tests::control::{Control, TOKEN};
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use outrigger_tests::{bin, eventually};
use std::collections::HashMap;
use std::time::Duration;

const MESH: &str = "\
kind: Service
metadata: {name: checkout}
spec: {calls: [payment]}
---
kind: Service
metadata: {name: payment}
spec:
  split: [{version: v1, weight: 90}, {version: v2, weight: 10}]
  sticky_header: x-user-id
---
kind: Route
metadata: {name: testers}
spec:
  service: payment
  priority: 1
  match: {headers: [{name: x-canary, value: always}]}
  split: [{version: v2, weight: 1}]
";

async fn version(proxy: &Proxy, headers: &[(&str, String)]) -> String {
    let mut req =
        client::request("GET", &format!("http://{}/", proxy.outbound())).header("host", "payment");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let res = send(&client::h1(), req.body(client::empty()).expect("request")).await;
    assert_eq!(res.status(), 200);
    res.headers()["x-upstream"]
        .to_str()
        .expect("x-upstream")
        .to_string()
}

/// Share of v2 over `n` requests, sent 8 at a time.
async fn v2_share(proxy: &Proxy, n: usize) -> f64 {
    let out = proxy.outbound();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let c = client::h1();
            let mut v2 = 0usize;
            for _ in 0..n / 8 {
                let req = client::request("GET", &format!("http://{out}/"))
                    .header("host", "payment")
                    .body(client::empty())
                    .expect("r");
                let res = send(&c, req).await;
                assert_eq!(res.status(), 200);
                if res.headers()["x-upstream"] == "v2" {
                    v2 += 1;
                }
            }
            v2
        }));
    }
    let mut v2 = 0;
    for t in tasks {
        v2 += t.await.expect("task");
    }
    v2 as f64 / (n / 8 * 8) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_header_override_stickiness_and_live_changes() {
    let control = Control::start_with(&["--mtls", "off"]).await;
    let (status, body) = control.apply(MESH).await;
    assert_eq!(status, 200, "{body}");
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    control.register("payment", "v1", v1.addr).await;
    control.register("payment", "v2", v2.addr).await;
    let proxy = ProxyBuilder::control_plane(&control, "checkout", "v1", None)
        .await
        .spawn()
        .ready()
        .await;
    eventually(
        Duration::from_secs(10),
        "both versions reachable",
        || async {
            let (_, cfg) = proxy.admin_get("/config").await;
            let v: serde_json::Value = serde_json::from_str(&cfg).ok()?;
            let eps = v["snapshot"]["destinations"][0]["endpoints"]
                .as_array()?
                .len();
            (eps == 2).then_some(())
        },
    )
    .await;

    let share = v2_share(&proxy, 2000).await;
    assert!(
        (0.07..=0.13).contains(&share),
        "v2 got {share} of 2000 requests with a 90/10 split"
    );

    for _ in 0..50 {
        assert_eq!(
            version(&proxy, &[("x-canary", "always".into())]).await,
            "v2"
        );
    }

    let mut placed: HashMap<String, String> = HashMap::new();
    for user in 0..40 {
        let id = format!("user-{user}");
        for _ in 0..10 {
            let v = version(&proxy, &[("x-user-id", id.clone())]).await;
            let first = placed.entry(id.clone()).or_insert_with(|| v.clone());
            assert_eq!(*first, v, "{id} moved between versions");
        }
    }

    let out = std::process::Command::new(bin("outrigger"))
        .args(["canary", "payment", "v2=25"])
        .env("OUTRIGGER_CONTROL_PLANE", control.url())
        .env("OUTRIGGER_TRUST_ANCHORS", control.trust_anchors())
        .env("OUTRIGGER_TOKEN", TOKEN)
        .output()
        .expect("run outrigger canary");
    assert!(
        out.status.success(),
        "outrigger canary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(5),
        "the new split at the sidecar",
        || async {
            let (_, cfg) = proxy.admin_get("/config").await;
            let v: serde_json::Value = serde_json::from_str(&cfg).ok()?;
            let split = v["snapshot"]["destinations"][0]["split"]
                .as_array()?
                .clone();
            let weight = |ver: &str| {
                split
                    .iter()
                    .find(|w| w["version"] == ver)
                    .and_then(|w| w["weight"].as_u64())
            };
            (weight("v1") == Some(75) && weight("v2") == Some(25)).then_some(())
        },
    )
    .await;
    let share = v2_share(&proxy, 2000).await;
    assert!(
        (0.22..=0.28).contains(&share),
        "v2 got {share} of 2000 requests with a 75/25 split"
    );
}
