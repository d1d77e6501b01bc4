//! `outrigger top` without a mesh, and how the control plane learns each sidecar's admin
//! address from its push stream, which is how `top` finds them. `top` against the mesh that
//! `outrigger up` runs is a step of the shared system test (`system::top`).

use outrigger_tests::bin;
use outrigger_tests::control::Control;
use outrigger_tests::eventually;
use outrigger_tests::proxy::ProxyBuilder;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `outrigger top ARGS...` to completion.
pub(crate) fn top(args: &[&str]) -> Output {
    Command::new(bin("outrigger"))
        .arg("top")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run outrigger top")
}

#[test]
fn top_once_fails_clearly_without_a_control_plane() {
    let url = format!("https://127.0.0.1:{}", outrigger_tests::free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, outrigger_tests::pki::ForeignCa::new().cert_pem).expect("anchors");
    let out = top(&[
        "--control-plane",
        &url,
        "--trust-anchors",
        anchors.to_str().expect("utf-8 path"),
        "--once",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the control plane"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

const MESH: &str = outrigger_tests::control::CHECKOUT_CALLS_PAYMENT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_lists_each_sidecar_s_admin_address() {
    let control = Control::start_with(&["--mtls", "off"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let proxy = ProxyBuilder::control_plane(&control, "checkout", "v2", None)
        .await
        .spawn()
        .ready()
        .await;
    let me = eventually(
        Duration::from_secs(20),
        "the sidecar in sync status, its snapshot ACKed",
        || async {
            let (_, list) = control.get("/v1/sidecars").await;
            list.as_array()?
                .iter()
                .find(|s| {
                    s["service"] == "checkout"
                        && s["connected"] == true
                        && s["acked_version"].is_u64()
                        && s["acked_version"] == s["pushed_version"]
                })
                .cloned()
        },
    )
    .await;
    assert_eq!(me["admin"], proxy.admin.to_string(), "{me}");
    assert_eq!(me["version"], "v2", "{me}");

    // The operator's view of the same: `outrigger get sidecars` shows version and admin; a
    // reader token is enough.
    let out = Command::new(bin("outrigger"))
        .args(["--control-plane", &control.url(), "--trust-anchors"])
        .arg(control.trust_anchors())
        .arg("--token-file")
        .arg(&control.reader_token_file)
        .args(["get", "sidecars"])
        .env_remove("OUTRIGGER_TOKEN")
        .output()
        .expect("run outrigger get sidecars");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .next()
            .is_some_and(|h| h.contains("ADMIN") && h.contains("PUSHED")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("checkout")
            && l.contains(&proxy.admin.to_string())
            && l.contains("v2")),
        "{text}"
    );

    // What `top` reads there is the sidecar's own admin port.
    let admin = me["admin"].as_str().expect("admin").to_string();
    let (status, _) =
        outrigger_tests::client::admin_get(admin.parse().expect("addr"), "/stats").await;
    assert_eq!(status, 200);

    // An admin address that is not one is refused, not stored.
    let bad = tokio::time::timeout(
        Duration::from_secs(10),
        control.get("/v1/stream?service=checkout&sidecar=odd&admin=not-an-address"),
    )
    .await
    .expect("a refused stream answers at once");
    assert_eq!(bad.0, 400, "{}", bad.1);
    assert!(bad.1.to_string().contains("admin"), "{}", bad.1);
}
