//! Timeouts and retries through the real proxy: the route timeout bounds the whole request,
//! retries included; the per-try timeout cuts every attempt's response headers but the last
//! attempt's and never a slow body; retries go to another endpoint, only for safe methods
//! unless the route opts in (connect failures always), on listed statuses, with backoff; a
//! request body is replayed byte for byte, even from a slow client, unless it outgrows
//! `buffer_bytes`; the retry budget caps the extra load on a failing destination; and every
//! outcome is counted exactly in `outrigger_retries_total` / `outrigger_per_try_timeouts_total`.

use bytes::Bytes;
use outrigger_tests::client::{self, send, TestBody};
use outrigger_tests::eventually;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// One destination of snapshot YAML. Round robin (unless `extra` sets a `load_balancer`) and
/// no outlier detection, so a failing endpoint keeps its share of first attempts and every
/// count below is exact. `extra` adds destination keys; each of `routes` is one route as a
/// YAML flow map.
fn destination(name: &str, endpoints: &[SocketAddr], extra: &str, routes: &[&str]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: {a}}}"))
        .collect();
    let mut s = format!(
        "  - name: {name}\n    outlier_detection: {{consecutive_failures: 0}}\n    connect_timeout: 500ms\n    endpoints: [{}]\n",
        eps.join(", ")
    );
    if !extra.contains("load_balancer:") {
        s += "    load_balancer: round-robin\n";
    }
    for line in extra.lines() {
        s += &format!("    {line}\n");
    }
    if !routes.is_empty() {
        s += "    routes:\n";
        for r in routes {
            s += &format!("      - {r}\n");
        }
    }
    s
}

async fn mesh(destinations: &[String]) -> Proxy {
    let snapshot = format!("service: order\ndestinations:\n{}", destinations.concat());
    ProxyBuilder::file(&snapshot, "").spawn().ready().await
}

async fn call(
    proxy: &Proxy,
    method: &str,
    host: &str,
    path: &str,
    body: TestBody,
) -> http::Response<Bytes> {
    let req = client::request(method, &format!("http://{}{path}", proxy.outbound()))
        .header("host", host)
        .body(body)
        .expect("request");
    send(&client::h1(), req).await
}

/// `outrigger_retries_total` for one route and outcome; the series exists (at 0) from the
/// moment the route is compiled.
async fn retries(proxy: &Proxy, dst: &str, route: &str, outcome: &str) -> f64 {
    let labels = [
        ("direction", "outbound"),
        ("dst_service", dst),
        ("route", route),
        ("outcome", outcome),
    ];
    proxy
        .metric("outrigger_retries_total", &labels)
        .await
        .unwrap_or_else(|| panic!("no outrigger_retries_total for {dst}/{route}/{outcome}"))
}

/// Every retry outcome of a route, in the order retried, budget_exhausted, not_retryable,
/// body_too_large.
async fn outcomes(proxy: &Proxy, dst: &str, route: &str) -> [f64; 4] {
    [
        retries(proxy, dst, route, "retried").await,
        retries(proxy, dst, route, "budget_exhausted").await,
        retries(proxy, dst, route, "not_retryable").await,
        retries(proxy, dst, route, "body_too_large").await,
    ]
}

async fn per_try_timeouts(proxy: &Proxy, dst: &str, route: &str) -> f64 {
    let labels = [
        ("direction", "outbound"),
        ("dst_service", dst),
        ("route", route),
    ];
    proxy
        .metric("outrigger_per_try_timeouts_total", &labels)
        .await
        .unwrap_or_else(|| panic!("no outrigger_per_try_timeouts_total for {dst}/{route}"))
}

/// Waits until `outrigger_requests_total` for this route and status reaches `n` (requests are
/// counted when their response body ends, a moment after the client has it).
async fn requests_counted(proxy: &Proxy, dst: &str, route: &str, status: &str, n: f64) {
    let labels = [
        ("direction", "outbound"),
        ("dst_service", dst),
        ("route", route),
        ("status_code", status),
    ];
    eventually(
        Duration::from_secs(5),
        &format!("{n} requests counted for {dst}/{route} with {status}"),
        || async {
            (proxy.metric("outrigger_requests_total", &labels).await == Some(n)).then_some(())
        },
    )
    .await;
}

