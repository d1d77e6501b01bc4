//! Trace propagation and OTLP export through one real proxy, checked from the outside: the
//! upstream records the trace headers it receives, and the spans are read back from a real
//! OTLP/gRPC receiver built from the official OpenTelemetry protobuf definitions
//! (`tests/otlp/receiver.py`). W3C and B3 (single and multi) contexts are joined, with the
//! sampling decision that arrived; a new trace is sampled at the configured ratio; malformed
//! headers start a new trace and never fail a request; each retry attempt is its own span;
//! a down, failing or slow collector costs no request and no unbounded memory, and what it
//! costs in spans is counted.

use bytes::Bytes;
use http::HeaderValue;
use outrigger_tests::client::{self, send};
use outrigger_tests::otlp::{Receiver, Span, Traceparent};
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use outrigger_tests::{eventually, free_port};
use std::net::SocketAddr;
use std::time::Duration;

/// The W3C spec's example context.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A sidecar of `order` calling `payment` (round robin over `endpoints`, no outlier
/// detection, so the tests decide which endpoint fails) through `route`, with an inbound app
/// (the first endpoint), exporting to `otlp` with `tracing` settings such as `sampling: 1.0`.
async fn traced(otlp: &str, endpoints: &[SocketAddr], route: &str, tracing: &str) -> Proxy {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: {a}}}"))
        .collect();
    let snapshot = format!(
        "service: order\n\
         inbound: {{app: {app}}}\n\
         destinations:\n\
         \x20 - name: payment\n    load_balancer: round-robin\n    outlier_detection: {{consecutive_failures: 0}}\n    endpoints: [{eps}]\n    routes: [{route}]\n\
         \x20 - name: empty\n    endpoints: []\n",
        app = endpoints[0],
        eps = eps.join(", "),
    );
    let proxy_extra = format!("tracing: {{otlp_endpoint: \"{otlp}\", {tracing}}}");
    ProxyBuilder::file(&snapshot, &proxy_extra)
        .spawn()
        .ready()
        .await
}

/// The route most tests use: a named catch-all, so spans have an `http.route`.
const CHARGE: &str = "{name: charge}";

/// `GET path` to `addr` with `Host: host` and the given headers (values as raw bytes, so
/// tests can send what no well-behaved client would).
async fn call(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> http::Response<Bytes> {
    let mut req = client::request("GET", &format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, HeaderValue::from_bytes(v).expect("header value"));
    }
    send(&client::h1(), req.body(client::empty()).expect("request")).await
}

/// `GET /echo` through the outbound listener to `payment` with these headers; must be a 200.
/// Returns the headers the upstream received.
async fn echo(proxy: &Proxy, headers: &[(&str, &str)]) -> serde_json::Value {
    let raw: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    echo_raw(proxy, &raw).await
}

async fn echo_raw(proxy: &Proxy, headers: &[(&str, &[u8])]) -> serde_json::Value {
    let res = call(proxy.outbound(), "payment", "/echo", headers).await;
    assert_eq!(res.status(), 200, "{headers:?}: {:?}", res.body());
    let v: serde_json::Value = serde_json::from_slice(res.body()).expect("echo json");
    v["headers"].clone()
}

/// The `traceparent` the upstream received; it must always be there and valid.
fn upstream_traceparent(seen: &serde_json::Value) -> Traceparent {
    let raw = seen["traceparent"].as_str().unwrap_or("");
    Traceparent::parse(raw)
        .unwrap_or_else(|| panic!("upstream got no valid traceparent ({raw:?}): {seen}"))
}

fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    seen[name].as_str()
}

/// A counter of the proxy's `/metrics`; a missing series reads as `None`.
async fn counter(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    proxy.metric(name, labels).await
}

async fn exported(proxy: &Proxy) -> f64 {
    counter(proxy, "outrigger_spans_exported_total", &[])
        .await
        .unwrap_or_else(|| panic!("no outrigger_spans_exported_total"))
}

async fn dropped(proxy: &Proxy, reason: &str) -> f64 {
    counter(
        proxy,
        "outrigger_spans_dropped_total",
        &[("reason", reason)],
    )
    .await
    .unwrap_or(0.0)
}

