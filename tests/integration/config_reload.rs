//! The static config file is watched: a valid change applies within a second without
//! disturbing requests in flight (they finish on the snapshot they started with); an invalid
//! change is rejected, logged with its reason and counted, and the last good config serves on.

use outrigger_tests::client;
use outrigger_tests::eventually;
use outrigger_tests::proxy::{render, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

fn snapshot(endpoint: SocketAddr) -> String {
    format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints:\n      - address: {endpoint}\n"
    )
}

async fn served_by(c: &client::TestClient, proxy_addr: SocketAddr, path: &str) -> String {
    let req = client::request("GET", &format!("http://{proxy_addr}{path}"))
        .header("host", "payment")
        .body(client::empty())
        .expect("request");
    let res = client::send(c, req).await;
    assert_eq!(res.status(), 200, "{:?}", res.body());
    res.headers()["x-upstream"]
        .to_str()
        .expect("header")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_change_applies_fast_and_in_flight_requests_finish_on_the_old_config() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = ProxyBuilder::file(&snapshot(a.addr), "")
        .spawn()
        .ready()
        .await;
    let out = proxy.outbound();
    let c = client::h1();
    assert_eq!(served_by(&c, out, "/").await, "a");

    // A slow request is in flight on the old snapshot when the file changes.
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { served_by(&c, out, "/delay/1500").await })
    };
    eventually(
        Duration::from_secs(5),
        "the slow request to reach a",
        || async { (a.requests() >= 2).then_some(()) },
    )
    .await;

    let written = Instant::now();
    proxy.write_config(&render(out, proxy.inbound(), &snapshot(b.addr), ""));
    eventually(Duration::from_secs(3), "config version 2", || async {
        let (_, body) = proxy.admin_get("/config").await;
        body.contains("\"version\":2").then_some(())
    })
    .await;
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "change took {took:?} to apply"
    );
    assert_eq!(served_by(&c, out, "/").await, "b");

    assert_eq!(
        slow.await.expect("slow request"),
        "a",
        "in-flight request moved or failed"
    );
    assert_eq!(
        proxy
            .metric("outrigger_config_applied_total", &[("source", "file")])
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_change_is_rejected_logged_counted_and_the_old_config_keeps_serving() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = ProxyBuilder::file(&snapshot(a.addr), "")
        .spawn()
        .ready()
        .await;
    let out = proxy.outbound();
    let c = client::h1();

    // An endpoint address that is not an address, on line 9 of the file.
    let bad = render(
        out,
        proxy.inbound(),
        "service: order\ndestinations:\n  - name: payment\n    endpoints:\n      - address: nowhere\n",
        "",
    );
    proxy.write_config(&bad);
    eventually(
        Duration::from_secs(5),
        "the rejection to be counted",
        || async {
            (proxy
                .metric("outrigger_config_rejected_total", &[("source", "file")])
                .await
                == Some(1.0))
            .then_some(())
        },
    )
    .await;
    // Log lines are written by a background thread: the line may trail the metric a little.
    let wanted = "snapshot.destinations[0].endpoints[0].address (line 9, column 20)";
    eventually(
        Duration::from_secs(5),
        "the reason to be logged with path and position",
        || async { proxy.stderr().contains(wanted).then_some(()) },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(served_by(&c, out, "/").await, "a");
    }
    let (_, cfg) = proxy.admin_get("/config").await;
    assert!(cfg.contains("\"version\":1"), "{cfg}");

    // A later valid change still applies.
    proxy.write_config(&render(out, proxy.inbound(), &snapshot(b.addr), ""));
    eventually(
        Duration::from_secs(3),
        "the fixed config to apply",
        || async { (served_by(&c, out, "/").await == "b").then_some(()) },
    )
    .await;
    assert_eq!(
        proxy
            .metric("outrigger_config_rejected_total", &[("source", "file")])
            .await,
        Some(1.0),
        "the same bad text must be counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_at_start_is_refused_with_its_reason() {
    let proxy = ProxyBuilder::file("service: Order Service\n", "").spawn();
    let mut proxy = proxy;
    let code = proxy.exit_code(Duration::from_secs(10)).await;
    assert_ne!(code, Some(0));
    let err = proxy.stderr();
    assert!(
        err.contains("snapshot.service (line 5, column 12)"),
        "{err}"
    );
    assert!(err.contains("not a valid name"), "{err}");
}
