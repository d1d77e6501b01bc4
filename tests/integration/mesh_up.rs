//! The main job end to end: `outrigger up --duration 20s` starts the control plane, the five
//! shop services with their sidecars (payment v1 ×2 and a v2 canary that fails 20 % of
//! charges), drives storefront load, and stops everything. Every service must be healthy, at
//! least 99 % of orders must succeed (retries and ejection absorb the canary), the summary
//! must have p50/p95/p99 for every service, and the canary's share must match its weight.
//! With certificates that live 8 s and bootstrap tokens that live 4 s, every sidecar renews
//! several times on its certificate alone and not one order fails.

use outrigger_tests::bin;
use std::process::Command;
use std::time::Duration;

#[test]
fn outrigger_up_runs_the_shop_and_absorbs_a_flaky_canary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.json");
    let started = std::time::Instant::now();
    let out = Command::new(bin("outrigger"))
        .args([
            "up",
            "--duration",
            "20s",
            "--orders-per-sec",
            "30",
            "--summary-json",
        ])
        .arg(&summary)
        .arg("--workdir")
        .arg(dir.path().join("run"))
        .output()
        .expect("run outrigger up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "outrigger up failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );

    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("summary written"))
            .expect("summary json");
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
    let v2 = payment["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v[0] == "v2"))
        .and_then(|v| v[1].as_f64())
        .expect("v2 share in the summary");
    // The split's decisions for a 90/10 split over ~600 charges: 10 % ± 4 points is about
    // four standard deviations, so a correct split never fails this and a broken one does.
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
        .args(["-f", &dir.path().display().to_string()])
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

#[test]
fn short_lived_certificates_and_bootstrap_tokens_cost_no_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.json");
    let out = Command::new(bin("outrigger"))
        .args([
            "up",
            "--cert-lifetime",
            "8s",
            "--bootstrap-token-ttl",
            "4s",
            "--duration",
            "30s",
            "--summary-json",
        ])
        .arg(&summary)
        .arg("--workdir")
        .arg(dir.path().join("run"))
        .output()
        .expect("run outrigger up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "outrigger up failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("summary written"))
            .expect("summary json");
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