/// Waits until the proxy has recorded `n` outbound requests in all. A request's span ends
/// with it, so after this every one of them has been handed to the exporter (or not).
async fn requests_done(proxy: &Proxy, n: usize) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} outbound requests recorded"),
        || async {
            let done = counter(
                proxy,
                "outrigger_requests_total",
                &[("direction", "outbound")],
            )
            .await
            .unwrap_or(0.0);
            (done == n as f64).then_some(())
        },
    )
    .await;
}

/// Waits until `outrigger_spans_exported_total` reaches `n`, then insists it is exactly `n`
/// and that the receiver holds exactly the spans of `traces`, in any order. Whatever an
/// unsampled request before the last of them would have exported was queued before it, so
/// it would be here by now: absence is evidence, with no sleep.
async fn exactly_exported(proxy: &Proxy, rx: &Receiver, traces: &[&str]) {
    let n = traces.len() as f64;
    eventually(
        Duration::from_secs(30),
        &format!("{n} spans exported"),
        || async { (exported(proxy).await >= n).then_some(()) },
    )
    .await;
    let spans = rx.spans();
    let mut got: Vec<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    let mut want = traces.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want, "spans at the receiver: {spans:#?}");
    assert_eq!(exported(proxy).await, n);
}

fn one(spans: Vec<Span>) -> Span {
    assert_eq!(spans.len(), 1, "expected one span: {spans:#?}");
    spans.into_iter().next().expect("one span")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_context_is_joined_and_the_attempt_exported_with_semconv_attributes() {
    let rx = Receiver::start().await;
    let up = Upstream::start("payment-1").await;
    let proxy = traced(&rx.endpoint(), &[up.addr], CHARGE, "sampling: 1.0").await;

    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let baggage = "userId=alice,serverNode=DF%2028,isProduction=false";
    let seen = echo(
        &proxy,
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", tracestate),
            ("baggage", baggage),
        ],
    )
    .await;
    let tp = upstream_traceparent(&seen);
    assert_eq!(tp.trace_id, TRACE, "{seen}");
    assert_ne!(
        tp.parent_id, PARENT,
        "the upstream must see the proxy's span as parent"
    );
    assert_eq!(tp.flags, "01");
    assert_eq!(header(&seen, "tracestate"), Some(tracestate));
    assert_eq!(header(&seen, "baggage"), Some(baggage));
    // No B3 arrived and injection is off: none is invented.
    assert_eq!(header(&seen, "x-b3-traceid"), None, "{seen}");
    assert_eq!(header(&seen, "b3"), None, "{seen}");

    let span = one(rx.wait_trace(TRACE, 1).await);
    assert_eq!(
        span.span_id, tp.parent_id,
        "the forwarded parent is the exported span"
    );
    assert_eq!(
        span.parent.as_deref(),
        Some(PARENT),
        "a child of the incoming context"
    );
    assert_eq!(span.kind, "SPAN_KIND_CLIENT");
    assert_eq!(span.name, "GET charge");
    assert_eq!(span.service, "order");
    assert!(
        span.resource["service.instance.id"].as_str().is_some(),
        "{:?}",
        span.resource
    );
    assert_eq!(span.str_attr("http.request.method"), Some("GET"));
    assert_eq!(span.str_attr("http.route"), Some("charge"));
    assert_eq!(span.int_attr("http.response.status_code"), Some(200));
    assert_eq!(span.str_attr("peer.service"), Some("payment"));
    assert_eq!(span.str_attr("url.path"), Some("/echo"));
    assert_eq!(span.str_attr("url.scheme"), Some("http"));
    assert_eq!(span.str_attr("server.address"), Some("payment"));
    assert_eq!(span.str_attr("network.protocol.version"), Some("1.1"));
    assert_eq!(span.str_attr("outrigger.direction"), Some("outbound"));
    assert_eq!(span.attempt(), 1);
    assert_eq!(
        span.attr("http.request.resend_count"),
        &serde_json::Value::Null
    );
    assert_eq!(span.str_attr("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(
        span.int_attr("network.peer.port"),
        Some(i64::from(up.addr.port()))
    );
    assert_eq!(span.str_attr("outrigger.destination.version"), Some("v1"));
    assert_eq!(span.attr("error.type"), &serde_json::Value::Null);
    assert_ne!(span.status, "STATUS_CODE_ERROR");
    assert_eq!(exported(&proxy).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_requests_get_a_server_span() {
    let rx = Receiver::start().await;
    let app = Upstream::start("order-app").await;
    let proxy = traced(&rx.endpoint(), &[app.addr], CHARGE, "sampling: 1.0").await;

    let res = call(
        proxy.inbound(),
        "order",
        "/echo",
        &[("traceparent", format!("00-{TRACE}-{PARENT}-01").as_bytes())],
    )
    .await;
    assert_eq!(res.status(), 200, "{:?}", res.body());
    let v: serde_json::Value = serde_json::from_slice(res.body()).expect("echo json");
    let tp = upstream_traceparent(&v["headers"]);
    assert_eq!(tp.trace_id, TRACE);

    let span = one(rx.wait_trace(TRACE, 1).await);
    assert_eq!(span.kind, "SPAN_KIND_SERVER");
    assert_eq!(
        span.span_id, tp.parent_id,
        "the app's parent is the server span"
    );
    assert_eq!(span.parent.as_deref(), Some(PARENT));
    assert_eq!(span.service, "order");
    assert_eq!(span.str_attr("outrigger.direction"), Some("inbound"));
    assert_eq!(span.int_attr("http.response.status_code"), Some(200));
    assert_eq!(span.attempt(), 1);
    assert!(span.name.starts_with("GET"), "{}", span.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_single_and_multi_are_joined_and_their_sampling_respected() {
    let rx = Receiver::start().await;
    let up = Upstream::start("payment-1").await;
    // Sampling 0: every span exported below is there because the request said "sampled".
    let proxy = traced(&rx.endpoint(), &[up.addr], CHARGE, "sampling: 0.0").await;

    // B3 single, 128-bit, sampled, with a parent span id.
    let t1 = "80f198ee56343ba864fe8b2a57d3eff7";
    let seen = echo(
        &proxy,
        &[("b3", &format!("{t1}-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"))],
    )
    .await;
    let tp = upstream_traceparent(&seen);
    assert_eq!((tp.trace_id.as_str(), tp.flags.as_str()), (t1, "01"));
    let span = one(rx.wait_trace(t1, 1).await);
    assert_eq!(span.parent.as_deref(), Some("e457b5a2e4d86bd1"));
    assert_eq!(span.span_id, tp.parent_id);
    // The B3 that arrived is rewritten to name the new span, never the stale one.
    let b3 = header(&seen, "b3").unwrap_or_else(|| panic!("b3 not forwarded: {seen}"));
    let parts: Vec<&str> = b3.split('-').collect();
    assert!(parts.len() >= 3, "{b3}");
    assert_eq!(
        (parts[0], parts[1], parts[2]),
        (t1, span.span_id.as_str(), "1")
    );
    if let Some(parent) = parts.get(3) {
        assert_eq!(*parent, "e457b5a2e4d86bd1", "{b3}");
    }

    // B3 single with a 64-bit trace id: left-padded to 128 bits.
    let seen = echo(&proxy, &[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")]).await;
    let t2 = "0000000000000000a3ce929d0e0e4736";
    let tp = upstream_traceparent(&seen);
    assert_eq!((tp.trace_id.as_str(), tp.flags.as_str()), (t2, "01"));
    let span = one(rx.wait_trace(t2, 1).await);
    assert_eq!(span.parent.as_deref(), Some("00f067aa0ba902b7"));

    // B3 single, not sampled: the decision travels on, and nothing is exported.
    let t3 = "0000000000000000a3ce929d0e0e4737";
    let seen = echo(&proxy, &[("b3", "a3ce929d0e0e4737-00f067aa0ba902b7-0")]).await;
    let tp = upstream_traceparent(&seen);
    assert_eq!((tp.trace_id.as_str(), tp.flags.as_str()), (t3, "00"));

    // B3 multi, sampled.
    let t4 = "463ac35c9f6413ad48485a3953bb6124";
    let seen = echo(
        &proxy,
        &[
            ("x-b3-traceid", t4),
            ("x-b3-spanid", "0020000000000001"),
            ("x-b3-parentspanid", "0010000000000001"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let tp = upstream_traceparent(&seen);
    assert_eq!((tp.trace_id.as_str(), tp.flags.as_str()), (t4, "01"));
    let span = one(rx.wait_trace(t4, 1).await);
    assert_eq!(span.parent.as_deref(), Some("0020000000000001"));
    assert_eq!(header(&seen, "x-b3-traceid"), Some(t4), "{seen}");
    assert_eq!(
        header(&seen, "x-b3-spanid"),
        Some(span.span_id.as_str()),
        "{seen}"
    );
    assert_eq!(header(&seen, "x-b3-sampled"), Some("1"), "{seen}");

    // B3 multi, 64-bit, with the debug flag (which implies sampled).
    let t5 = "000000000000000048485a3953bb6125";
    let seen = echo(
        &proxy,
        &[
            ("x-b3-traceid", "48485a3953bb6125"),
            ("x-b3-spanid", "0020000000000002"),
            ("x-b3-flags", "1"),
        ],
    )
    .await;
    let tp = upstream_traceparent(&seen);
    assert_eq!((tp.trace_id.as_str(), tp.flags.as_str()), (t5, "01"));
    one(rx.wait_trace(t5, 1).await);

    // B3 multi, not sampled.
    let t6 = "463ac35c9f6413ad48485a3953bb6126";
    let seen = echo(
        &proxy,
        &[
            ("x-b3-traceid", t6),
            ("x-b3-spanid", "0020000000000003"),
            ("x-b3-sampled", "0"),
        ],
    )
    .await;
    let tp = upstream_traceparent(&seen);
    assert_eq!((tp.trace_id.as_str(), tp.flags.as_str()), (t6, "00"));

    // traceparent wins over B3 when both arrive.
    requests_done(&proxy, 6).await;
    let seen = echo(
        &proxy,
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff8-e457b5a2e4d86bd1-1"),
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6127"),
            ("x-b3-spanid", "0020000000000004"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let tp = upstream_traceparent(&seen);
    assert_eq!(tp.trace_id, TRACE, "{seen}");
    let span = one(rx.wait_trace(TRACE, 1).await);
    assert_eq!(span.parent.as_deref(), Some(PARENT));

    // Exactly the sampled ones, and the unsampled ones (t3, t6) never.
    exactly_exported(&proxy, &rx, &[t1, t2, t4, t5, TRACE]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_injection_names_the_new_span() {
    let rx = Receiver::start().await;
    let up = Upstream::start("payment-1").await;
    let proxy = traced(
        &rx.endpoint(),
        &[up.addr],
        CHARGE,
        "sampling: 1.0, b3: true",
    )
    .await;

    // W3C in, B3 multi added.
    let seen = echo(
        &proxy,
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    )
    .await;
    let tp = upstream_traceparent(&seen);
    let span = one(rx.wait_trace(TRACE, 1).await);
    assert_eq!(tp.parent_id, span.span_id);
    assert_eq!(header(&seen, "x-b3-traceid"), Some(TRACE), "{seen}");
    assert_eq!(
        header(&seen, "x-b3-spanid"),
        Some(span.span_id.as_str()),
        "{seen}"
    );
    assert_eq!(header(&seen, "x-b3-sampled"), Some("1"), "{seen}");

    // Nothing in: the new trace is named in B3 as in W3C.
    let seen = echo(&proxy, &[]).await;
    let tp = upstream_traceparent(&seen);
    assert_eq!(
        header(&seen, "x-b3-traceid"),
        Some(tp.trace_id.as_str()),
        "{seen}"
    );
    assert_eq!(
        header(&seen, "x-b3-spanid"),
        Some(tp.parent_id.as_str()),
        "{seen}"
    );
    assert_eq!(header(&seen, "x-b3-sampled"), Some("1"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_context_a_new_trace_is_sampled_at_the_ratio() {
    let rx = Receiver::start().await;
    let up = Upstream::start("payment-1").await;

    // Ratio 1: a new root span, named in the traceparent the upstream gets.
    let all = traced(&rx.endpoint(), &[up.addr], CHARGE, "sampling: 1.0").await;
    let seen = echo(&all, &[]).await;
    let tp = upstream_traceparent(&seen);
    assert_eq!(tp.flags, "01");
    let span = one(rx.wait_trace(&tp.trace_id, 1).await);
    assert_eq!(span.parent, None, "a new trace's span is a root: {span:?}");
    assert_eq!(span.span_id, tp.parent_id);
    drop(all);

    // Ratio 0: unsampled flags travel on and nothing is exported; a request that arrives
    // sampled still is (the decision that arrived wins), and proves the first was not.
    let rx = Receiver::start().await;
    let none = traced(&rx.endpoint(), &[up.addr], CHARGE, "sampling: 0.0").await;
    let mut unsampled = Vec::new();
    for _ in 0..5 {
        let tp = upstream_traceparent(&echo(&none, &[]).await);
        assert_eq!(tp.flags, "00", "{tp:?}");
        unsampled.push(tp.trace_id);
    }
    unsampled.sort();
    unsampled.dedup();
    assert_eq!(unsampled.len(), 5, "each request starts its own trace");
    requests_done(&none, 5).await;
    let tp = upstream_traceparent(
        &echo(
            &none,
            &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
        )
        .await,
    );
    assert_eq!((tp.trace_id.as_str(), tp.flags.as_str()), (TRACE, "01"));
    exactly_exported(&none, &rx, &[TRACE]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_trace_headers_start_a_new_trace_and_never_fail() {
    let rx = Receiver::start().await;
    let up = Upstream::start("payment-1").await;
    let proxy = traced(&rx.endpoint(), &[up.addr], CHARGE, "sampling: 1.0").await;

    let tp = |s: &str| s.replace("T", TRACE).replace("P", PARENT);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("traceparent", tp("ff-T-P-01").into_bytes()),
        (
            "traceparent",
            tp("00-00000000000000000000000000000000-P-01").into_bytes(),
        ),
        ("traceparent", tp("00-T-0000000000000000-01").into_bytes()),
        (
            "traceparent",
            format!("00-{}-{PARENT}-01", &TRACE[..31]).into_bytes(),
        ),
        (
            "traceparent",
            format!("00-{TRACE}0-{PARENT}-01").into_bytes(),
        ),
        (
            "traceparent",
            format!("00-{TRACE}-{}-01", &PARENT[..15]).into_bytes(),
        ),
        ("traceparent", tp("00-T-P-1").into_bytes()),
        ("traceparent", tp("00-T-P-01-extra").into_bytes()),
        ("traceparent", tp("00-T-P-01").to_uppercase().into_bytes()),
        ("traceparent", tp("0-T-P-01").into_bytes()),
        ("traceparent", tp("00_T_P_01").into_bytes()),
        ("traceparent", tp("00-T-P-zz").into_bytes()),
        ("traceparent", b"garbage".to_vec()),
        ("traceparent", b"".to_vec()),
        (
            "traceparent",
            [&b"00-"[..], &[0xff; 32], b"-00f067aa0ba902b7-01"].concat(),
        ),
        ("b3", b"garbage".to_vec()),
        ("b3", tp("T-xyz-1").into_bytes()),
        ("b3", tp("T").into_bytes()),
        ("b3", tp("T-P-7").into_bytes()),
        ("b3", format!("{TRACE}abcd-{PARENT}-1").into_bytes()),
        (
            "b3",
            tp("00000000000000000000000000000000-P-1").into_bytes(),
        ),
        ("x-b3-traceid", b"zz".to_vec()),
        ("x-b3-traceid", tp("T").to_uppercase().into_bytes()),
    ];
    for (name, value) in &cases {
        let mut headers: Vec<(&str, &[u8])> = vec![(name, value)];
        // A multi-header case needs a span id to be a context at all.
        if name.starts_with("x-b3") {
            headers.push(("x-b3-spanid", PARENT.as_bytes()));
            headers.push(("x-b3-sampled", b"1"));
        }
        let what = format!("{name}: {:?}", String::from_utf8_lossy(value));
        let seen = echo_raw(&proxy, &headers).await;
        let got = upstream_traceparent(&seen);
        assert_ne!(got.trace_id, TRACE, "{what} was not ignored");
        assert_ne!(got.parent_id, PARENT, "{what} was not ignored");
        // A new trace, sampled at the ratio (1.0): its span is a root.
        let span = one(rx.wait_trace(&got.trace_id, 1).await);
        assert_eq!(span.parent, None, "{what}: {span:?}");
        assert_eq!(span.span_id, got.parent_id, "{what}");
        assert_eq!(
            span.int_attr("http.response.status_code"),
            Some(200),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_attempt_is_a_sibling_span() {
    let rx = Receiver::start().await;
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(503);
    let route = "{name: charge, retries: {attempts: 2, on: [gateway-error], backoff: {base: 1ms, max: 1ms}}}";
    let proxy = traced(
        &rx.endpoint(),
        &[bad.addr, good.addr],
        route,
        "sampling: 1.0",
    )
    .await;

    // Round robin: of four requests, some start on the failing endpoint and are retried.
    let mut retried = 0;
    for i in 0..4 {
        let trace = format!("{:032x}", 0xabc0 + i);
        let seen = echo(
            &proxy,
            &[("traceparent", &format!("00-{trace}-{PARENT}-01"))],
        )
        .await;
        let tp = upstream_traceparent(&seen);
        assert_eq!(tp.trace_id, trace);
        let was_retried = header(&seen, "x-outrigger-attempt") == Some("2");
        let mut spans = rx.wait_trace(&trace, if was_retried { 2 } else { 1 }).await;
        spans.sort_by_key(Span::attempt);
        if !was_retried {
            let span = one(spans);
            assert_eq!(span.attempt(), 1);
            assert_eq!(span.span_id, tp.parent_id);
            continue;
        }
        retried += 1;
        assert_eq!(spans.len(), 2, "one span per attempt: {spans:#?}");
        let (first, second) = (&spans[0], &spans[1]);
        assert_eq!((first.attempt(), second.attempt()), (1, 2), "{spans:#?}");
        // Siblings: both children of the incoming context.
        for s in [first, second] {
            assert_eq!(s.parent.as_deref(), Some(PARENT), "{s:?}");
            assert_eq!(s.kind, "SPAN_KIND_CLIENT");
            assert_eq!(s.str_attr("http.route"), Some("charge"));
        }
        assert_ne!(first.span_id, second.span_id);
        assert_eq!(first.str_attr("error.type"), Some("503"), "{first:?}");
        assert_eq!(first.status, "STATUS_CODE_ERROR");
        assert_eq!(first.int_attr("http.response.status_code"), Some(503));
        assert_eq!(
            first.int_attr("network.peer.port"),
            Some(i64::from(bad.addr.port()))
        );
        assert_eq!(second.int_attr("http.request.resend_count"), Some(1));
        assert_eq!(second.int_attr("http.response.status_code"), Some(200));
        assert_eq!(second.attr("error.type"), &serde_json::Value::Null);
        assert_eq!(
            second.int_attr("network.peer.port"),
            Some(i64::from(good.addr.port()))
        );
        // Each attempt told its upstream its own span.
        assert_eq!(tp.parent_id, second.span_id);
        let failed = bad
            .headers_seen()
            .into_iter()
            .filter_map(|h| {
                h.get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .and_then(Traceparent::parse)
            })
            .find(|t| t.trace_id == trace)
            .expect("the failing endpoint saw the first attempt's traceparent");
        assert_eq!(failed.parent_id, first.span_id);
    }
    assert!(
        retried > 0,
        "round robin never started on the failing endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_proxy_answers_itself_get_a_span() {
    let rx = Receiver::start().await;
    let up = Upstream::start("payment-1").await;
    let proxy = traced(&rx.endpoint(), &[up.addr], CHARGE, "sampling: 1.0").await;

    for (i, (host, status)) in [("empty", 503), ("unknown.example", 404)]
        .into_iter()
        .enumerate()
    {
        let trace = format!("{:032x}", 0xdead0 + i);
        let traceparent = format!("00-{trace}-{PARENT}-01");
        let res = call(
            proxy.outbound(),
            host,
            "/",
            &[("traceparent", traceparent.as_bytes())],
        )
        .await;
        assert_eq!(res.status(), status, "{host}: {:?}", res.body());
        let reason = res.headers()["x-outrigger-error"]
            .to_str()
            .expect("reason")
            .to_string();
        let span = one(rx.wait_trace(&trace, 1).await);
        assert_eq!(span.parent.as_deref(), Some(PARENT), "{host}: {span:?}");
        assert_eq!(
            span.str_attr("error.type"),
            Some(reason.as_str()),
            "{host}: {span:?}"
        );
        assert_eq!(span.status, "STATUS_CODE_ERROR", "{host}: {span:?}");
        assert_eq!(
            span.int_attr("http.response.status_code"),
            Some(i64::from(status)),
            "{host}: {span:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_or_failing_collector_costs_no_request_and_is_counted() {
    let up = Upstream::start("payment-1").await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let failing = Receiver::with_args(&["--fail"]).await;
    for (what, endpoint) in [("down", closed), ("failing", failing.endpoint())] {
        let proxy = traced(&endpoint, &[up.addr], CHARGE, "sampling: 1.0").await;
        for _ in 0..20 {
            upstream_traceparent(&echo(&proxy, &[]).await);
        }
        eventually(
            Duration::from_secs(60),
            &format!("spans dropped as export_failed with the collector {what}"),
            || async { (dropped(&proxy, "export_failed").await > 0.0).then_some(()) },
        )
        .await;
        assert_eq!(exported(&proxy).await, 0.0, "collector {what}");
    }
    assert!(failing.spans().is_empty(), "--fail must accept nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_drops_spans_at_the_bounded_queue() {
    // Every export call hangs for 30 s: the exporter cannot keep up at all.
    let rx = Receiver::with_args(&["--delay", "30"]).await;
    let up = Upstream::start("payment-1").await;
    let proxy = traced(
        &rx.endpoint(),
        &[up.addr],
        CHARGE,
        "sampling: 1.0, queue: 256",
    )
    .await;
    for _ in 0..50 {
        upstream_traceparent(&echo(&proxy, &[]).await);
    }
    let (before, _) = proxy.rss_kib();

    const N: usize = 4000;
    const CONCURRENCY: usize = 16;
    let target = proxy.outbound();
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        workers.push(tokio::spawn(async move {
            let c = client::h1();
            let mut ok = 0;
            for _ in (w..N).step_by(CONCURRENCY) {
                let req = client::request("GET", &format!("http://{target}/"))
                    .header("host", "payment")
                    .body(client::empty())
                    .expect("request");
                if send(&c, req).await.status() == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for w in workers {
        ok += w.await.expect("load worker");
    }
    assert_eq!(ok, N, "every request succeeds with the collector stalled");

    let full = eventually(
        Duration::from_secs(30),
        "spans dropped as queue_full",
        || async {
            let d = dropped(&proxy, "queue_full").await;
            (d > 0.0).then_some(d)
        },
    )
    .await;
    // The queue holds 256, and the stalled exporter takes one batch (at most 512) out of it
    // per 10 s export timeout: even if the load took a minute, most spans were dropped
    // rather than kept.
    assert!(
        full >= (N / 4) as f64,
        "only {full} of {N} spans dropped with a 256-span queue"
    );
    let (after, peak) = proxy.rss_kib();
    // Generous: the point is "bounded", not "small"; an unbounded queue of 4000 spans plus
    // the rest of a debug build would not be caught by a tight number either way.
    assert!(
        peak < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB (peak {peak} KiB)"
    );
}
