//! The fault matrix (issue 12, point 5): one small real mesh per fault, under steady load
//! that counts every request. The mesh is what a platform team runs: the control plane (CA and
//! registry, strict mTLS), two `catalog` instances (an app behind its own sidecar each) and
//! the `storefront` sidecar that the load goes through, with the shop's read route for catalog
//! (500 ms per try, 3 attempts on connect failures, resets and gateway errors) and outlier
//! detection.
//!
//! An instance's death is its sidecar's death (callers only ever reach the sidecar), so the
//! faults hit the sidecar process: SIGKILL, SIGSTOP, SIGTERM and a restart. The apps are the
//! harness's in-process upstreams, which can be slowed down or taken down and brought back on
//! the same port. Each test prints its counts; `docs/faults.md` tabulates them.

use outrigger_tests::control::Control;
use outrigger_tests::eventually;
use outrigger_tests::load::SteadyLoad;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::time::Duration;
use tokio::time::Instant;

const MESH: &str = "\
kind: Service
metadata: {name: storefront}
spec: {calls: [catalog]}
---
kind: Service
metadata: {name: catalog}
spec: {}
---
kind: Route
metadata: {name: reads}
spec:
  service: catalog
  match: {methods: [GET]}
  timeout: 2s
  per_try_timeout: 500ms
  retries: {attempts: 3, on: [connect-failure, refused-stream, reset, gateway-error]}
---
kind: Policy
metadata: {name: catalog-callers}
spec:
  service: catalog
  allow: [storefront]
  outlier_detection: {consecutive_failures: 3, base_ejection: 5s, max_ejection: 30s, max_ejected_percent: 50}
";

/// How many load loops run at once: each sends GETs one after another on its own connection.
const LOADS: usize = 3;

struct Instance {
    app: Upstream,
    sidecar: Proxy,
}

struct Mesh {
    control: Control,
    instances: Vec<Instance>,
    edge: Proxy,
}

async fn instance(control: &Control, app: Upstream) -> Instance {
    let sidecar = ProxyBuilder::control_plane(control, "catalog", "v1", Some(app.addr))
        .await
        .spawn()
        .ready()
        .await;
    Instance { app, sidecar }
}

impl Mesh {
    async fn start() -> Mesh {
        let control = Control::start().await;
        let (status, body) = control.apply(MESH).await;
        assert_eq!(status, 200, "{body}");
        let mut instances = Vec::new();
        for name in ["a", "b"] {
            instances.push(instance(&control, Upstream::start(name).await).await);
        }
        let edge = ProxyBuilder::control_plane(&control, "storefront", "v1", None)
            .await
            .spawn()
            .ready()
            .await;
        let mesh = Mesh {
            control,
            instances,
            edge,
        };
        mesh.wait_for_both().await;
        mesh
    }

    /// Until the storefront has reached both instances: the registry and its snapshot agree.
    async fn wait_for_both(&self) {
        let client = outrigger_tests::client::h1();
        let url = format!("http://{}/", self.edge.outbound());
        let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
        eventually(
            Duration::from_secs(20),
            "the storefront to reach both catalog instances",
            || {
                let req = outrigger_tests::client::request("GET", &url)
                    .header("host", "catalog")
                    .body(outrigger_tests::client::empty())
                    .expect("request");
                let (client, seen) = (&client, &seen);
                async move {
                    let res = outrigger_tests::client::send(client, req).await;
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(who) = res.headers().get("x-upstream") {
                        seen.insert(who.to_str().unwrap_or("").to_string());
                    }
                    (seen.len() == 2).then_some(())
                }
            },
        )
        .await;
    }

    fn load(&self) -> Vec<SteadyLoad> {
        (0..LOADS)
            .map(|_| SteadyLoad::start(self.edge.outbound(), "catalog"))
            .collect()
    }
}

/// Waits until every load loop has made `n` more successful requests.
async fn progress(loads: &[SteadyLoad], n: usize, what: &str) {
    for l in loads {
        l.progress(n, Duration::from_secs(30), what).await;
    }
}

/// Stops the load and returns (succeeded, failed) over all loops.
async fn stop(loads: Vec<SteadyLoad>) -> (usize, usize) {
    let mut total = (0, 0);
    for l in loads {
        let (ok, failed) = l.stop().await;
        total.0 += ok;
        total.1 += failed;
    }
    total
}

/// Runs for `d` of wall time while the load goes on: the length of a fault, not a wait for
/// something to happen.
async fn fault_lasts(d: Duration) {
    tokio::time::sleep(d).await;
}

