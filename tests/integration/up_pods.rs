//! Issue 14 point 7: `outrigger up --pods` runs the shop in pods (network namespaces on a
//! bridge it makes, with the init step's rules), the apps unchanged, and prints the same
//! summary; it removes everything it made; without root it says so and makes nothing.

use outrigger_tests::netns::readable_tempdir;
use outrigger_tests::{bin, up_pods};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_pods_runs_the_shop_in_pods_with_interception_and_cleans_up() {
    let dir = readable_tempdir("orr-up-pods");
    let (s, stdout) = up_pods::run(dir.path(), &[], &[], Duration::from_secs(180)).await;
    up_pods::assert_healthy_shop(&s);
    assert_eq!(s["services"].as_array().map(Vec::len), Some(5), "{s}");
    assert_eq!(
        s["shop"]["charges"], s["shop"]["orders_stored"],
        "{}",
        s["shop"]
    );
    assert!(
        stdout.contains("pods: each instance in a network namespace"),
        "{stdout}"
    );

    // Nothing left behind of this run (another `up --pods` may be running beside it): its
    // namespaces, its bridge, and the guard rails that name the bridge.
    let bridge = stdout
        .split("on bridge ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no bridge named in: {stdout}"))
        .to_string();
    let run_id = bridge.trim_start_matches("orup");
    let netns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
            .stdout,
    )
    .to_string();
    assert!(
        !netns.contains(&format!("orr-storefront-{run_id}")),
        "{netns}"
    );
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&bridge));
    let rules = Command::new("iptables")
        .args(["-S"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!String::from_utf8_lossy(&rules.stdout).contains(&bridge));
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
