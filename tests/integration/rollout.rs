//! Rollouts lose nothing (issue 12): a draining sidecar leaves the registry for good. Its
//! heartbeat loop ends before it deregisters, so the heartbeat's 404 ("register again") can
//! never put an instance that is shutting down back in front of its callers.

use outrigger_tests::client;
use outrigger_tests::control::{Control, CHECKOUT_CALLS_PAYMENT};
use outrigger_tests::eventually;
use outrigger_tests::proxy::ProxyBuilder;
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The endpoints the registry lists for `service`.
async fn registered(control: &Control, service: &str) -> Vec<SocketAddr> {
    let (status, body) = control
        .get(&format!("/v1/registry/instances?service={service}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| i["endpoint"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A sidecar that drains for longer than two heartbeat periods (a request in flight keeps it
/// there) must not reappear in the registry. Before the fix the first heartbeat after
/// deregistration got 404 and registered the instance again within about 3.3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_sidecar_never_registers_again() {
    let control = Control::start_with(&["--mtls", "off"]).await;
    assert_eq!(control.apply(CHECKOUT_CALLS_PAYMENT).await.0, 200);
    let app = Upstream::start("payment").await;
    let mut proxy = ProxyBuilder::control_plane(&control, "payment", "v1", Some(app.addr))
        .await
        .arg("--drain-timeout")
        .arg("30s")
        .spawn()
        .ready()
        .await;
    let inbound = proxy.inbound();
    eventually(
        Duration::from_secs(10),
        "the sidecar to register",
        || async { (registered(&control, "payment").await == [inbound]).then_some(()) },
    )
    .await;

    // The heartbeat comes every ttl/3 = 3.3 s: hold the drain open well past two of them.
    let hold = Duration::from_secs(9);
    let url = format!("http://{inbound}/delay/{}", hold.as_millis());
    let in_flight = tokio::spawn(async move { client::get(&client::h1(), &url).await });
    eventually(
        Duration::from_secs(5),
        "the slow request to reach the app",
        || async { (app.requests() == 1).then_some(()) },
    )
    .await;

    let signalled = Instant::now();
    proxy.signal("TERM");
    eventually(Duration::from_secs(5), "/ready to turn 503", || async {
        (proxy.admin_get("/ready").await.0 == 503).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the instance to leave", || async {
        registered(&control, "payment")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    // Watch the registry while the sidecar is still draining, for two heartbeat periods and
    // more: a heartbeat loop still running would have registered it again by then.
    let watch_until = signalled + Duration::from_secs(7);
    while Instant::now() < watch_until {
        let now = registered(&control, "payment").await;
        assert!(
            now.is_empty(),
            "the draining sidecar registered again {:?} after SIGTERM: {now:?}\n{}",
            signalled.elapsed(),
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(proxy.child.try_wait(), Ok(None)),
        "the sidecar must still be draining for the watch to mean anything"
    );
    let res = in_flight.await.expect("task");
    assert_eq!(res.status(), 200, "the request in flight finishes");
    assert_eq!(proxy.exit_code(Duration::from_secs(20)).await, Some(0));
    assert!(
        !proxy.stderr().contains("registering again"),
        "{}",
        proxy.stderr()
    );
}