fn assert_proxy_error(res: &http::Response<Bytes>, status: u16, reason: &str) {
    assert_eq!(res.status().as_u16(), status, "{:?}", res.body());
    assert_eq!(
        res.headers().get("x-outrigger-error").map(|v| v.as_bytes()),
        Some(reason.as_bytes()),
        "{:?}",
        res.headers()
    );
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn count(seen: &[String], attempt: &str) -> usize {
    seen.iter().filter(|a| *a == attempt).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_bounds_the_whole_request_retries_included() {
    // Slow upstreams: they answer after 3 s, 2 s and 5 s.
    let (stuck, slow) = (
        Upstream::start("stuck").await,
        Upstream::start("slow").await,
    );
    let many = Upstream::start("many").await;
    stuck.delay_ms(3000);
    slow.delay_ms(2000);
    many.delay_ms(5000);
    let proxy = mesh(&[
        destination(
            "stuck",
            &[stuck.addr],
            "",
            &["{name: whole, timeout: 500ms, retries: {attempts: 3, on: [gateway-error]}}"],
        ),
        destination(
            "slow",
            &[slow.addr],
            "",
            &["{name: cut, timeout: 900ms, per_try_timeout: 200ms, retries: {attempts: 3, on: [gateway-error]}}"],
        ),
        destination(
            "many",
            &[many.addr],
            "",
            &["{name: ten, timeout: 750ms, per_try_timeout: 300ms, retries: {attempts: 10, on: [gateway-error], backoff: {base: 1ms, max: 1ms}}}"],
        ),
    ])
    .await;

    // Without a per-try timeout the first attempt owns the whole deadline; when it passes
    // there is no time left for a retry.
    let started = Instant::now();
    let res = call(&proxy, "GET", "stuck", "/", client::empty()).await;
    let took = started.elapsed();
    assert_proxy_error(&res, 504, "timeout");
    assert!(
        took >= Duration::from_millis(480) && took < Duration::from_millis(2500),
        "route timeout of 500ms answered after {took:?}"
    );
    assert_eq!(stuck.attempts_seen(), strs(&["1"]));

    // With one: attempts 1 and 2 are cut at 200ms each, the last attempt runs until the route
    // deadline (900ms after the request arrived), not another 200ms, and the client gets the
    // route timeout, long before the upstream would answer (2 s).
    let started = Instant::now();
    let res = call(&proxy, "GET", "slow", "/", client::empty()).await;
    let took = started.elapsed();
    assert_proxy_error(&res, 504, "timeout");
    assert!(
        took >= Duration::from_millis(880) && took < Duration::from_millis(1900),
        "route timeout of 900ms answered after {took:?} (a last attempt cut at the per-try timeout ends at ~650ms)"
    );
    assert_eq!(slow.attempts_seen(), strs(&["1", "2", "3"]));
    assert_eq!(per_try_timeouts(&proxy, "slow", "cut").await, 2.0);
    assert_eq!(outcomes(&proxy, "slow", "cut").await, [2.0, 0.0, 0.0, 0.0]);
    assert_eq!(per_try_timeouts(&proxy, "stuck", "whole").await, 0.0);
    assert_eq!(outcomes(&proxy, "stuck", "whole").await, [0.0; 4]);
    assert_eq!(
        proxy
            .metric(
                "outrigger_proxy_errors_total",
                &[("direction", "outbound"), ("reason", "timeout")]
            )
            .await,
        Some(2.0)
    );
    requests_counted(&proxy, "slow", "cut", "504", 1.0).await;

    // Ten attempts allowed, but the route deadline is shared: attempts 1 and 2 are cut at
    // 300ms, attempt 3 at the deadline (750ms), and that is the end of it.
    let started = Instant::now();
    let res = call(&proxy, "GET", "many", "/", client::empty()).await;
    let took = started.elapsed();
    assert_proxy_error(&res, 504, "timeout");
    assert!(
        took >= Duration::from_millis(740) && took < Duration::from_millis(2500),
        "route timeout of 750ms answered after {took:?}"
    );
    assert_eq!(many.attempts_seen(), strs(&["1", "2", "3"]));
    assert_eq!(per_try_timeouts(&proxy, "many", "ten").await, 2.0);
    assert_eq!(outcomes(&proxy, "many", "ten").await, [2.0, 0.0, 0.0, 0.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_attempt_is_not_cut_at_the_per_try_timeout() {
    let up = Upstream::start("slow").await;
    up.delay_ms(700);
    let proxy = mesh(&[destination(
        "payment",
        &[up.addr],
        "",
        &["{name: pt, timeout: 2s, per_try_timeout: 200ms, retries: {attempts: 3, on: [gateway-error]}}"],
    )])
    .await;

    let started = Instant::now();
    let res = call(&proxy, "GET", "payment", "/", client::empty()).await;
    let took = started.elapsed();
    // Attempts 1 and 2 time out after 200ms; attempt 3 is the last and waits for the answer
    // (700ms) within the route timeout.
    assert_eq!(res.status(), 200, "{:?} {:?}", res.headers(), res.body());
    assert_eq!(res.body().as_ref(), b"ok\n");
    assert_eq!(up.attempts_seen(), strs(&["1", "2", "3"]));
    assert!(
        took >= Duration::from_millis(1100),
        "two per-try timeouts plus a 700ms answer took only {took:?}"
    );
    assert_eq!(per_try_timeouts(&proxy, "payment", "pt").await, 2.0);
    assert_eq!(
        outcomes(&proxy, "payment", "pt").await,
        [2.0, 0.0, 0.0, 0.0]
    );
    requests_counted(&proxy, "payment", "pt", "200", 1.0).await;
    assert_eq!(
        proxy.metric("outrigger_proxy_errors_total", &[]).await,
        None,
        "no proxy-made response: {}",
        proxy.metrics().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_covers_headers_not_a_slow_body() {
    let up = Upstream::start("trickle").await;
    let proxy = mesh(&[destination(
        "payment",
        &[up.addr],
        "",
        &["{name: pt, timeout: 5s, per_try_timeout: 300ms, retries: {attempts: 3, on: [gateway-error]}}"],
    )])
    .await;

    // Headers at once, then 6 chunks 150ms apart: the body takes ~900ms, three per-try
    // timeouts' worth.
    let started = Instant::now();
    let res = call(&proxy, "GET", "payment", "/trickle/6/150", client::empty()).await;
    let took = started.elapsed();
    assert_eq!(res.status(), 200);
    let want: String = (0..6).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(res.body()), want);
    assert!(took >= Duration::from_millis(900), "body took {took:?}");
    assert_eq!(up.attempts_seen(), strs(&["1"]));
    assert_eq!(per_try_timeouts(&proxy, "payment", "pt").await, 0.0);
    assert_eq!(outcomes(&proxy, "payment", "pt").await, [0.0; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_retried_on_another_endpoint() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(503);
    // The healthy endpoint is the slower one (50ms), so once it has answered, P2C over peak
    // EWMA ranks the failing endpoint first every time: only the retry's preference for
    // another endpoint keeps a retry off it.
    good.delay_ms(50);
    let proxy = mesh(&[destination(
        "payment",
        &[bad.addr, good.addr],
        "load_balancer: p2c-ewma\newma: {default_rtt: 30ms, decay: 10s}",
        &["{name: r, retries: {attempts: 3, on: [gateway-error]}}"],
    )])
    .await;

    const N: usize = 10;
    for _ in 0..N {
        let res = call(&proxy, "GET", "payment", "/", client::empty()).await;
        assert_eq!(res.status(), 200, "{:?}", res.body());
        assert_eq!(res.headers()["x-upstream"], "good");
    }
    // Each first attempt on the failing endpoint was retried once, on the healthy endpoint,
    // never on the endpoint that had just failed.
    let failed = bad.attempts_seen();
    assert!(
        failed.len() >= N / 2,
        "the cheaper endpoint got only {} first attempts",
        failed.len()
    );
    assert_eq!(failed, vec!["1".to_string(); failed.len()]);
    let served = good.attempts_seen();
    assert_eq!(served.len(), N);
    assert_eq!(count(&served, "2"), failed.len(), "{served:?}");
    assert_eq!(count(&served, "1"), N - failed.len(), "{served:?}");
    assert_eq!(
        outcomes(&proxy, "payment", "r").await,
        [failed.len() as f64, 0.0, 0.0, 0.0]
    );
    requests_counted(&proxy, "payment", "r", "200", N as f64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_when_the_route_allows_it() {
    let (strict, lenient) = (
        Upstream::start("strict").await,
        Upstream::start("lenient").await,
    );
    strict.fail_with(503);
    lenient.fail_with(503);
    let proxy = mesh(&[
        destination(
            "strict",
            &[strict.addr],
            "",
            &["{name: s, retries: {attempts: 3, on: [gateway-error]}}"],
        ),
        destination(
            "lenient",
            &[lenient.addr],
            "",
            &["{name: l, retries: {attempts: 3, on: [gateway-error], non_idempotent: true}}"],
        ),
    ])
    .await;

    // POST may have run: not retried by default, the client gets the app's 503.
    let res = call(&proxy, "POST", "strict", "/upload", client::full("hello")).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.body().as_ref(), b"failing; read 5 bytes\n");
    assert!(res.headers().get("x-outrigger-error").is_none());
    assert_eq!(strict.attempts_seen(), strs(&["1"]));
    assert_eq!(outcomes(&proxy, "strict", "s").await, [0.0, 0.0, 1.0, 0.0]);
    // The same route does retry idempotent methods.
    let res = call(&proxy, "PUT", "strict", "/upload", client::full("hello")).await;
    assert_eq!(res.status(), 503);
    assert_eq!(strict.attempts_seen(), strs(&["1", "1", "2", "3"]));
    assert_eq!(outcomes(&proxy, "strict", "s").await, [2.0, 0.0, 1.0, 0.0]);

    // `non_idempotent: true`: POST is retried, with its body every time.
    let res = call(&proxy, "POST", "lenient", "/upload", client::full("hello")).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.body().as_ref(), b"failing; read 5 bytes\n");
    assert_eq!(lenient.attempts_seen(), strs(&["1", "2", "3"]));
    assert_eq!(outcomes(&proxy, "lenient", "l").await, [2.0, 0.0, 0.0, 0.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_even_for_post_by_default() {
    let good = Upstream::start("good").await;
    // Nothing listens here: connections are refused.
    let dead = SocketAddr::from(([127, 0, 0, 1], outrigger_tests::free_port()));
    // No routes: the default policy (attempts 2, on connect-failure and refused-stream).
    let proxy = mesh(&[destination("payment", &[dead, good.addr], "", &[])]).await;

    const N: usize = 10;
    for i in 0..N {
        let body = format!("hello {i}");
        let res = call(
            &proxy,
            "POST",
            "payment",
            "/reflect",
            client::full(body.clone()),
        )
        .await;
        assert_eq!(res.status(), 200, "{:?}", res.body());
        assert_eq!(res.body().as_ref(), body.as_bytes());
    }
    let served = good.attempts_seen();
    assert_eq!(served.len(), N, "{served:?}");
    let retried = count(&served, "2");
    assert!(
        retried >= 1,
        "round robin never chose the dead endpoint: {served:?}"
    );
    assert_eq!(count(&served, "1"), N - retried);
    assert_eq!(
        outcomes(&proxy, "payment", "default").await,
        [retried as f64, 0.0, 0.0, 0.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_status_codes_are_retried() {
    let up = Upstream::start("up").await;
    let proxy = mesh(&[destination(
        "payment",
        &[up.addr],
        "",
        &["{name: conflict, retries: {attempts: 3, on: [], status_codes: [409]}}"],
    )])
    .await;

    let res = call(&proxy, "GET", "payment", "/status/409", client::empty()).await;
    assert_eq!(res.status(), 409);
    assert_eq!(up.attempts_seen(), strs(&["1", "2", "3"]));
    assert_eq!(
        outcomes(&proxy, "payment", "conflict").await,
        [2.0, 0.0, 0.0, 0.0]
    );
    // Statuses that are not listed are answered as they are, even gateway errors.
    for status in ["503", "410"] {
        let res = call(
            &proxy,
            "GET",
            "payment",
            &format!("/status/{status}"),
            client::empty(),
        )
        .await;
        assert_eq!(res.status().as_str(), status);
    }
    assert_eq!(up.attempts_seen(), strs(&["1", "2", "3", "1", "1"]));
    assert_eq!(
        outcomes(&proxy, "payment", "conflict").await,
        [2.0, 0.0, 0.0, 0.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_between_attempts() {
    let bad = Upstream::start("bad").await;
    bad.fail_with(503);
    let proxy = mesh(&[destination(
        "payment",
        &[bad.addr],
        "",
        &["{name: b, retries: {attempts: 3, on: [gateway-error], backoff: {base: 100ms, max: 100ms}}}"],
    )])
    .await;

    let started = Instant::now();
    let res = call(&proxy, "GET", "payment", "/", client::empty()).await;
    let took = started.elapsed();
    assert_eq!(res.status(), 503);
    assert_eq!(bad.attempts_seen(), strs(&["1", "2", "3"]));
    // Each backoff is between half the ceiling and the ceiling: 50..=100ms.
    let at = bad.arrivals();
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(50) && gap < Duration::from_millis(1000),
            "attempts {gap:?} apart: {at:?}"
        );
    }
    assert!(
        took >= Duration::from_millis(100),
        "three attempts in {took:?}"
    );
    assert_eq!(outcomes(&proxy, "payment", "b").await, [2.0, 0.0, 0.0, 0.0]);
}

/// `len` bytes whose content depends on `seed`.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_post_body_arrives_byte_for_byte() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(503);
    let proxy = mesh(&[destination(
        "payment",
        &[bad.addr, good.addr],
        "",
        &["{name: r, retries: {attempts: 3, on: [gateway-error], non_idempotent: true}}"],
    )])
    .await;

    const N: usize = 6;
    for i in 0..N {
        let payload = pattern(i, 10 * 1024);
        // Half with a content-length, half chunked (in 1 KiB chunks).
        let body = if i % 2 == 0 {
            client::full(payload.clone())
        } else {
            let (tx, body) = client::channel_body(16);
            for c in payload.chunks(1024) {
                tx.send(Bytes::copy_from_slice(c))
                    .await
                    .expect("queue chunk");
            }
            body
        };
        let res = call(&proxy, "POST", "payment", "/reflect", body).await;
        assert_eq!(res.status(), 200, "{:?}", res.body());
        assert_eq!(res.headers()["x-upstream"], "good");
        assert_eq!(res.body().len(), payload.len(), "request {i}");
        assert!(
            res.body().as_ref() == payload.as_slice(),
            "request {i}: body differs"
        );
    }
    let failed = bad.requests();
    assert!(failed >= 1, "round robin never chose the failing endpoint");
    let served = good.attempts_seen();
    assert_eq!(count(&served, "2"), failed, "{served:?}");
    assert_eq!(served.len(), N);
    assert_eq!(
        outcomes(&proxy, "payment", "r").await,
        [failed as f64, 0.0, 0.0, 0.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_larger_than_buffer_bytes_is_sent_once() {
    let bad = Upstream::start("bad").await;
    bad.fail_with(503);
    let proxy = mesh(&[destination(
        "payment",
        &[bad.addr],
        "",
        &["{name: big, retries: {attempts: 3, on: [gateway-error], non_idempotent: true, buffer_bytes: 4096}}"],
    )])
    .await;

    // Chunked, length unknown up front: the copy is given up once it passes 4 KiB.
    let res = call(
        &proxy,
        "POST",
        "payment",
        "/upload",
        client::generated(100 * 1024),
    )
    .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.body().as_ref(), b"failing; read 102400 bytes\n");
    assert_eq!(bad.attempts_seen(), strs(&["1"]));
    assert_eq!(
        outcomes(&proxy, "payment", "big").await,
        [0.0, 0.0, 0.0, 1.0]
    );

    // With a content-length over the cap: never buffered, sent once, the same outcome.
    let payload = pattern(1, 100 * 1024);
    let res = call(&proxy, "POST", "payment", "/upload", client::full(payload)).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.body().as_ref(), b"failing; read 102400 bytes\n");
    assert_eq!(bad.attempts_seen(), strs(&["1", "1"]));
    assert_eq!(
        outcomes(&proxy, "payment", "big").await,
        [0.0, 0.0, 0.0, 2.0]
    );

    // Control: the same route retries a body within the cap.
    let res = call(
        &proxy,
        "POST",
        "payment",
        "/upload",
        client::full(pattern(2, 4096)),
    )
    .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.body().as_ref(), b"failing; read 4096 bytes\n");
    assert_eq!(bad.attempts_seen(), strs(&["1", "1", "1", "2", "3"]));
    assert_eq!(
        outcomes(&proxy, "payment", "big").await,
        [2.0, 0.0, 0.0, 2.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_body_is_replayed_exactly_once() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    // Answers 503 as soon as the first chunk is in, while the client is still sending.
    bad.fail_early_with(503);
    let proxy = mesh(&[destination(
        "payment",
        &[bad.addr, good.addr],
        "",
        &["{name: r, retries: {attempts: 3, on: [gateway-error], non_idempotent: true}}"],
    )])
    .await;
    let url = format!("http://{}/reflect", proxy.outbound());
    let chunks: Vec<Bytes> = ["first", "second", "third"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut c = format!("<{name}>").into_bytes();
            c.extend(pattern(i, 3000));
            Bytes::from(c)
        })
        .collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();

    // Round robin gives the failing endpoint a first attempt within a couple of requests.
    let mut replayed = false;
    for round in 0..4 {
        let (bad_before, good_before) = (bad.requests(), good.requests());
        let (tx, body) = client::channel_body(4);
        let req = client::request("POST", &url)
            .header("host", "payment")
            .body(body)
            .expect("request");
        let c = client::h1();
        let exchange = tokio::spawn(async move { send(&c, req).await });
        tx.send(chunks[0].clone()).await.expect("first chunk");
        // The rest of the body only comes once the healthy endpoint has the request: after
        // the failed attempt, if the failing endpoint came first.
        eventually(
            Duration::from_secs(5),
            "the healthy endpoint to get the request",
            || async { (good.requests() > good_before).then_some(()) },
        )
        .await;
        let retry = bad.requests() > bad_before;
        tx.send(chunks[1].clone()).await.expect("second chunk");
        tx.send(chunks[2].clone()).await.expect("third chunk");
        drop(tx);
        let res = exchange.await.expect("exchange task");
        assert_eq!(res.status(), 200, "round {round}: {:?}", res.body());
        assert_eq!(res.headers()["x-upstream"], "good");
        assert_eq!(res.body().len(), whole.len(), "round {round}");
        assert!(
            res.body().as_ref() == whole.as_slice(),
            "round {round}: body differs"
        );
        if retry {
            assert_eq!(bad.attempts_seen().last().map(String::as_str), Some("1"));
            assert_eq!(good.attempts_seen().last().map(String::as_str), Some("2"));
            replayed = true;
            break;
        }
    }
    assert!(replayed, "the failing endpoint never got a first attempt");
    assert_eq!(outcomes(&proxy, "payment", "r").await, [1.0, 0.0, 0.0, 0.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_the_extra_load() {
    let bad = Upstream::start("bad").await;
    bad.fail_with(503);
    let proxy = mesh(&[destination(
        "payment",
        &[bad.addr],
        "retry_budget: {ratio: 0.2, min_per_second: 10, window: 10s}",
        &["{name: r, retries: {attempts: 3, on: [gateway-error], backoff: {base: 1ms, max: 1ms}}}"],
    )])
    .await;

    // A steady 100 requests/s for 4 s from 4 clients, all within one budget window.
    const TASKS: usize = 4;
    const EACH: usize = 100;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let url = format!("http://{}/", proxy.outbound());
            tokio::spawn(async move {
                let c = client::h1();
                let mut tick = tokio::time::interval(Duration::from_millis(40));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for _ in 0..EACH {
                    tick.tick().await;
                    let req = client::request("GET", &url)
                        .header("host", "payment")
                        .body(client::empty())
                        .expect("request");
                    assert_eq!(send(&c, req).await.status(), 503);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "the load must fit in the 10s window to check the bound over it; took {took:?}"
    );

    let requests = TASKS * EACH;
    let attempts = bad.requests();
    let [retried, exhausted, not_retryable, too_large] = outcomes(&proxy, "payment", "r").await;
    // Unbudgeted, every request would be tried 3 times (1200 attempts). The budget allows
    // 0.2 × 400 + 10/s × 10s = 180 retries in the window.
    assert!(
        attempts <= requests + requests / 5 + 100,
        "retry storm: {attempts} attempts for {requests} requests"
    );
    assert!(
        attempts >= requests + 100,
        "the reserve alone allows 100 retries; only {attempts} attempts for {requests} requests"
    );
    assert_eq!(retried, (attempts - requests) as f64);
    assert!(exhausted > 0.0);
    assert_eq!((not_retryable, too_large), (0.0, 0.0));
    requests_counted(&proxy, "payment", "r", "503", requests as f64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_outgrowing_buffer_bytes_during_backoff_is_not_lost() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    // Answers 503 once the first chunk is in, and keeps reading the rest of the body.
    bad.fail_early_with(503);
    let proxy = mesh(&[destination(
        "payment",
        &[bad.addr, good.addr],
        "",
        &["{name: r, retries: {attempts: 3, on: [gateway-error], non_idempotent: true, buffer_bytes: 4096, backoff: {base: 400ms, max: 400ms}}}"],
    )])
    .await;
    let small = Bytes::from(pattern(1, 1024));
    let large = Bytes::from(pattern(2, 8 * 1024));
    let whole: Vec<u8> = [small.as_ref(), large.as_ref()].concat();

    let url = format!("http://{}/reflect", proxy.outbound());

    // Round robin gives the failing endpoint a first attempt within a couple of requests.
    let mut round = 0;
    let (res, retried, too_large) = loop {
        round += 1;
        assert!(round <= 4, "the failing endpoint never got a first attempt");
        let good_before = good.requests();
        let (tx, body) = client::channel_body(4);
        let req = client::request("POST", &url)
            .header("host", "payment")
            .body(body)
            .expect("request");
        let c = client::h1();
        let exchange = tokio::spawn(async move { send(&c, req).await });
        tx.send(small.clone()).await.expect("first chunk");
        // 1 KiB fits the 4 KiB buffer, so a 503 is to be retried: the proxy waits 200-400ms
        // first. Only then does the client send 8 KiB more, past the buffer.
        let retry = eventually(
            Duration::from_secs(5),
            "a retry decided or the healthy endpoint reached",
            || async {
                if retries(&proxy, "payment", "r", "retried").await >= 1.0 {
                    Some(true)
                } else {
                    (good.requests() > good_before).then_some(false)
                }
            },
        )
        .await;
        tx.send(large.clone()).await.expect("second chunk");
        drop(tx);
        let res = exchange.await.expect("exchange task");
        if !retry {
            // The healthy endpoint came first: nothing to retry.
            assert_eq!(res.status(), 200, "{:?}", res.headers());
            assert!(res.body().as_ref() == whole.as_slice(), "body differs");
            continue;
        }
        let [retried, _, _, too_large] = outcomes(&proxy, "payment", "r").await;
        break (res, retried, too_large);
    };
    assert_eq!(bad.attempts_seen(), strs(&["1"]));
    let good_seen = good.attempts_seen();

    // Either the retry goes ahead and carries the whole body (the failed attempt having been
    // cut off from the client's body when the retry was decided), or it is called off and
    // the client gets the app's 503. Never a proxy-made error for a request the app answered,
    // and one failed attempt has one outcome.
    assert!(
        res.headers().get("x-outrigger-error").is_none(),
        "proxy-made {} {:?} instead of the app's answer; retried={retried} body_too_large={too_large}",
        res.status(),
        res.headers().get("x-outrigger-error")
    );
    match res.status().as_u16() {
        200 => {
            assert_eq!(res.headers()["x-upstream"], "good");
            assert!(res.body().as_ref() == whole.as_slice(), "body differs");
            assert_eq!(good_seen.last().map(String::as_str), Some("2"));
            assert_eq!((retried, too_large), (1.0, 0.0));
        }
        503 => {
            assert_eq!(res.headers()["x-upstream"], "bad");
            assert_eq!(count(&good_seen, "2"), 0);
            assert_eq!((retried, too_large), (0.0, 1.0));
        }
        other => panic!("unexpected {other}: {:?}", res.body()),
    }
}
