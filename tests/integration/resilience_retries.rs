//! Retries end to end, through the real proxy and real sockets: the wiring that the
//! in-process compositions cannot show. A gateway error is retried on another endpoint even
//! when P2C ranks the failing one first; a request body still arriving from a slow client is
//! replayed exactly once, whole; and a body that outgrows `buffer_bytes` during the backoff is
//! neither lost nor answered with a proxy-made error. Every outcome is counted in
//! `outrigger_retries_total`.
//!
//! The compositions of route and per-try timeouts, retries, backoff, body replay and the
//! retry budget (what is retried, when, how often, with which body, counted how) run in
//! process under paused time in `proxy/src/forward/compose_tests.rs`.

use bytes::Bytes;
use outrigger_tests::client::{self, send, TestBody};
use outrigger_tests::eventually;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::time::Duration;

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

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn count(seen: &[String], attempt: &str) -> usize {
    seen.iter().filter(|a| *a == attempt).count()
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

/// `len` bytes whose content depends on `seed`.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
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
