//! Responses the proxy makes itself carry `x-outrigger-error` and a JSON body with the right
//! status; garbage bytes on any listener never take the process down.

use outrigger_tests::client::{self, raw_exchange, send};
use outrigger_tests::free_port;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::{closing_server, Upstream};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

async fn call(
    proxy: &Proxy,
    host: &str,
    path: &str,
    extra: &[(&str, String)],
) -> http::Response<bytes::Bytes> {
    let mut req =
        client::request("GET", &format!("http://{}{path}", proxy.outbound())).header("host", host);
    for (k, v) in extra {
        req = req.header(*k, v.as_str());
    }
    send(&client::h1(), req.body(client::empty()).expect("request")).await
}

/// The one error format: status, `x-outrigger-error`, and `{reason, message, hint,
/// request_id}` with the request id also in `x-request-id`. Returns the message.
fn assert_proxy_error(res: &http::Response<bytes::Bytes>, status: u16, reason: &str) -> String {
    assert_eq!(res.status().as_u16(), status, "{:?}", res.body());
    assert_eq!(res.headers()["x-outrigger-error"], reason);
    assert_eq!(res.headers()["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(res.body()).expect("json body");
    assert_eq!(v["reason"], reason);
    let id = res.headers()["x-request-id"].to_str().expect("request id");
    assert_eq!(v["request_id"], id, "{v}");
    let message = v["message"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "{v}");
    message
}

async fn mesh(up: SocketAddr, reset: SocketAddr, proxy_extra: &str) -> Proxy {
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let snapshot = format!(
        "service: order\n\
         destinations:\n\
         \x20 - name: payment\n    endpoints: [{{address: {up}}}]\n    routes:\n      - {{name: slow, match: {{path_prefix: /delay}}, timeout: 300ms}}\n\
         \x20 - name: empty\n    endpoints: []\n\
         \x20 - name: dead\n    connect_timeout: 500ms\n    endpoints: [{{address: {dead}}}]\n\
         \x20 - name: resetting\n    endpoints: [{{address: {reset}}}]\n"
    );
    ProxyBuilder::file(&snapshot, proxy_extra)
        .spawn()
        .ready()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_has_its_status_and_reason() {
    let up = Upstream::start("a").await;
    let (reset, _task) = closing_server().await;
    let proxy = mesh(up.addr, reset, "max_header_bytes: 4096").await;

    assert_eq!(call(&proxy, "payment", "/", &[]).await.status(), 200);
    let res = call(&proxy, "unknown.example", "/", &[]).await;
    let message = assert_proxy_error(&res, 404, "unknown-authority");
    assert!(message.contains("\"unknown.example\""), "{message}");
    let v: serde_json::Value = serde_json::from_slice(res.body()).expect("json");
    assert!(
        v["hint"]
            .as_str()
            .is_some_and(|h| h.contains("order's calls")),
        "the likely cause, the caller's calls: {v}"
    );
    assert_proxy_error(&call(&proxy, "empty", "/", &[]).await, 503, "no-endpoints");
    let message = assert_proxy_error(
        &call(&proxy, "dead", "/", &[]).await,
        502,
        "connect-failure",
    );
    assert!(
        message.contains("dead's endpoint 127.0.0.1:"),
        "the endpoint is named: {message}"
    );
    assert_proxy_error(
        &call(&proxy, "resetting", "/", &[]).await,
        502,
        "upstream-reset",
    );

    let started = Instant::now();
    assert_proxy_error(
        &call(&proxy, "payment", "/delay/3000", &[]).await,
        504,
        "timeout",
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "timeout took {:?}",
        started.elapsed()
    );

    // The header limit is configurable: 4 KiB here.
    let ok = call(&proxy, "payment", "/", &[("x-big", "a".repeat(3000))]).await;
    assert_eq!(ok.status(), 200);
    let message = assert_proxy_error(
        &call(&proxy, "payment", "/", &[("x-big", "a".repeat(5000))]).await,
        431,
        "headers-too-large",
    );
    assert!(
        message.contains("max_header_bytes (4096 bytes)"),
        "{message}"
    );
    // More than 100 headers, under the byte limit: refused by the parser, and said so in the
    // one format rather than a bare 431.
    let many: Vec<(&str, String)> = (0..150).map(|_| ("x-n", "1".to_string())).collect();
    let message = assert_proxy_error(
        &call(&proxy, "payment", "/", &many).await,
        431,
        "headers-too-large",
    );
    assert!(message.contains("or 100 headers"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_header_limit_is_64_kib() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let ok = call(&proxy, "x", "/", &[("x-big", "a".repeat(60 * 1024))]).await;
    assert_eq!(ok.status(), 200);
    let res = call(&proxy, "x", "/", &[("x-big", "a".repeat(70 * 1024))]).await;
    assert_proxy_error(&res, 431, "headers-too-large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let up = Upstream::start("a").await;
    let (reset, _task) = closing_server().await;
    let proxy = mesh(up.addr, reset, "").await;
    // HTTP/1.1 requires Host.
    let raw = raw_exchange(
        proxy.outbound(),
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("io");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("x-outrigger-error: missing-authority"),
        "{text}"
    );
    // An unparseable request line and an invalid method: hyper refuses them before any
    // service sees them; the answer still says why, in the one format.
    for garbage in [
        &b"GET /\x01 nonsense\r\n\r\n"[..],
        b"G(T / HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        let raw = raw_exchange(proxy.outbound(), garbage, Duration::from_secs(5))
            .await
            .expect("io");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(
            text.contains("x-outrigger-error: malformed-request"),
            "{text}"
        );
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(v["reason"], "malformed-request", "{v}");
        assert!(v["request_id"].is_string(), "{v}");
    }
    assert_eq!(
        proxy
            .metric(
                "outrigger_proxy_errors_total",
                &[("direction", "outbound"), ("reason", "malformed-request")]
            )
            .await,
        Some(2.0)
    );
    // CONNECT tunnels are not a sidecar's job, and it says so rather than "malformed".
    let raw = raw_exchange(
        proxy.outbound(),
        b"CONNECT payment:443 HTTP/1.1\r\nhost: payment:443\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("io");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(
        text.contains("x-outrigger-error: method-not-supported"),
        "{text}"
    );
    assert!(text.contains("not a forward proxy"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_listener_never_crashes_the_process() {
    let up = Upstream::start("a").await;
    let (reset, _task) = closing_server().await;
    let mut proxy = mesh(up.addr, reset, "").await;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };
    let mut payloads: Vec<Vec<u8>> = (0..20).map(|i| noise(1 + i * 397)).collect();
    payloads.push(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00garbage-after-preface".to_vec());
    payloads.push(
        b"GET / HTTP/1.1\r\nhost: payment\r\ncontent-length: 99999999999999999999\r\n\r\n".to_vec(),
    );
    payloads.push(
        b"POST / HTTP/1.1\r\nhost: payment\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
    );
    payloads.push(b"GET / HTTP/1.1\r\nhost: payment\r\nbad header line\r\n\r\n".to_vec());
    payloads.push(vec![0u8; 100_000]);
    for target in [proxy.outbound(), proxy.inbound(), proxy.admin] {
        for p in &payloads {
            let _ = raw_exchange(target, p, Duration::from_millis(300)).await;
        }
    }
    assert!(
        proxy.child.try_wait().expect("wait").is_none(),
        "the proxy died: {}",
        proxy.stderr()
    );
    assert_eq!(proxy.admin_get("/live").await.0, 200);
    assert_eq!(call(&proxy, "payment", "/", &[]).await.status(), 200);
}