fn report(fault: &str, ok: usize, failed: usize) {
    eprintln!("fault matrix: {fault}: {ok} requests ok, {failed} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_sigkill_fails_no_read() {
    let mut mesh = Mesh::start().await;
    let loads = mesh.load();
    progress(&loads, 20, "load before the kill").await;
    let victim = mesh.instances.remove(0);
    victim.sidecar.signal("KILL");
    // Callers learn of it only by failing to connect (no deregistration from a dead process):
    // retries and then ejection carry every read to the other instance.
    progress(&loads, 200, "load after the kill").await;
    let (ok, failed) = stop(loads).await;
    report("instance SIGKILLed", ok, failed);
    assert_eq!(failed, 0, "{ok} ok");
    drop(victim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_black_holed_for_10s_fails_no_read() {
    let mesh = Mesh::start().await;
    let loads = mesh.load();
    progress(&loads, 20, "load before the black hole").await;
    // SIGSTOP: the kernel still accepts its connections, nothing answers. Only the per-try
    // timeout can tell; the retry goes to the other instance and ejection stops the waits.
    let victim = &mesh.instances[0].sidecar;
    victim.signal("STOP");
    let during = Instant::now();
    let before = loads.iter().map(SteadyLoad::ok).sum::<usize>();
    fault_lasts(Duration::from_secs(10)).await;
    let served_during = loads.iter().map(SteadyLoad::ok).sum::<usize>() - before;
    victim.signal("CONT");
    progress(&loads, 50, "load after the black hole").await;
    let (ok, failed) = stop(loads).await;
    report("instance black-holed (SIGSTOP) for 10 s", ok, failed);
    assert_eq!(failed, 0, "{ok} ok");
    // Ejected within the first attempts: the 10 s carried on at the other instance's pace,
    // not one request per 500 ms timeout.
    assert!(
        served_during > 100,
        "only {served_during} reads in {:?} of black hole",
        during.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_ten_times_slower_fails_no_read_and_gets_less_traffic() {
    let mesh = Mesh::start().await;
    for i in &mesh.instances {
        i.app.delay_ms(5);
    }
    let loads = mesh.load();
    progress(&loads, 20, "load before the slowdown").await;
    mesh.instances[0].app.delay_ms(50);
    let (slow0, fast0) = (
        mesh.instances[0].app.attempts_seen().len(),
        mesh.instances[1].app.attempts_seen().len(),
    );
    progress(&loads, 150, "load while one instance is slow").await;
    let (ok, failed) = stop(loads).await;
    let slow = mesh.instances[0].app.attempts_seen().len() - slow0;
    let fast = mesh.instances[1].app.attempts_seen().len() - fast0;
    report("instance 10x slower", ok, failed);
    eprintln!("fault matrix: while slow, the slow instance served {slow}, the other {fast}");
    assert_eq!(failed, 0, "{ok} ok");
    // Least-latency balancing (EWMA, P2C) sends most reads to the fast one.
    assert!(slow * 3 < fast, "slow served {slow}, fast {fast}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_flapping_every_2s_fails_no_read() {
    let mut mesh = Mesh::start().await;
    let loads = mesh.load();
    progress(&loads, 20, "load before the flapping").await;
    let addr = mesh.instances[0].app.addr;
    // Down for 2 s, up for 2 s, three times: its sidecar answers 502 connect-failure while
    // the app is down, which the callers retry elsewhere and count toward ejection.
    for _ in 0..3 {
        mesh.instances[0].app.stop();
        eventually(Duration::from_secs(5), "the app to be down", || {
            let stopped = mesh.instances[0].app.is_stopped();
            async move { stopped.then_some(()) }
        })
        .await;
        fault_lasts(Duration::from_secs(2)).await;
        mesh.instances[0].app = Upstream::start_on("a", addr).await;
        fault_lasts(Duration::from_secs(2)).await;
    }
    progress(&loads, 50, "load after the flapping").await;
    let (ok, failed) = stop(loads).await;
    report("instance flapping every 2 s", ok, failed);
    assert_eq!(failed, 0, "{ok} ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_killed_and_restarted_fails_no_request() {
    let mut mesh = Mesh::start().await;
    let loads = mesh.load();
    progress(&loads, 20, "load before the outage").await;
    mesh.control.kill();
    // Sidecars keep their last snapshot and certificates: the data plane never waits on the
    // control plane.
    progress(&loads, 100, "load while the control plane is down").await;
    mesh.control.restart().await;
    progress(&loads, 100, "load after the restart").await;
    // The mesh is whole again: both instances still serve.
    mesh.wait_for_both().await;
    // The sidecars came back on the session tickets the old process gave them.
    eventually(
        Duration::from_secs(20),
        "a sidecar to resume its TLS session with the restarted control plane",
        || async {
            let resumed = mesh
                .control
                .metric_or_zero(
                    "outrigger_control_tls_handshakes_total",
                    &[("kind", "resumed")],
                )
                .await;
            (resumed >= 1.0).then_some(())
        },
    )
    .await;
    let (ok, failed) = stop(loads).await;
    report("control plane killed and restarted", ok, failed);
    assert_eq!(failed, 0, "{ok} ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    let mesh = Mesh::start().await;
    let loads = mesh.load();
    progress(&loads, 20, "load before the bad apply").await;
    // A route with a zero per-try timeout, in an otherwise valid apply: refused as a whole, nothing of it reaches a sidecar. (A snapshot that reaches a
    // sidecar and is NACKed there is control_plane.rs's test: the real control plane never
    // sends one.)
    let bad = MESH.replace("per_try_timeout: 500ms", "per_try_timeout: 0s");
    let (status, body) = mesh.control.apply(&bad).await;
    assert_eq!(status, 400, "{body}");
    progress(&loads, 100, "load after the bad apply").await;
    mesh.wait_for_both().await;
    let (ok, failed) = stop(loads).await;
    report("bad config pushed", ok, failed);
    assert_eq!(failed, 0, "{ok} ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callees_sidecar_restarted_fails_no_request() {
    let mut mesh = Mesh::start().await;
    let loads = mesh.load();
    progress(&loads, 20, "load before the restart").await;
    // A rollout of the sidecar: SIGTERM (readiness off, deregistered, 1 s for callers to
    // learn, drain), then a new sidecar for the same app registers.
    let old = mesh.instances.remove(0);
    old.sidecar.signal("TERM");
    let Instance { app, mut sidecar } = old;
    assert_eq!(sidecar.exit_code(Duration::from_secs(30)).await, Some(0));
    progress(&loads, 50, "load while one instance is gone").await;
    mesh.instances.insert(0, instance(&mesh.control, app).await);
    mesh.wait_for_both().await;
    progress(&loads, 50, "load after the restart").await;
    let (ok, failed) = stop(loads).await;
    report("callee's sidecar restarted", ok, failed);
    assert_eq!(failed, 0, "{ok} ok");
}
