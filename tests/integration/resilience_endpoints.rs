//! Endpoint-level resilience end to end, through the real proxy and real sockets: outlier
//! detection ejects a failing endpoint, lets only probes through and restores it; a probe
//! abandoned by its client does not keep the endpoint out; a client that hangs up while
//! queued for an in-flight slot gives its place back; the connection limit fails the excess
//! fast with 503 `overloaded` and reuses its one connection; a dead upstream fails fast and
//! recovers on its own. These are the wiring checks: real connections, pools and hang-ups.
//!
//! The compositions (ejection, probes and the ejection cap, round robin and P2C over peak
//! EWMA, in-flight and pending limits, fault injection, rate limits) run in process under
//! paused time in `proxy/src/forward/compose_tests.rs`.

use bytes::Bytes;
use http::Response;
use outrigger_tests::client::{self, send, TestClient};
use outrigger_tests::eventually;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn call(c: &TestClient, addr: SocketAddr, host: &str, path: &str) -> Response<Bytes> {
    let req = client::request("GET", &format!("http://{addr}{path}"))
        .header("host", host)
        .body(client::empty())
        .expect("request");
    send(c, req).await
}

/// `x-outrigger-error`, if the proxy made this response itself.
fn reason(res: &Response<Bytes>) -> Option<&str> {
    res.headers()
        .get("x-outrigger-error")
        .and_then(|v| v.to_str().ok())
}

fn upstream_name(res: &Response<Bytes>) -> Option<&str> {
    res.headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
}

const PAYMENT: &[(&str, &str)] = &[("service", "order"), ("dst_service", "payment")];

async fn ejections(proxy: &Proxy, dst: &str) -> (f64, f64) {
    let l = [("service", "order"), ("dst_service", dst)];
    (
        proxy.metric_or_zero("outrigger_ejections_total", &l).await,
        proxy
            .metric_or_zero("outrigger_endpoints_ejected", &l)
            .await,
    )
}

/// The most probes an endpoint ejected at time 0 with ejection time `base` can have had after
/// `elapsed`, each failed probe ejecting it again for one more `base` (base, 2×base, 3×base…).
fn probes_allowed(base: Duration, elapsed: Duration) -> usize {
    let mut k = 0;
    let mut due = base;
    while due <= elapsed {
        k += 1;
        due += base * (k as u32 + 1);
    }
    k
}

/// Sends one GET on a fresh raw connection. Returns the response head if one starts within
/// `wait`, or the still-open stream if none did (so the caller can hang up on it).
async fn raw_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    wait: Duration,
) -> Result<String, TcpStream> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the proxy closed without a response");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(wait, read).await {
        Ok(()) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => Err(s),
    }
}

/// One destination whose endpoints take turns (round robin), so a failing endpoint is tried
/// for sure: what is under test is ejection, not how P2C would rank it.
fn outlier_mesh(eps: &[SocketAddr], outlier: &str, retries: &str) -> String {
    let eps: Vec<String> = eps.iter().map(|a| format!("{{address: {a}}}")).collect();
    format!(
        "service: order\n\
         destinations:\n\
         \x20 - name: payment\n\
         \x20   endpoints: [{}]\n\
         \x20   load_balancer: round-robin\n\
         \x20   outlier_detection: {outlier}\n\
         \x20   routes:\n\
         \x20     - {{name: all, match: {{path_prefix: /}}, retries: {retries}}}\n",
        eps.join(", ")
    )
}

