//! The proxy's own logs: JSON lines with their fields at the top level, a filter that changes
//! at runtime on the admin port (loopback only), a correlation id that joins a request's log
//! lines with its access log line, and logging that never blocks requests — with stdout and
//! stderr stuck, requests still complete and the dropped lines are counted.

use outrigger_tests::client::{self, admin_request, send};
use outrigger_tests::proxy::{metric_value, Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use outrigger_tests::{eventually, free_port};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const FILTER_CHANGED: &str = "log filter changed on the admin port";

/// Every line of `text` as JSON; a line that is not JSON fails the test.
fn json_lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{what} line is not JSON ({e}): {l}"))
        })
        .collect()
}

async fn logging(admin: SocketAddr, method: &str, query: &str) -> (u16, Value) {
    let (status, body) = admin_request(admin, method, &format!("/logging{query}")).await;
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, v)
}

async fn level(proxy: &Proxy) -> Value {
    let (status, v) = logging(proxy.admin, "GET", "").await;
    assert_eq!(status, 200, "{v}");
    v["level"].clone()
}

/// One GET with a chosen `x-request-id`; returns the status.
async fn call(c: &client::TestClient, proxy: &Proxy, request_id: &str) -> u16 {
    let req = client::request("GET", &format!("http://{}/", proxy.outbound()))
        .header("x-request-id", request_id)
        .body(client::empty())
        .expect("request");
    send(c, req).await.status().as_u16()
}

/// Waits until stderr holds `n` filter-change lines and returns every line up to and including
/// the `n`th. The writer is one FIFO queue, so any line logged before that change (e.g. by a
/// request that already got its response) is among them.
async fn lines_through_change(proxy: &Proxy, n: usize) -> Vec<Value> {
    eventually(
        Duration::from_secs(10),
        &format!("filter change #{n} on stderr"),
        || async {
            let lines = json_lines(&proxy.stderr(), "stderr");
            let end = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l["message"] == FILTER_CHANGED)
                .nth(n - 1)?
                .0;
            Some(lines[..=end].to_vec())
        },
    )
    .await
}

