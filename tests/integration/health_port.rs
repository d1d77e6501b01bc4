//! Issue 15 (the sidecar's part of the pod): the health listener the kubelet and Prometheus
//! reach from outside the pod, while the admin stays on loopback, and `outrigger-proxy await`,
//! which ends a Job's sidecar when its command is done.

use outrigger_tests::bin;
use outrigger_tests::client::{admin_get, admin_request};
use outrigger_tests::free_port;
use outrigger_tests::proxy::ProxyBuilder;
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_serves_probes_and_metrics_and_nothing_that_changes_the_sidecar() {
    let app = Upstream::start("app").await;
    let dead = free_port();
    let health: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let probes = format!(
        r#"{{"/app-health/web/readyz": {{"port": {}, "path": "/status/204"}},
            "/app-health/web/livez": {{"port": {}, "path": "/status/500"}},
            "/app-health/web/startupz": {{"port": {dead}}}}}"#,
        app.addr.port(),
        app.addr.port()
    );
    let proxy = ProxyBuilder::quick(app.addr)
        .arg("--health")
        .arg(&health.to_string())
        .env("OUTRIGGER_APP_PROBES", &probes)
        .spawn()
        .ready()
        .await;

    assert_eq!(admin_get(health, "/live").await.0, 200);
    assert_eq!(admin_get(health, "/ready").await.0, 200);
    let (status, metrics) = admin_get(health, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("outrigger_"), "{metrics}");
    // The app's own probes, made by the sidecar: the app's status, or 503 when it is down.
    assert_eq!(admin_get(health, "/app-health/web/readyz").await.0, 204);
    assert_eq!(admin_get(health, "/app-health/web/livez").await.0, 500);
    let (status, why) = admin_get(health, "/app-health/web/startupz").await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("app probe failed"), "{why}");
    // Read-only: what the admin listener can change or reveal is not here.
    assert_eq!(admin_request(health, "POST", "/shutdown").await.0, 405);
    assert_eq!(admin_get(health, "/config").await.0, 404);
    // What `outrigger top` reads: the percentiles, as on the admin listener.
    let (status, stats) = admin_get(health, "/stats").await;
    assert_eq!(status, 200);
    assert!(stats.contains("\"destinations\""), "{stats}");
    assert_eq!(admin_get(health, "/app-health/other/readyz").await.0, 404);
    assert_eq!(proxy.admin_get("/ready").await.0, 200, "still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_app_probe_spec_stops_the_start_with_its_path() {
    let app = Upstream::start("app").await;
    let out = std::process::Command::new(bin("outrigger-proxy"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &app.addr.to_string(),
        ])
        .env(
            "OUTRIGGER_APP_PROBES",
            r#"{"/app-health/web/readyz": {"port": 8080, "scheme": "HTTPS"}}"#,
        )
        .output()
        .expect("run outrigger-proxy");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/app-health/web/readyz") && err.contains("HTTPS"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_runs_the_job_then_ends_its_sidecar_with_the_jobs_status() {
    let app = Upstream::start("app").await;
    let mut proxy = ProxyBuilder::quick(app.addr).spawn().ready().await;
    let admin = proxy.admin();
    let out = tokio::process::Command::new(bin("outrigger-proxy"))
        .args(["await", "--admin", &admin.to_string(), "--shutdown", "--"])
        .args(["sh", "-c", "echo job ran; exit 3"])
        .output()
        .await
        .expect("run await");
    assert_eq!(out.status.code(), Some(3), "the job's own status");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "job ran\n");
    assert_eq!(
        proxy.exit_code(Duration::from_secs(20)).await,
        Some(0),
        "the sidecar ended after the job"
    );

    // Without a sidecar to wait for, await gives up at its timeout, and runs nothing.
    let nobody: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let out = tokio::process::Command::new(bin("outrigger-proxy"))
        .args([
            "await",
            "--admin",
            &nobody.to_string(),
            "--timeout",
            "1s",
            "--",
        ])
        .args(["sh", "-c", "echo should not run"])
        .output()
        .await
        .expect("run await");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was not ready"), "{err}");
}

/// Issue 16 point 6: a sidecar that cannot serve says so on `/ready` and in its log. With mTLS
/// in its snapshot and no workload identity it is not ready, with the fix in the reason; an app
/// that does not answer is reported (still ready: a native sidecar must be ready before its
/// app starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_cannot_serve_says_why_on_ready_and_in_its_log() {
    use outrigger_tests::eventually;
    let strict = ProxyBuilder::file(
        "service: web\nmtls: {mode: strict}\ninbound: {app: \"127.0.0.1:9\"}\n",
        "",
    )
    .spawn();
    let (status, body) = eventually(Duration::from_secs(10), "an answer on /ready", || async {
        let r = strict.admin_get("/ready").await;
        (r.0 != 0).then_some(r)
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no workload identity") && body.contains("--bootstrap-token-file"),
        "{body}"
    );

    let dead = free_port();
    let proxy = ProxyBuilder::file(
        &format!("service: web\ninbound: {{app: \"127.0.0.1:{dead}\"}}\n"),
        "",
    )
    .spawn()
    .ready()
    .await;
    let body = eventually(
        Duration::from_secs(30),
        "the app's absence on /ready",
        || async {
            let (status, body) = proxy.admin_get("/ready").await;
            (status == 200 && body.contains("does not answer")).then_some(body)
        },
    )
    .await;
    assert!(body.contains(&format!("127.0.0.1:{dead}")), "{body}");
    let log = eventually(
        Duration::from_secs(10),
        "the warning in the log",
        || async {
            let log = proxy.stderr();
            log.contains("does not answer").then_some(log)
        },
    )
    .await;
    assert!(log.contains("ready, but the app at"), "{log}");
}