/// Sends sequential requests until `bad` has seen `n` of them; every response must be 200
/// (retries absorb the failures). Returns (start of the last request, its end, requests sent).
async fn until_seen(
    c: &TestClient,
    proxy: &Proxy,
    bad: &Upstream,
    n: usize,
    within: Duration,
) -> (Instant, Instant, usize) {
    let deadline = Instant::now() + within;
    let mut sent = 0;
    // Steady traffic, not a flood: the probe is whichever request comes first once due.
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    loop {
        pace.tick().await;
        let start = Instant::now();
        let res = call(c, proxy.outbound(), "payment", "/").await;
        sent += 1;
        assert_eq!(res.status(), 200, "{:?} {:?}", reason(&res), res.body());
        let seen = bad.requests();
        assert!(seen <= n, "{} saw {seen} requests, expected {n}", bad.name);
        if seen == n {
            return (start, Instant::now(), sent);
        }
        assert!(
            Instant::now() < deadline,
            "{} saw only {seen} of {n} requests within {within:?}",
            bad.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_probed_and_restored() {
    let (a, b, bad) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("bad").await,
    );
    bad.fail_with(503);
    let base = Duration::from_secs(2);
    let snapshot = outlier_mesh(
        &[a.addr, b.addr, bad.addr],
        "{consecutive_failures: 5, base_ejection: 2s, max_ejection: 300s}",
        "{attempts: 3, on: [gateway-error]}",
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let c = client::h1();
    let mut ok = 0;

    // Sequentially, each request tries `bad` at most once (a retry prefers another endpoint),
    // so it is ejected exactly at its 5th consecutive failure, and not before.
    let mut sent = 0;
    let (eject_lo, eject_hi) = loop {
        assert_eq!(ejections(&proxy, "payment").await, (0.0, 0.0));
        let start = Instant::now();
        let res = call(&c, proxy.outbound(), "payment", "/").await;
        sent += 1;
        if res.status() == 200 {
            ok += 1;
        }
        if bad.requests() == 5 {
            break (start, Instant::now());
        }
        assert!(sent < 100, "bad saw {} of the first 100", bad.requests());
    };
    assert_eq!(ejections(&proxy, "payment").await, (1.0, 1.0));
    assert!(
        a.requests() + b.requests() >= sent,
        "every failure was retried"
    );
    let ejected_after = sent;

    // More traffic from 3 concurrent clients until shortly before the ejection ends:
    // `bad` gets nothing at all.
    let stop_at = eject_hi + base - Duration::from_millis(400);
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (c, out) = (c.clone(), proxy.outbound());
            tokio::spawn(async move {
                let (mut sent, mut ok) = (0, 0);
                while sent < 100 && Instant::now() < stop_at {
                    sent += 1;
                    if call(&c, out, "payment", "/").await.status() == 200 {
                        ok += 1;
                    }
                }
                (sent, ok)
            })
        })
        .collect();
    for t in tasks {
        let (s, o) = t.await.expect("client task");
        sent += s;
        ok += o;
    }
    assert_eq!(bad.requests(), 5, "requests reached the ejected endpoint");
    assert!(
        ok * 100 >= sent * 99,
        "only {ok} of {sent} succeeded with one bad endpoint of three"
    );
    let first_run = (sent, eject_lo.elapsed());

    // Its first probe comes once base_ejection is over, fails, and ejects it again, for
    // 2 × base_ejection this time. Still one ejection, still one endpoint out.
    let (p1_lo, p1_hi, n) = until_seen(&c, &proxy, &bad, 6, Duration::from_secs(10)).await;
    (sent, ok) = (sent + n, ok + n);
    assert!(
        p1_hi.duration_since(eject_lo) >= base,
        "probed {:?} after the ejection, before base_ejection",
        p1_hi.duration_since(eject_lo)
    );
    assert!(
        p1_lo.duration_since(eject_hi) < base + Duration::from_millis(1500),
        "no probe until {:?} after the ejection",
        p1_lo.duration_since(eject_hi)
    );
    assert_eq!(ejections(&proxy, "payment").await, (1.0, 1.0));

    // Healthy again: the next probe, 2 × base later, restores it.
    bad.fail_with(0);
    let (p2_lo, p2_hi, n) = until_seen(&c, &proxy, &bad, 7, Duration::from_secs(10)).await;
    (sent, ok) = (sent + n, ok + n);
    // Over the whole ejection, `bad` saw exactly one probe per window.
    assert_eq!(
        probes_allowed(base, p2_hi.duration_since(eject_lo)),
        2,
        "the windows were base and 2 × base"
    );
    assert!(sent >= 300, "only {sent} requests sent");
    assert_eq!(ok, sent);
    assert!(
        p2_hi.duration_since(p1_lo) >= base * 2,
        "second probe {:?} after the first, before 2 × base_ejection",
        p2_hi.duration_since(p1_lo)
    );
    assert!(p2_lo.duration_since(p1_hi) < base * 2 + Duration::from_millis(1500));
    assert_eq!(
        ejections(&proxy, "payment").await,
        (1.0, 0.0),
        "a successful probe puts the endpoint back"
    );
    // And it is chosen like any other again.
    for _ in 0..60 {
        let res = call(&c, proxy.outbound(), "payment", "/").await;
        assert_eq!(res.status(), 200);
    }
    assert!(
        bad.requests() >= 7 + 5,
        "restored endpoint got only {} of 60 requests",
        bad.requests() - 7
    );
    eprintln!(
        "outlier: ejected after {ejected_after} requests; {first_run:?} requests/time while \
         ejected before its probe; {ok}/{sent} ok; probes at {:?} and {:?} after ejection",
        p1_hi.duration_since(eject_lo),
        p2_hi.duration_since(eject_lo)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_while_queued_gives_its_place_back() {
    let up = Upstream::start("a").await;
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints: [{{address: {}}}]\n    limits: {{max_requests: 1, max_pending_requests: 1}}\n",
        up.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let out = proxy.outbound();
    let c = client::h1();

    // A holds the only in-flight slot.
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { call(&c, out, "payment", "/delay/1500").await })
    };
    eventually(Duration::from_secs(5), "A in flight", || async {
        (up.requests() == 1).then_some(())
    })
    .await;
    // B and C: one takes the single pending place, the other is refused at once.
    let wait = Duration::from_millis(700);
    let (b, c2) = tokio::join!(
        raw_get(out, "payment", "/", wait),
        raw_get(out, "payment", "/", wait)
    );
    let (refused, queued) = match (b, c2) {
        (Ok(head), Err(s)) | (Err(s), Ok(head)) => (head, s),
        (b, c2) => panic!(
            "expected one refused and one queued: {:?} / {:?}",
            b.as_ref().ok(),
            c2.as_ref().ok()
        ),
    };
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.contains("x-outrigger-error: overloaded"),
        "{refused}"
    );
    // The queued client gives up, and the proxy sees it go: only A's connection is left.
    drop(queued);
    let open = [("direction", "outbound")];
    eventually(
        Duration::from_secs(5),
        "the proxy to see B hang up",
        || async {
            (proxy
                .metric_or_zero("outrigger_connections_open", &open)
                .await
                == 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(slow.await.expect("A").status(), 200);
    assert_eq!(
        up.requests(),
        1,
        "the abandoned request was never forwarded"
    );

    // D in flight again; E must be able to queue behind it (the place B left is free).
    let d = {
        let c = c.clone();
        tokio::spawn(async move { call(&c, out, "payment", "/delay/500").await })
    };
    eventually(Duration::from_secs(5), "D in flight", || async {
        (up.requests() == 2).then_some(())
    })
    .await;
    let e = call(&c, out, "payment", "/").await;
    assert_eq!(
        e.status(),
        200,
        "E was refused ({:?}) although nobody is queued",
        reason(&e)
    );
    assert_eq!(d.await.expect("D").status(), 200);
    assert_eq!(up.requests(), 3);
    let mut labels = PAYMENT.to_vec();
    labels.push(("limit", "pending"));
    assert_eq!(
        proxy
            .metric_or_zero("outrigger_overload_rejections_total", &labels)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_fails_the_excess_fast_and_reuses_the_one_connection() {
    let up = Upstream::start("slow").await;
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints: [{{address: {}}}]\n    limits: {{max_connections: 1}}\n",
        up.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let c = client::h1();
    up.delay_ms(1000);
    let started = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (c, out) = (c.clone(), proxy.outbound());
            tokio::spawn(async move {
                let res = call(&c, out, "payment", "/").await;
                (res, started.elapsed())
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("client task"));
    }
    let (ok, rejected): (Vec<_>, Vec<_>) = done.into_iter().partition(|(r, _)| r.status() == 200);
    // HTTP/1: one request per connection, and no second connection may be opened.
    assert_eq!(ok.len(), 1);
    for (res, took) in &rejected {
        assert_eq!(res.status(), 503);
        assert_eq!(reason(res), Some("overloaded"));
        assert!(
            *took < Duration::from_millis(700),
            "rejected after {took:?}"
        );
    }
    assert_eq!(up.connections(), 1);
    assert_eq!(up.requests(), 1);
    let mut labels = PAYMENT.to_vec();
    labels.push(("limit", "connections"));
    assert_eq!(
        proxy
            .metric_or_zero("outrigger_overload_rejections_total", &labels)
            .await,
        2.0
    );

    // Sequential requests keep using the one pooled connection.
    up.delay_ms(0);
    for _ in 0..10 {
        let res = call(&c, proxy.outbound(), "payment", "/").await;
        assert_eq!(res.status(), 200, "{:?}", reason(&res));
    }
    assert_eq!(up.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_fails_fast_and_recovers_by_itself() {
    let up = Upstream::start("first").await;
    let addr = up.addr;
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints: [{{address: {addr}}}]\n    routes:\n      - {{name: all, match: {{path_prefix: /}}, timeout: 10s}}\n"
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let pid = proxy.pid();
    let c = client::h1();
    let res = call(&c, proxy.outbound(), "payment", "/").await;
    assert_eq!(upstream_name(&res), Some("first"));

    // Crash it: the listener and the proxy's pooled connection both go away.
    up.stop();
    eventually(Duration::from_secs(5), "the upstream to stop", || async {
        up.is_stopped().then_some(())
    })
    .await;
    let mut reasons = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let res = call(&c, proxy.outbound(), "payment", "/").await;
        let took = started.elapsed();
        assert_eq!(res.status(), 502, "{:?}", res.body());
        let r = reason(&res).expect("a proxy-made error").to_string();
        assert!(
            r == "connect-failure" || r == "upstream-reset",
            "reason {r}"
        );
        assert!(took < Duration::from_secs(1), "failed after {took:?}");
        reasons.push(r);
    }
    assert_eq!(reasons.last().map(String::as_str), Some("connect-failure"));

    // Back on the same port: the proxy finds it again without a restart or a config push.
    let again = Upstream::start_on("second", addr).await;
    let started = Instant::now();
    eventually(Duration::from_secs(5), "requests to recover", || async {
        let res = call(&c, proxy.outbound(), "payment", "/").await;
        (res.status() == 200 && upstream_name(&res) == Some("second")).then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            call(&c, proxy.outbound(), "payment", "/").await.status(),
            200
        );
    }
    assert_eq!(proxy.pid(), pid);
    assert!(again.requests() >= 6);
    eprintln!(
        "dead upstream: reasons {reasons:?}; recovered {:?} after restart",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_abandoned_by_its_client_does_not_keep_the_endpoint_out() {
    let (a, b, bad) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("bad").await,
    );
    bad.fail_with(503);
    let snapshot = outlier_mesh(
        &[a.addr, b.addr, bad.addr],
        "{consecutive_failures: 5, base_ejection: 1s}",
        "{attempts: 3, on: [gateway-error]}",
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let c = client::h1();
    until_seen(&c, &proxy, &bad, 5, Duration::from_secs(10)).await;
    assert_eq!(ejections(&proxy, "payment").await, (1.0, 1.0));

    // Healthy but slow: its probe is the one request that takes long. Its client hangs up.
    bad.fail_with(0);
    bad.delay_ms(3000);
    eventually(Duration::from_secs(10), "the probe", || async {
        match raw_get(proxy.outbound(), "payment", "/", Duration::from_millis(500)).await {
            Ok(head) => {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                None
            }
            // Hung up on (the stream is dropped here); was it the probe?
            Err(_) => (bad.requests() == 6).then_some(()),
        }
    })
    .await;
    bad.delay_ms(0);

    // The abandoned probe must not hold the slot: another probe comes and restores it.
    eventually(
        Duration::from_secs(6),
        "the endpoint to be restored",
        || async {
            let res = call(&c, proxy.outbound(), "payment", "/").await;
            assert_eq!(res.status(), 200);
            (ejections(&proxy, "payment").await.1 == 0.0 && bad.requests() > 6).then_some(())
        },
    )
    .await;
}
