//! Metrics follow the telemetry contract with exact counts and bounded labels; the access log
//! has one JSON line per request with the correlation id, which is generated when absent and
//! forwarded upstream.

use outrigger_tests::client::{self, send};
use outrigger_tests::eventually;
use outrigger_tests::proxy::{metric_value, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::time::Duration;

async fn call(c: &client::TestClient, addr: std::net::SocketAddr, host: &str, path: &str) -> u16 {
    let req = client::request("GET", &format!("http://{addr}{path}"))
        .header("host", host)
        .body(client::empty())
        .expect("request");
    send(c, req).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_exact_counts_and_labels() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let snapshot = format!(
        "service: order\n\
         inbound:\n  app: {app}\n  version: v7\n\
         destinations:\n  - name: payment\n    load_balancer: round-robin\n    endpoints:\n      - {{address: {v1}, version: v1}}\n      - {{address: {v2}, version: v2}}\n    routes:\n      - name: status\n        match: {{path_prefix: /status}}\n",
        app = v1.addr,
        v1 = v1.addr,
        v2 = v2.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let (out, inb) = (proxy.outbound(), proxy.inbound());
    let c = client::h1();
    for _ in 0..6 {
        assert_eq!(call(&c, out, "payment", "/").await, 200);
    }
    for _ in 0..4 {
        assert_eq!(call(&c, out, "payment:8080", "/status/503").await, 503);
    }
    for _ in 0..3 {
        assert_eq!(call(&c, out, "nowhere", "/").await, 404);
    }
    for _ in 0..2 {
        assert_eq!(call(&c, inb, "order", "/").await, 200);
    }

    let text = eventually(
        Duration::from_secs(5),
        "all 15 requests counted",
        || async {
            let t = proxy.metrics().await;
            (metric_value(&t, "outrigger_requests_total", &[]) == Some(15.0)).then_some(t)
        },
    )
    .await;
    let count = |labels: &[(&str, &str)]| metric_value(&text, "outrigger_requests_total", labels);
    let base = [
        ("service", "order"),
        ("direction", "outbound"),
        ("dst_service", "payment"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l = base.to_vec();
        l.extend_from_slice(extra);
        count(&l)
    };
    assert_eq!(
        with(&[
            ("dst_version", "v1"),
            ("route", "default"),
            ("status_code", "200")
        ]),
        Some(3.0)
    );
    assert_eq!(
        with(&[
            ("dst_version", "v2"),
            ("route", "default"),
            ("status_code", "200")
        ]),
        Some(3.0)
    );
    assert_eq!(
        with(&[
            ("dst_version", "v1"),
            ("route", "status"),
            ("status_code", "503")
        ]),
        Some(2.0)
    );
    assert_eq!(
        with(&[
            ("dst_version", "v2"),
            ("route", "status"),
            ("status_code", "503")
        ]),
        Some(2.0)
    );
    assert_eq!(
        count(&[
            ("direction", "outbound"),
            ("dst_service", "unknown"),
            ("status_code", "404")
        ]),
        Some(3.0)
    );
    assert_eq!(
        count(&[
            ("direction", "inbound"),
            ("service", "order"),
            ("dst_service", "order"),
            ("dst_version", "v7"),
            ("route", "default"),
            ("status_code", "200")
        ]),
        Some(2.0)
    );
    // The latency histogram counts the same requests, in seconds.
    assert_eq!(
        metric_value(
            &text,
            "outrigger_request_duration_seconds_count",
            &[
                ("dst_version", "v1"),
                ("route", "status"),
                ("status_code", "503")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&text, "outrigger_request_duration_seconds_count", &[]),
        Some(15.0)
    );
    assert!(text.contains("outrigger_request_duration_seconds_bucket{direction=\"outbound\",dst_service=\"payment\",dst_version=\"v1\",route=\"default\",service=\"order\",status_code=\"200\",le=\"0.005\"}"));
    assert_eq!(
        metric_value(
            &text,
            "outrigger_proxy_errors_total",
            &[("reason", "unknown-authority")]
        ),
        Some(3.0)
    );
    // Labels are bounded: no paths, hosts or ports from requests.
    for leaked in ["/status", "nowhere", "8080"] {
        assert!(
            !text.contains(leaked),
            "request data {leaked:?} leaked into labels"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_with_correlation_id() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let out = proxy.outbound();
    let c = client::h1();

    let req = client::request("POST", &format!("http://{out}/echo?q=1"))
        .header("host", "catalog:80")
        .header("x-request-id", "req-given-1")
        .body(client::full("hello"))
        .expect("request");
    let res = send(&c, req).await;
    assert_eq!(res.status(), 200);
    let first_len = res.body().len() as u64;
    let echo: serde_json::Value = serde_json::from_slice(res.body()).expect("echo json");
    assert_eq!(
        echo["headers"]["x-request-id"], "req-given-1",
        "given id must be forwarded"
    );

    let res = send(
        &c,
        client::request("GET", &format!("http://{out}/echo"))
            .body(client::empty())
            .expect("req"),
    )
    .await;
    let echo: serde_json::Value = serde_json::from_slice(res.body()).expect("echo json");
    let generated = echo["headers"]["x-request-id"]
        .as_str()
        .expect("generated id")
        .to_string();
    assert_eq!(generated.len(), 32);
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));

    let lines = eventually(Duration::from_secs(5), "two access log lines", || async {
        let lines: Vec<serde_json::Value> = proxy
            .stdout()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
            .collect();
        (lines.len() == 2).then_some(lines)
    })
    .await;
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-given-1");
    assert_eq!(first["service"], "outrigger");
    assert_eq!(first["direction"], "outbound");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["authority"], "catalog:80");
    assert_eq!(first["path"], "/echo?q=1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], up.addr.to_string());
    assert_eq!(first["bytes_received"], 5);
    assert_eq!(first["bytes_sent"].as_u64(), Some(first_len));
    assert!(first["duration_ms"].as_f64().expect("duration") > 0.0);
    assert!(first["timestamp"]
        .as_str()
        .expect("timestamp")
        .ends_with('Z'));
    assert_eq!(lines[1]["request_id"], generated.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_can_be_turned_off() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr)
        .arg("--no-access-log")
        .spawn()
        .ready()
        .await;
    let c = client::h1();
    for _ in 0..3 {
        assert_eq!(call(&c, proxy.outbound(), "x", "/").await, 200);
    }
    eventually(Duration::from_secs(5), "requests counted", || async {
        (proxy.metric("outrigger_requests_total", &[]).await == Some(3.0)).then_some(())
    })
    .await;
    assert_eq!(proxy.stdout(), "");
}
