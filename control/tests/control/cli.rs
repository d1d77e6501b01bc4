//! The `outrigger` CLI against a real control plane.

use crate::harness::{cli, file, Control, SHOP};
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_and_delete_from_the_cli() {
    let c = Control::start();
    let shop = file(c.dir.path(), "shop.yaml", SHOP);
    let shop = shop.to_str().expect("path");

    let (code, out, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["apply", "-f", shop, "--dry-run"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Service/payment created (dry run)"), "{out}");
    assert_eq!(c.get("/v1/services").await.1, json!([]));

    let (code, out, _) = cli(&c, Some(crate::harness::READER), &["apply", "-f", shop]);
    assert_eq!(code, 1, "no token: {out}");

    let (code, out, err) = cli(&c, Some(crate::harness::TOKEN), &["apply", "-f", shop]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Service/payment created"), "{out}");
    assert!(out.contains("Policy/order-inbound created"), "{out}");

    let bad = file(
        c.dir.path(),
        "bad.yaml",
        "kind: Service\nmetadata: {name: fine}\nspec: {}\n---\nkind: Route\nmetadata: {name: r}\nspec:\n  service: ghost\n",
    );
    let (code, _, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["apply", "-f", bad.to_str().expect("path")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "document 1: spec.service (line 8, column 12): service \"ghost\" does not exist"
        ),
        "{err}"
    );
    assert_eq!(c.get("/v1/services/fine").await.0, 404);

    let (code, out, _) = cli(&c, Some(crate::harness::READER), &["get", "services"]);
    assert_eq!(code, 0);
    let header = out.lines().next().expect("header");
    assert!(
        header.starts_with("NAME") && header.contains("SPLIT"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("payment") && l.contains("v1=90,v2=10")),
        "{out}"
    );

    let (code, out, _) = cli(
        &c,
        Some(crate::harness::READER),
        &["get", "service", "payment", "-o", "json"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["kind"], "Service");
    for what in ["routes", "policies", "sidecars", "instances"] {
        let (code, out, err) = cli(&c, Some(crate::harness::READER), &["get", what]);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(!out.is_empty());
    }
    let (code, _, err) = cli(&c, Some(crate::harness::READER), &["get", "routes", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    let (code, out, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["delete", "route", "reads"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Route/reads deleted"));
    assert_eq!(c.get("/v1/routes/reads").await.0, 404);
    let (code, _, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["delete", "service", "payment"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("Route/charge"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_shifts_the_split_from_the_cli_and_the_api() {
    let c = Control::start();
    c.apply(SHOP).await;
    // A version with no instance is a phantom: refused, with what to do.
    let (code, _, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["canary", "payment", "v2=25"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("version v2 of payment has no registered instance") && err.contains("--force"),
        "{err}"
    );
    c.register("payment", "v1", 15106, 30).await;
    c.register("payment", "v2", 15107, 30).await;
    let (code, out, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["canary", "payment", "v2=25"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "payment: v1=75 v2=25");
    let (_, payment) = c.get("/v1/services/payment").await;
    assert_eq!(
        payment["spec"]["split"],
        json!([{"version": "v1", "weight": 75}, {"version": "v2", "weight": 25}])
    );

    let (status, body) = c
        .call(
            Method::PATCH,
            "/v1/services/payment/split",
            Some(r#"{"weights":{"v3":10}}"#),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = c
        .call(
            Method::PATCH,
            "/v1/services/payment/split?force=true",
            Some(r#"{"weights":{"v3":10}}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("v3") && w.contains("registered: v1, v2")),
        "{body}"
    );
    assert_eq!(
        body["split"],
        json!([{"version": "v1", "weight": 68}, {"version": "v2", "weight": 22}, {"version": "v3", "weight": 10}])
    );

    // user has no split: the weights must make 100, and the error names the live versions
    // left without one.
    c.register("user", "v1", 15101, 30).await;
    let (code, _, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["canary", "user", "v2=25"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("v1"), "{err}");
    let (code, out, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["canary", "user", "v1=75", "v2=25", "--force"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: version v2 of user"), "{err}");
    assert_eq!(out.trim(), "user: v1=75 v2=25");

    let (status, _) = c
        .call(
            Method::PATCH,
            "/v1/services/nope/split",
            Some(r#"{"weights":{"v2":10}}"#),
        )
        .await;
    assert_eq!(status, 404);
    let (code, _, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["canary", "payment", "v2"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("VERSION=WEIGHT"), "{err}");
}

/// Issue 16 point 3: `outrigger check` says, check by check, what is wrong and what to do,
/// and exits 1 until the mesh is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_is_wrong_until_the_mesh_is_healthy() {
    let c = Control::start();
    let (status, body) = c
        .apply(
            "kind: Service\nmetadata: {name: web}\nspec: {calls: [api]}\n---\n\
             kind: Service\nmetadata: {name: api}\nspec: {}\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let check = || cli(&c, Some(crate::harness::READER), &["check"]);

    let (code, out, _) = check();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("√ the control plane answers and its certificate is trusted"),
        "{out}"
    );
    assert!(out.contains("√ the CA's signing root is valid"), "{out}");
    assert!(out.contains("√ this clock agrees"), "{out}");
    assert!(
        out.contains("× every service that others call has endpoints")
            && out.contains("api has no registered instance; called by web")
            && out.contains("hint: start an instance of it"),
        "{out}"
    );

    c.register("api", "v1", 15111, 30).await;
    let (code, _, err) = cli(
        &c,
        Some(crate::harness::TOKEN),
        &["canary", "api", "v1=90", "v2=10", "--force"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = check();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("√ every service that others call has endpoints"),
        "{out}"
    );
    assert!(
        out.contains("api: v2 has weight 10 and no instance"),
        "{out}"
    );

    c.register("api", "v2", 15112, 30).await;
    let (code, out, _) = check();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Status check results are √"), "{out}");

    // Another CA's anchors: the first check fails, says how to fix it, and stops there.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let pem = crate::harness::file(dir.path(), "other.pem", &other.cert.pem());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .arg("check")
        .env("OUTRIGGER_CONTROL_PLANE", format!("https://{}", c.addr))
        .env("OUTRIGGER_TRUST_ANCHORS", &pem)
        .env("OUTRIGGER_TOKEN", crate::harness::READER)
        .output()
        .expect("run outrigger check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("× the control plane answers"), "{text}");
    assert!(text.contains("hint: give --trust-anchors"), "{text}");
}

/// Issue 16 point 4: `outrigger explain A B` shows what a call goes through and why it
/// cannot succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_path_of_a_call_and_why_it_fails() {
    let c = Control::start();
    let (status, body) = c
        .apply(
            "kind: Service\nmetadata: {name: web}\nspec: {calls: [api]}\n---\n\
             kind: Service\nmetadata: {name: intruder}\nspec: {calls: [api]}\n---\n\
             kind: Service\nmetadata: {name: api}\nspec: {}\n---\n\
             kind: Policy\nmetadata: {name: api-callers}\nspec: {service: api, allow: [web]}\n---\n\
             kind: Route\nmetadata: {name: writes}\nspec:\n  service: api\n  priority: 5\n  \
             match: {methods: [POST]}\n  timeout: 2s\n  retries: {attempts: 3, on: [connect-failure]}\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let explain = |a: &str, b: &str| cli(&c, Some(crate::harness::READER), &["explain", a, b]);

    let (code, out, _) = explain("web", "api");
    assert_eq!(code, 1, "no endpoint yet: {out}");
    assert!(out.contains("× none registered"), "{out}");
    c.register("api", "v1", 15121, 30).await;
    let (code, out, err) = explain("web", "api");
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "calls:     web calls api √",
        "policy api-callers allows [web]: web admitted √",
        "1. writes (priority 5): match {\"methods\":[\"POST\"]}; timeout 2s; up to 3 attempts on [\"connect-failure\"]",
        "2. default: everything; timeout 15s",
        "v1 127.0.0.1:15121",
        "verdict: the call can succeed",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    let (code, out, _) = explain("intruder", "api");
    assert_eq!(code, 1);
    assert!(
        out.contains("× policy api-callers allows only [web]")
            && out.contains("verdict: cannot succeed: add intruder to policy api-callers's allow"),
        "{out}"
    );
    let (code, out, _) = explain("api", "web");
    assert_eq!(code, 1);
    assert!(out.contains("× web is not in api's calls"), "{out}");
    let (code, out, _) = explain("web", "nobody");
    assert_eq!(code, 1);
    assert!(out.contains("nobody is not a service of the mesh"), "{out}");
}
