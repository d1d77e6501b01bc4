//! The `up` steps of the shared system test (`super`): once the shared run has stopped, its
//! summary, its output and what it left behind.

use outrigger_tests::up::Up;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What `up` wrote to `--summary-json`.
pub(super) fn summary(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("summary written")).expect("summary json")
}

/// The main job end to end: `outrigger up` starts the control plane, the five shop services
/// with their sidecars (payment v1 ×2 and a v2 canary that fails charges, 50 % of them in the
/// shared run), drives storefront load, and stops everything. Every service must be healthy,
/// at least 99 % of orders must succeed (retries and ejection absorb the canary), the summary
/// must have p50/p95/p99 for every service, and the canary's share must match its weight.
///
/// This once ran its own `up --duration 20s --orders-per-sec 30`, allowed 120 s in all: the
/// shared run has at least 30 s of load at 30 orders/s and is stopped by SIGTERM once every
/// step is done (its clean exit is checked by `super`), so the 100 s left for `up`'s own work
/// is what `startup` (from spawn to `mesh up:`) and `shutdown` (from SIGTERM to exit) may take.
pub(super) fn outrigger_up_runs_the_shop_and_absorbs_a_flaky_canary(
    up: &Up,
    s: &Value,
    startup: Duration,
    shutdown: Duration,
) {
    let stdout = up.output().join("\n");
    assert!(
        startup + shutdown < Duration::from_secs(100),
        "took {startup:?} to start and {shutdown:?} to stop"
    );

    let orders = &s["orders"];
    let attempted = orders["attempted"].as_u64().expect("attempted");
    assert!(attempted >= 100, "too few orders to judge: {orders}");
    let rate = orders["success_rate"].as_f64().expect("success rate");
    assert!(
        rate >= 0.99,
        "order success {rate} < 99 %: {orders}\n{stdout}"
    );

    let services = s["services"].as_array().expect("services");
    let names: Vec<&str> = services
        .iter()
        .filter_map(|r| r["service"].as_str())
        .collect();
    assert_eq!(names, ["user", "catalog", "order", "inventory", "payment"]);
    for r in services {
        let name = r["service"].as_str().unwrap_or("?");
        assert_eq!(r["healthy"], true, "{name} unhealthy");
        assert!(
            r["requests"].as_u64().unwrap_or(0) > 0,
            "{name} saw no traffic"
        );
        let (p50, p95, p99) = (
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p95_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
        );
        assert!(
            p50 > 0.0 && p50 <= p95 && p95 <= p99,
            "{name}: p50 {p50} p95 {p95} p99 {p99}"
        );
    }
    let payment = services
        .iter()
        .find(|r| r["service"] == "payment")
        .expect("payment row");
    let share = |key: &str| {
        payment[key]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v[0] == "v2"))
            .and_then(|v| v[1].as_f64())
            .unwrap_or_else(|| panic!("v2's {key} share in the summary: {payment}"))
    };
    let v2 = share("decided");
    // What v2 actually served: no more than it was given, since its failures are retried and
    // its endpoint ejected onto v1 (this run's canary fails half its charges).
    let served = share("versions");
    assert!(
        served <= v2 + 0.02,
        "v2 served {served} of the charges but the split gave it {v2}"
    );
    // The split's decisions for a 90/10 split over ~900 charges or more (the shared run's 30 s
    // at 30 orders/s, more if its steps take longer; the trace step's 20 orders of its own, all
    // from one user and so all on one version, barely move it): 10 % ± 4 points is four
    // standard deviations or more, so a correct split never fails this and a broken one does.
    assert!(
        (0.06..=0.14).contains(&v2),
        "canary share {v2} not near 10 %"
    );
    assert!(
        payment["retries"].as_u64().unwrap_or(0) > 0,
        "the flaky canary caused no retries?"
    );

    // mTLS is on and strict by default: every inbound request between sidecars came over
    // mTLS, none in plaintext, over a handful of connections.
    let mtls = &s["mtls"];
    assert_eq!(mtls["mode"], "strict", "{mtls}");
    assert!(
        mtls["mtls_requests"].as_u64().unwrap_or(0) > attempted,
        "{mtls}"
    );
    assert_eq!(mtls["plaintext_requests"], 0, "{mtls}");
    let handshakes = mtls["handshakes"].as_u64().unwrap_or(0);
    assert!(
        (1..=60).contains(&handshakes),
        "handshakes should scale with connections: {mtls}"
    );
    assert!(stdout.contains("mTLS: strict"), "{stdout}");

    // Nothing left running.
    let leftovers = Command::new("pgrep")
        .args(["-f", &up.workdir().display().to_string()])
        .output();
    if let Ok(l) = leftovers {
        assert!(
            l.stdout.is_empty(),
            "orphaned processes: {}",
            String::from_utf8_lossy(&l.stdout)
        );
    }
    assert!(stdout.contains("summary after"), "{stdout}");
    // The control plane's trust bundle, which `top` and anything else talking to it needs.
    let anchors = s["trust_anchors"]
        .as_str()
        .expect("trust_anchors in the summary");
    assert!(anchors.ends_with("trust-bundle.pem"), "{anchors}");
    assert!(
        stdout.contains(&format!("trust anchors: {anchors}")),
        "{stdout}"
    );
}

/// With certificates that live 8 s and bootstrap tokens that live 4 s (`up --cert-lifetime 8s
/// --bootstrap-token-ttl 4s`), every sidecar renews several times on its certificate alone and
/// not one order fails. This once ran its own `up --duration 30s` at the default 20 orders/s;
/// the shared run has at least those 30 s, at 30 orders/s.
pub(super) fn short_lived_certificates_and_bootstrap_tokens_cost_no_order(up: &Up, s: &Value) {
    let stdout = up.output().join("\n");
    let orders = &s["orders"];
    assert!(orders["attempted"].as_u64().unwrap_or(0) >= 100, "{orders}");
    assert_eq!(orders["failed"], 0, "{orders}\n{stdout}");
    // 8 sidecars for 30 s, renewing at 70 % of 8 s: each got its first certificate with its
    // (single-use, long expired) token and then at least three more on its own.
    let mtls = &s["mtls"];
    let certificates = mtls["certificates"].as_u64().unwrap_or(0);
    assert!(certificates >= 8 * 4, "too few certificates: {mtls}");
    assert_eq!(mtls["plaintext_requests"], 0, "{mtls}");
}
