//! The REST API: apply, dry run, reads, deletes, validation errors, auth and bad input.

use crate::harness::{call, Control, READER, SHOP, TOKEN};
use http::Method;
use outrigger_config::mesh::{parse_resources, Kind};
use serde_json::{json, Value};
use std::time::Duration;

/// How many resources (of `kind`, or all) the example mesh has.
fn shop_count(kind: Option<Kind>) -> usize {
    parse_resources(SHOP)
        .expect("the example parses")
        .iter()
        .filter(|r| kind.is_none_or(|k| r.kind() == k))
        .count()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|r| r["metadata"]["name"].as_str().expect("name"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dry_run_get_list_and_delete() {
    let c = Control::start();
    let (status, body) = c
        .call(Method::POST, "/v1/apply?dry_run=true", Some(SHOP))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(
        body["applied"].as_array().map(Vec::len),
        Some(shop_count(None))
    );
    assert_eq!(
        c.get("/v1/services").await.1,
        json!([]),
        "a dry run stores nothing"
    );

    let (status, body) = c.apply(SHOP).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], false);
    assert_eq!(
        body["applied"][0],
        json!({"kind": "Service", "name": "storefront", "action": "created"})
    );
    let first = body["revision"].as_u64().expect("revision");

    // Applying the same again changes nothing and keeps the revision.
    let (_, again) = c.apply(SHOP).await;
    assert!(again["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .all(|a| a["action"] == "unchanged"));
    assert_eq!(again["revision"].as_u64(), Some(first));

    // One changed document is an update under a new revision.
    let (status, body) = c
        .apply("kind: Route\nmetadata: {name: reads}\nspec: {service: catalog, timeout: 1s}\n")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"][0]["action"], "updated");
    assert!(body["revision"].as_u64() > Some(first));

    let (_, services) = c.get("/v1/services").await;
    assert_eq!(
        names(&services),
        [
            "catalog",
            "inventory",
            "order",
            "payment",
            "storefront",
            "user"
        ]
    );
    assert_eq!(
        names(&c.get("/v1/routes").await.1),
        ["charge", "charge-canary-testers", "reads", "reserve"]
    );
    let mut policies: Vec<String> = parse_resources(SHOP)
        .expect("the example parses")
        .iter()
        .filter(|r| r.kind() == Kind::Policy)
        .map(|r| r.name().to_string())
        .collect();
    policies.sort();
    assert!(policies.iter().any(|p| p == "payment-callers"));
    assert_eq!(names(&c.get("/v1/policies").await.1), policies);
    let (status, payment) = c.get("/v1/services/payment").await;
    assert_eq!(status, 200);
    assert_eq!(payment["kind"], "Service");
    assert_eq!(payment["metadata"], json!({"name": "payment"}));
    assert_eq!(payment["spec"]["sticky_header"], "x-user-id");
    assert_eq!(
        payment["spec"]["split"][1],
        json!({"version": "v2", "weight": 10})
    );
    let (_, reads) = c.get("/v1/routes/reads").await;
    assert_eq!(reads["spec"]["timeout"], "1s");
    assert_eq!(c.get("/v1/policies/order-inbound").await.0, 200);
    for missing in ["/v1/services/nope", "/v1/routes/nope", "/v1/policies/nope"] {
        let (status, body) = c.get(missing).await;
        assert_eq!(status, 404, "{missing}");
        assert_eq!(body["reason"], "not-found");
    }

    // A service others refer to cannot be deleted; its referrers are named.
    let (status, body) = c.call(Method::DELETE, "/v1/services/payment", None).await;
    assert_eq!(status, 409, "{body}");
    let reason = body["message"].as_str().expect("reason");
    assert!(
        reason.contains("Service/order (calls)") && reason.contains("Route/charge"),
        "{reason}"
    );

    let (status, body) = c.call(Method::DELETE, "/v1/routes/reads", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], json!({"kind": "Route", "name": "reads"}));
    assert_eq!(c.get("/v1/routes/reads").await.0, 404);
    assert_eq!(
        c.call(Method::DELETE, "/v1/routes/reads", None).await.0,
        404
    );
    assert_eq!(
        c.call(Method::DELETE, "/v1/policies/order-inbound", None)
            .await
            .0,
        200
    );
    assert_eq!(
        c.call(Method::DELETE, "/v1/services/storefront", None)
            .await
            .0,
        200
    );
    assert_eq!(
        c.get("/v1/services").await.1.as_array().map(Vec::len),
        Some(5)
    );

    // A JSON array of resources is an apply too.
    let array = json!([
        {"kind": "Service", "metadata": {"name": "search"}, "spec": {"calls": ["catalog"]}},
        {"kind": "Policy", "metadata": {"name": "search-inbound"},
         "spec": {"service": "search", "inbound": {"timeout": "2s"}}}
    ]);
    let (status, body) = c.apply(&array.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"][1]["action"], "created");
    assert_eq!(c.get("/v1/policies/search-inbound").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_applies_name_document_path_line_and_store_nothing() {
    let c = Control::start();
    // Document 0 is fine, document 1 has a bad name and a bad protocol.
    let text = "kind: Service\nmetadata: {name: fine}\nspec: {}\n---\nkind: Service\nmetadata:\n  name: Bad_Name\nspec:\n  protocol: http1\n  hosts: [\"a:80\"]\n";
    let (status, body) = c.apply(text).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reason"], "invalid");
    let details = body["details"].as_array().expect("details");
    assert_eq!(details.len(), 2, "{body}");
    assert_eq!(
        details[0],
        json!({"document": 1, "path": "metadata.name", "line": 7, "column": 9,
               "reason": details[0]["reason"]})
    );
    assert!(details[0]["reason"]
        .as_str()
        .expect("reason")
        .contains("not a valid name"));
    assert_eq!(details[1]["path"], "spec.hosts[0]");
    assert_eq!(details[1]["line"], 10);
    assert_eq!(
        c.get("/v1/services").await.1,
        json!([]),
        "nothing of it stored"
    );

    // Cross-resource checks: references and one Policy per service.
    let text = "kind: Service\nmetadata: {name: a}\nspec:\n  calls: [ghost]\n---\nkind: Route\nmetadata: {name: r}\nspec:\n  service: nobody\n---\nkind: Policy\nmetadata: {name: p1}\nspec: {service: a}\n---\nkind: Policy\nmetadata: {name: p2}\nspec: {service: a}\n";
    let (status, body) = c.apply(text).await;
    assert_eq!(status, 400, "{body}");
    let got: Vec<_> = body["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| (d["document"].clone(), d["path"].clone(), d["line"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!(0), json!("spec.calls[0]"), json!(4)),
            (json!(1), json!("spec.service"), json!(9)),
            (json!(2), json!("spec.service"), json!(13)),
            (json!(3), json!("spec.service"), json!(17)),
        ]
    );
    assert_eq!(c.get("/v1/services").await.1, json!([]));
    assert_eq!(c.get("/v1/policies").await.1, json!([]));

    let (_, metrics) = c.get("/metrics").await;
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains("outrigger_control_applies_rejected_total 2"),
        "{metrics}"
    );
}

/// Every route against every kind of caller: nobody and a wrong token get 401; a reader may
/// only GET; a sidecar's workload certificate may do nothing of an operator's (apply, delete,
/// split, mint tokens, rotate or drop roots, read the mesh) — each a 403 that says why; only
/// health and readiness are open. Nothing a refused caller sent was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_does_only_what_its_role_allows() {
    let c = Control::start();
    let sidecar = c.workload("order").await;
    let admin_writes = [
        (Method::POST, "/v1/apply", SHOP.to_string()),
        (Method::DELETE, "/v1/services/payment", String::new()),
        (
            Method::PATCH,
            "/v1/services/payment/split",
            r#"{"weights":{"v2":50}}"#.into(),
        ),
        (Method::DELETE, "/v1/routes/r", String::new()),
        (Method::DELETE, "/v1/policies/p", String::new()),
        (
            Method::POST,
            "/v1/identity/tokens",
            r#"{"service":"payment"}"#.into(),
        ),
        (
            Method::DELETE,
            "/v1/identity/tokens/0123456789abcdef",
            String::new(),
        ),
        (Method::POST, "/v1/ca/roots", String::new()),
        (
            Method::DELETE,
            "/v1/ca/roots/0123456789abcdef",
            String::new(),
        ),
    ];
    let workload_writes = [
        (
            Method::POST,
            "/v1/registry/instances",
            r#"{"service":"a","address":"127.0.0.1","ports":{"http":1}}"#.to_string(),
        ),
        (
            Method::PUT,
            "/v1/registry/instances/x/heartbeat",
            String::new(),
        ),
        (Method::DELETE, "/v1/registry/instances/x", String::new()),
        (
            Method::POST,
            "/v1/sidecars/x/ack",
            r#"{"version":1}"#.into(),
        ),
    ];
    let reads = [
        "/v1/services",
        "/v1/services/payment",
        "/v1/routes",
        "/v1/policies",
        "/v1/registry/instances",
        "/v1/sidecars",
        "/v1/identity/tokens",
        "/v1/ca/roots",
        "/v1/ca/status",
        "/metrics",
    ];
    for (method, path, body) in admin_writes.iter().chain(&workload_writes) {
        for token in [None, Some("wrong"), Some("")] {
            let (status, reply) = call(&c, method.clone(), path, Some(body), token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {reply}");
            assert_eq!(reply["reason"], "unauthorized");
        }
        let (status, reply) = call(&c, method.clone(), path, Some(body), Some(READER)).await;
        assert_eq!(status, 403, "{method} {path} as a reader: {reply}");
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|r| r.contains("reader")),
            "{reply}"
        );
    }
    // The attack: a compromised pod's certificate tries the operator's powers.
    for (method, path, body) in &admin_writes {
        let (status, reply) = c.call_as(&sidecar, method.clone(), path, Some(body)).await;
        assert_eq!(
            status, 403,
            "{method} {path} with a workload certificate: {reply}"
        );
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|r| r.contains("\"order\"") && r.contains("admin")),
            "{reply}"
        );
    }
    for path in reads {
        assert_eq!(
            call(&c, Method::GET, path, None, None).await.0,
            401,
            "{path} as nobody"
        );
        let status = c.get(path).await.0;
        assert!(
            status == 200 || status == 404,
            "{path} as a reader: {status}"
        );
        let (status, reply) = c.call_as(&sidecar, Method::GET, path, None).await;
        assert_eq!(status, 403, "{path} with a workload certificate: {reply}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&c, Method::GET, path, None, None).await.0,
            200,
            "{path}"
        );
    }
    // The one error format, 405s included: reason, message, hint, request id.
    let (status, body) = call(&c, Method::PUT, "/v1/services", None, Some(TOKEN)).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["reason"], "method-not-allowed", "{body}");
    assert!(
        body["message"].is_string() && body["hint"].is_string(),
        "{body}"
    );
    assert!(
        body["request_id"].as_str().is_some_and(|id| id.len() == 32),
        "{body}"
    );
    let (status, body) = call(&c, Method::GET, "/v1/services/nope", None, Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["reason"], "not-found", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("nope")),
        "{body}"
    );
    assert!(body["request_id"].is_string(), "{body}");
    // The API's own description, served to anyone: the document the route table is held to.
    let (status, doc) = call(&c, Method::GET, "/v1/openapi.yaml", None, None).await;
    assert_eq!(status, 200);
    let doc = doc.as_str().unwrap_or_default();
    assert!(doc.starts_with("openapi: 3"), "{doc}");
    assert!(doc.contains("/v1/services/{name}/split:"), "{doc}");
    assert_eq!(
        c.get("/v1/services").await.1,
        json!([]),
        "nothing was applied"
    );
    let (_, roots) = c.get("/v1/ca/roots").await;
    assert_eq!(roots.as_array().map(Vec::len), Some(1), "no root was added");
    let (status, _) = c.apply(SHOP).await;
    assert_eq!(status, 200);
    // The tokens never show up in the logs.
    let logs = c.logs.lock().expect("logs").join("\n");
    assert!(!logs.contains(TOKEN) && !logs.contains(READER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_yaml_or_json_is_a_400_with_the_reason_never_a_500() {
    let c = Control::start();
    let deep = "[".repeat(5000);
    let bad_applies = [
        "kind: Service\nmetadata: {name: a\n",
        "{\"kind\": \"Service\",",
        "[1, 2",
        "kind: Nope\nmetadata: {name: a}\nspec: {}\n",
        "just a string",
        "- 1\n- 2\n",
        "kind: Service\nmetadata: {name: a}\nspec: {}\n---\n: : [\n",
        "\u{0}\u{1}",
        deep.as_str(),
        "kind: Service\nmetadata: {name: a}\nspec: {}\nextra: 1\n",
        "{\"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}, \"spec\": {\"calls\": 5}}",
    ];
    for body in bad_applies {
        let (status, reply) = c.apply(body).await;
        assert_eq!(status, 400, "{body:?}: {reply}");
        let reason = reply["details"][0]["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{body:?}: {reply}");
    }
    let (status, _) = c.apply(SHOP).await;
    assert_eq!(status, 200);
    let bad_json = [
        (Method::POST, "/v1/registry/instances", "{"),
        (Method::POST, "/v1/registry/instances", r#"{"service":"a"}"#),
        (
            Method::POST,
            "/v1/registry/instances",
            r#"{"service":"a","address":"nope","ports":{"http":1}}"#,
        ),
        (
            Method::POST,
            "/v1/registry/instances",
            r#"{"service":"a","address":"127.0.0.1","ports":{}}"#,
        ),
        (
            Method::POST,
            "/v1/registry/instances",
            r#"{"service":"a","address":"127.0.0.1","ports":{"http":70000}}"#,
        ),
        (
            Method::POST,
            "/v1/registry/instances",
            r#"{"service":"a","address":"127.0.0.1","ports":{"http":1},"ttl_secs":0}"#,
        ),
        (Method::PATCH, "/v1/services/payment/split", "not json"),
        (
            Method::PATCH,
            "/v1/services/payment/split",
            r#"{"weights":{"v2":-1}}"#,
        ),
        (
            Method::PATCH,
            "/v1/services/payment/split",
            r#"{"weights":{"v2":101}}"#,
        ),
        (
            Method::PATCH,
            "/v1/services/payment/split",
            r#"{"weights":{}}"#,
        ),
        (Method::POST, "/v1/sidecars/x/ack", r#"{"version":"one"}"#),
        (Method::POST, "/v1/apply?dry_run=maybe", SHOP),
    ];
    for (method, path, body) in bad_json {
        let (status, reply) = c.call(method.clone(), path, Some(body)).await;
        assert_eq!(status, 400, "{method} {path} {body}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|r| !r.is_empty()),
            "{reply}"
        );
    }
    for path in [
        "/v1/stream",
        "/v1/stream?service=order",
        "/v1/stream?service=Bad!&sidecar=x",
    ] {
        assert_eq!(c.call(Method::GET, path, None).await.0, 400, "{path}");
    }
    let (_, metrics) = c.get("/metrics").await;
    assert!(!metrics.as_str().expect("text").contains("status=\"500\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let c = Control::start();
    assert_eq!(c.get("/healthz").await.0, 200);
    assert_eq!(c.get("/readyz").await.0, 200);
    c.apply(SHOP).await;
    c.register("payment", "v1", 15106, 30).await;
    let (status, metrics) = c.get("/metrics").await;
    assert_eq!(status, 200);
    let text = metrics.as_str().expect("text");
    let policies = format!(
        "outrigger_control_resources{{kind=\"Policy\"}} {}",
        shop_count(Some(Kind::Policy))
    );
    for want in [
        "outrigger_control_resources{kind=\"Service\"} 6",
        "outrigger_control_resources{kind=\"Route\"} 4",
        policies.as_str(),
        "outrigger_control_registry_instances{service=\"payment\"} 1",
        "outrigger_control_sidecars_connected 0",
        "outrigger_control_snapshots_pushed_total",
        "outrigger_control_acks_total",
        "outrigger_control_nacks_total",
        "outrigger_control_applies_rejected_total",
        "outrigger_control_api_requests_total{route=\"/v1/apply\",status=\"200\"} 1",
        "outrigger_control_api_requests_total{route=\"/v1/registry/instances\",status=\"201\"} 1",
    ] {
        assert!(text.contains(want), "missing {want}:\n{text}");
    }
}

#[test]
fn the_binary_refuses_to_start_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger-control"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("OUTRIGGER_TOKEN")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token-file") && stderr.contains("OUTRIGGER_TOKEN"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_even_with_a_stream_open() {
    let mut c = Control::start();
    c.apply(SHOP).await;
    let mut stream = c.stream("order", "order-1").await;
    stream.snapshot(Duration::from_secs(10)).await;
    c.sigterm();
    let status = c.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The stream ended rather than hanging.
    assert!(stream.line(Duration::from_secs(5)).await.is_none());
}

/// Durations of centuries are refused where they are written; a per-try timeout longer than
/// the whole request's is applied with a warning placed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_durations_are_refused_and_odd_ones_warned() {
    let c = Control::start();
    let base = "kind: Service\nmetadata: {name: pay}\nspec: {}\n---\nkind: Route\nmetadata: {name: r}\nspec:\n  service: pay\n";
    let (status, body) = c.apply(&format!("{base}  timeout: 300years\n")).await;
    assert_eq!(status, 400, "{body}");
    let d = &body["details"][0];
    assert_eq!(
        (d["document"].clone(), d["path"].clone(), d["line"].clone()),
        (json!(1), json!("spec.timeout"), json!(9)),
        "{body}"
    );
    assert_eq!(c.get("/v1/routes").await.1, json!([]));

    let (status, body) = c
        .apply(&format!("{base}  timeout: 1s\n  per_try_timeout: 2s\n"))
        .await;
    assert_eq!(status, 200, "{body}");
    let w = &body["warnings"][0];
    assert_eq!(
        (w["document"].clone(), w["path"].clone(), w["line"].clone()),
        (json!(1), json!("spec.per_try_timeout"), json!(10)),
        "{body}"
    );
    assert!(
        w["reason"].as_str().is_some_and(|r| r.contains("timeout")),
        "{body}"
    );
    let (_, body) = c.apply(SHOP).await;
    assert_eq!(
        body["warnings"],
        json!([]),
        "the shop's routes are sensible"
    );
}
