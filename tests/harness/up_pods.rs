//! `outrigger up --pods` run to its end, and what its summary must say of a healthy shop in
//! pods: the same judgement for the plain pods and the containers.

use crate::bin;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// `outrigger up --pods ARGS --duration 8s --orders-per-sec 10`, its work directory in `dir`
/// (which the pods' uids must be able to read), with `env`: the summary and stdout.
pub async fn run(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    within: Duration,
) -> (Value, String) {
    let summary = dir.join("summary.json");
    let mut cmd = tokio::process::Command::new(bin("outrigger"));
    cmd.args(["up", "--pods"])
        .args(args)
        .args(["--duration", "8s", "--orders-per-sec", "10"])
        .arg("--workdir")
        .arg(dir.join("up"))
        .arg("--summary-json")
        .arg(&summary)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("up --pods {args:?} did not finish"))
        .unwrap_or_else(|e| panic!("outrigger up: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "up --pods {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap_or_default())
        .unwrap_or_else(|e| panic!("summary: {e}: {stdout}"));
    (s, stdout)
}

/// The same summary as on loopback: orders succeed, every service is healthy, all over strict
/// mTLS; and the apps' calls by name were taken to their sidecars by the pods' rules.
pub fn assert_healthy_shop(s: &Value) {
    assert!(
        s["orders"]["succeeded"].as_u64().unwrap_or(0) >= 20,
        "{}",
        s["orders"]
    );
    assert!(
        s["orders"]["success_rate"].as_f64().unwrap_or(0.0) >= 0.98,
        "{}",
        s["orders"]
    );
    for svc in s["services"].as_array().into_iter().flatten() {
        assert_eq!(svc["healthy"], true, "{svc}");
    }
    assert_eq!(s["mtls"]["mode"], "strict");
    assert!(
        s["mtls"]["mtls_requests"].as_u64().unwrap_or(0) > 0,
        "{}",
        s["mtls"]
    );
    assert_eq!(s["mtls"]["plaintext_requests"], 0, "{}", s["mtls"]);
    assert!(
        s["mtls"]["intercepted"].as_u64().unwrap_or(0) > 0,
        "{}",
        s["mtls"]
    );
}