fn debug_lines(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["level"] == "DEBUG").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_lines_are_json_with_fields_at_the_top_level() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let lines = eventually(
        Duration::from_secs(10),
        "the startup lines on stderr",
        || async {
            let lines = json_lines(&proxy.stderr(), "stderr");
            lines
                .iter()
                .any(|l| l["message"] == "listeners bound")
                .then_some(lines)
        },
    )
    .await;
    for l in &lines {
        assert!(
            l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{l}"
        );
        assert!(
            ["ERROR", "WARN", "INFO"].contains(&l["level"].as_str().unwrap_or_default()),
            "only info and above at the default level: {l}"
        );
        assert!(l["message"].as_str().is_some_and(|m| !m.is_empty()), "{l}");
        assert!(l.get("fields").is_none(), "fields are flattened: {l}");
    }
    // Structured fields are top-level keys, next to the message.
    let listening = lines
        .iter()
        .find(|l| l["message"] == "listening")
        .unwrap_or_else(|| panic!("no `listening` line in {lines:?}"));
    assert_eq!(listening["direction"], "outbound");
    assert_eq!(listening["addr"], proxy.outbound().to_string());
    assert_eq!(listening["target"], "outrigger_proxy::server");

    // The last lines before exit are written, not lost with the writer thread.
    let mut proxy = proxy;
    proxy.signal("TERM");
    assert_eq!(proxy.exit_code(Duration::from_secs(30)).await, Some(0));
    let lines = json_lines(&proxy.stderr(), "stderr");
    assert_eq!(
        lines.last().map(|l| &l["message"]),
        Some(&Value::from("drained; exiting")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_changes_at_runtime_and_joins_the_access_log_by_request_id() {
    // Nothing listens there: every attempt fails to connect, which the request path logs at
    // debug with the request id.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = ProxyBuilder::quick(dead).spawn().ready().await;
    let c = client::h1();
    assert_eq!(level(&proxy).await, "info");

    // At info, a failing request logs nothing at debug.
    assert!(call(&c, &proxy, "logs-at-info").await >= 500);
    let (status, v) = logging(proxy.admin, "PUT", "?level=debug").await;
    assert_eq!((status, &v["level"]), (200, &Value::from("debug")), "{v}");
    let lines = lines_through_change(&proxy, 1).await;
    assert_eq!(debug_lines(&lines), Vec::<&Value>::new());
    assert_eq!(level(&proxy).await, "debug");

    // At debug it does, and its line carries the request id of the access log line.
    let status = call(&c, &proxy, "logs-at-debug").await;
    assert!(status >= 500, "{status}");
    let failed = eventually(
        Duration::from_secs(10),
        "the debug line of the failed attempt",
        || async {
            json_lines(&proxy.stderr(), "stderr").into_iter().find(|l| {
                l["level"] == "DEBUG"
                    && l["message"] == "upstream attempt failed"
                    && l["request_id"] == "logs-at-debug"
            })
        },
    )
    .await;
    assert_eq!(failed["upstream"], dead.to_string(), "{failed}");
    let access = eventually(
        Duration::from_secs(10),
        "the access log line of the failed request",
        || async {
            json_lines(&proxy.stdout(), "access log")
                .into_iter()
                .find(|l| l["request_id"] == failed["request_id"])
        },
    )
    .await;
    assert_eq!(access["status"], status, "{access}");

    // Invalid filters are refused with the reason, and the filter in force stays.
    for (query, reason) in [
        ("?level=verbose", "`verbose` is not a level"),
        ("?level=outrigger_proxy%3Dloud", "invalid log filter"),
        ("?level=", "empty"),
        ("", "?level=FILTER"),
    ] {
        let (status, v) = logging(proxy.admin, "PUT", query).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{query}: {v}"
        );
        assert_eq!(v["level"], "debug", "{query}: {v}");
    }
    assert_eq!(level(&proxy).await, "debug");
    assert_eq!(logging(proxy.admin, "POST", "?level=info").await.0, 405);
    assert_eq!(level(&proxy).await, "debug");

    // A full directive string, URL-encoded; back to info for the proxy's own targets.
    let (status, v) = logging(proxy.admin, "PUT", "?level=outrigger_proxy%3Dinfo%2Cwarn").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(level(&proxy).await, "outrigger_proxy=info,warn");
    let before = lines_through_change(&proxy, 2).await.len();
    assert!(call(&c, &proxy, "logs-back-at-info").await >= 500);
    logging(proxy.admin, "PUT", "?level=outrigger_proxy%3Dinfo%2Cwarn").await;
    let lines = lines_through_change(&proxy, 3).await;
    assert_eq!(debug_lines(&lines[before..]), Vec::<&Value>::new());
}

/// This host's address on a non-loopback interface, if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks the source address of the route.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_filter_is_refused_from_outside_loopback() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this host has no non-loopback address to call the admin port from");
        return;
    };
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr)
        .admin_ip([0, 0, 0, 0].into())
        .spawn()
        .ready()
        .await;
    let outside = SocketAddr::new(ip, proxy.admin.port());
    let (status, v) = logging(outside, "PUT", "?level=debug").await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = logging(outside, "GET", "").await;
    assert_eq!((status, &v["level"]), (200, &Value::from("info")), "{v}");
    assert_eq!(level(&proxy).await, "info");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_stdout_and_stderr_never_block_requests_and_drops_are_counted() {
    let up = Upstream::start("a").await;
    let proxy = ProxyBuilder::quick(up.addr)
        .unread_output()
        .spawn()
        .ready()
        .await;
    // Trace: every request makes log lines (connection and pool events) on top of its access
    // log line, so both pipes fill within the first few hundred requests.
    let (status, v) = logging(proxy.admin, "PUT", "?level=trace").await;
    assert_eq!(status, 200, "{v}");

    // The access log queue holds 8192 entries past the full pipe, so drops there need ~9000
    // requests; rounds of concurrent requests until both counters move, every one a 200.
    const ROUND: usize = 250;
    const MAX_ROUNDS: usize = 80;
    let c = client::h1();
    let mut sent = 0;
    let (mut log_dropped, mut access_dropped) = (0.0, 0.0);
    for _ in 0..MAX_ROUNDS {
        let mut round = tokio::task::JoinSet::new();
        for i in 0..ROUND {
            let (c, url) = (c.clone(), format!("http://{}/", proxy.outbound()));
            round.spawn(async move {
                // Fresh connections now and then, so the accept path logs too.
                let req = client::request("GET", &url)
                    .header(
                        "connection",
                        if i % 10 == 0 { "close" } else { "keep-alive" },
                    )
                    .body(client::empty())
                    .expect("request");
                // `send` fails the test if a response takes more than 30 s.
                send(&c, req).await.status().as_u16()
            });
        }
        while let Some(status) = round.join_next().await {
            assert_eq!(status.expect("request task"), 200);
            sent += 1;
        }
        let text = proxy.metrics().await;
        log_dropped = metric_value(&text, "outrigger_log_lines_dropped_total", &[]).unwrap_or(0.0);
        access_dropped =
            metric_value(&text, "outrigger_access_log_dropped_total", &[]).unwrap_or(0.0);
        if log_dropped > 0.0 && access_dropped > 0.0 {
            break;
        }
    }
    assert!(
        log_dropped > 0.0 && access_dropped > 0.0,
        "after {sent} requests with both pipes stuck: {log_dropped} log lines and \
         {access_dropped} access log lines dropped"
    );
    // Still serving, and still logging into the (full) queue without waiting.
    let (status, v) = logging(proxy.admin, "PUT", "?level=debug").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(call(&c, &proxy, "after-the-drops").await, 200);

    // Nor does a stuck stderr hold up the exit.
    let mut proxy = proxy;
    proxy.signal("TERM");
    assert_eq!(proxy.exit_code(Duration::from_secs(30)).await, Some(0));
}
