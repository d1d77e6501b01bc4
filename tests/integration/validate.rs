//! Issue 16 point 2: configuration is checked before it is applied, offline. `outrigger
//! validate` gives the errors `apply` gives, placed the same way, with no control plane;
//! `outrigger-proxy --check --config F` does the same for a sidecar file.

use outrigger_tests::bin;
use outrigger_tests::control::Control;
use std::path::Path;
use std::process::{Command, Output};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p.display().to_string()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn outrigger(args: &[&str]) -> Output {
    Command::new(bin("outrigger"))
        .args(args)
        // No control plane anywhere: validate must not need one.
        .env("OUTRIGGER_CONTROL_PLANE", "https://127.0.0.1:9")
        .output()
        .unwrap_or_else(|e| panic!("outrigger: {e}"))
}

const BAD_MESH: &str = "kind: Service\nmetadata: {name: web}\nspec: {calls: [db]}\n---\n\
    kind: Route\nmetadata: {name: slow}\nspec:\n  service: web\n  timeout: 3x\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_gives_applys_errors_offline_and_across_files() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let shop = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/shop.yaml");
    let out = outrigger(&["validate", "-f", shop]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("valid: 15 resource(s)"),
        "{}",
        text(&out)
    );

    // Errors name the document, field, line and column, exactly as apply does.
    let bad = write(d, "bad.yaml", BAD_MESH);
    let out = outrigger(&["validate", "-f", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let offline = text(&out);
    assert!(
        offline.contains("document 1: spec.timeout (line 9, column 12)"),
        "{offline}"
    );
    let control = Control::start().await;
    let applied = Command::new(bin("outrigger"))
        .args(["apply", "--dry-run", "-f", &bad])
        .env("OUTRIGGER_CONTROL_PLANE", control.url())
        .env("OUTRIGGER_TRUST_ANCHORS", control.trust_anchors())
        .arg("--token-file")
        .arg(&control.token_file)
        .output()
        .unwrap_or_else(|e| panic!("outrigger apply: {e}"));
    assert_eq!(applied.status.code(), Some(1));
    for line in String::from_utf8_lossy(&applied.stderr)
        .lines()
        .filter(|l| l.contains("(line "))
    {
        assert!(
            offline.contains(line),
            "apply said {line:?}; validate said:\n{offline}"
        );
    }

    // A route in one file may name a service in another: checked together, as applied together.
    let route = write(
        d,
        "route.yaml",
        "kind: Route\nmetadata: {name: r}\nspec: {service: api}\n",
    );
    let out = outrigger(&["validate", "-f", &route]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("spec.service (line 3, column 17)"),
        "{}",
        text(&out)
    );
    let service = write(
        d,
        "service.yaml",
        "kind: Service\nmetadata: {name: api}\nspec: {}\n",
    );
    let out = outrigger(&["validate", "-f", &route, "-f", &service]);
    assert!(out.status.success(), "{}", text(&out));

    // Sidecar files, by their content: the same loader as a sidecar's reload.
    let sidecar = write(
        d,
        "sidecar.yaml",
        "proxy:\n  outbound: 127.0.0.1:15001\nsnapshot:\n  service: web\n  destinations:\n    \
         - name: pay\n      endpoints: [{address: nope}]\n",
    );
    let out = outrigger(&["validate", "-f", &sidecar]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("snapshot.destinations[0].endpoints[0].address (line 7, column 29)"),
        "{}",
        text(&out)
    );
    let check = Command::new(bin("outrigger-proxy"))
        .args(["--check", "--config", &sidecar])
        .output()
        .unwrap_or_else(|e| panic!("outrigger-proxy: {e}"));
    assert_eq!(check.status.code(), Some(1));
    assert!(
        text(&check).contains("snapshot.destinations[0].endpoints[0].address (line 7, column 29)"),
        "{}",
        text(&check)
    );
    let good = write(d, "good.yaml", "snapshot:\n  service: web\n");
    let check = Command::new(bin("outrigger-proxy"))
        .args(["--check", "--config", &good])
        .output()
        .unwrap_or_else(|e| panic!("outrigger-proxy: {e}"));
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("valid"), "{}", text(&check));
}
