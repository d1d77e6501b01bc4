//! Issue 14 point 7: `outrigger up --pods` runs the shop in pods (network namespaces on a
//! bridge it makes, with the init step's rules), the apps unchanged, and prints the same
//! summary; it removes everything it made; without root it says so and makes nothing.

use outrigger_tests::bin;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_pods_runs_the_shop_in_pods_with_interception_and_cleans_up() {
    let dir = tempfile::Builder::new()
        .prefix("orr-up-pods")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    // The sidecars run as uid 1337 and read their files under the work directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let workdir = dir.path().join("up");
    let summary = dir.path().join("summary.json");
    let child = tokio::process::Command::new(bin("outrigger"))
        .args(["up", "--pods", "--duration", "8s", "--orders-per-sec", "10"])
        .arg("--workdir")
        .arg(&workdir)
        .arg("--summary-json")
        .arg(&summary)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), child)
        .await
        .unwrap_or_else(|_| panic!("up --pods did not finish"))
        .unwrap_or_else(|e| panic!("outrigger up: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "up --pods failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap_or_default())
        .unwrap_or_else(|e| panic!("summary: {e}: {stdout}"));

    // The same summary as on loopback: orders succeed, every service healthy, all over mTLS.
    let ok = s["orders"]["succeeded"].as_u64().unwrap_or(0);
    assert!(ok >= 20, "orders: {}", s["orders"]);
    assert!(
        s["orders"]["success_rate"].as_f64().unwrap_or(0.0) >= 0.98,
        "{}",
        s["orders"]
    );
    for svc in s["services"].as_array().into_iter().flatten() {
        assert_eq!(svc["healthy"], true, "{svc}");
    }
    assert_eq!(s["services"].as_array().map(Vec::len), Some(5), "{s}");
    assert_eq!(s["mtls"]["mode"], "strict");
    assert!(
        s["mtls"]["mtls_requests"].as_u64().unwrap_or(0) > 0,
        "{}",
        s["mtls"]
    );
    assert_eq!(s["mtls"]["plaintext_requests"], 0, "{}", s["mtls"]);
    // The order app called catalog, inventory and payment by name; the rules took those
    // connections to its sidecar.
    assert!(
        s["mtls"]["intercepted"].as_u64().unwrap_or(0) > 0,
        "{}",
        s["mtls"]
    );
    assert_eq!(
        s["shop"]["charges"], s["shop"]["orders_stored"],
        "{}",
        s["shop"]
    );
    assert!(
        stdout.contains("pods: each instance in a network namespace"),
        "{stdout}"
    );

    // Nothing left behind: namespaces, bridge, guard rails, processes.
    let netns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
            .stdout,
    )
    .to_string();
    assert!(!netns.contains("orr-storefront"), "{netns}");
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!String::from_utf8_lossy(&links.stdout).contains("orup"));
    let rules = Command::new("iptables")
        .args(["-S"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("10.205.0."));
}

#[test]
fn up_pods_without_root_says_so_and_makes_nothing() {
    let dir = tempfile::Builder::new()
        .prefix("orr-up-pods-nobody")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let workdir = dir.path().join("up");
    // A copy any user may run, wherever the build directory is.
    let outrigger = dir.path().join("outrigger");
    std::fs::copy(bin("outrigger"), &outrigger).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&outrigger)
        .args(["up", "--pods", "--duration", "5s", "--workdir"])
        .arg(&workdir)
        .output()
        .unwrap_or_else(|e| panic!("setpriv: {e}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
    assert!(
        !workdir.exists(),
        "up made its work directory before refusing"
    );
}
