//! Endpoint-level resilience through the real proxy: outlier detection ejects a failing
//! endpoint, lets only probes through and restores it (within the ejection cap); in-flight,
//! pending and connection limits fail excess requests fast with 503 `overloaded`; a dead
//! upstream fails fast and recovers on its own; P2C peak-EWMA avoids a slow endpoint and round
//! robin spreads evenly; fault injection and local rate limits do exactly what they are told,
//! and all of it is counted.

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

async fn call_with(
    c: &TestClient,
    addr: SocketAddr,
    host: &str,
    header: (&str, &str),
) -> Response<Bytes> {
    let req = client::request("GET", &format!("http://{addr}/"))
        .header("host", host)
        .header(header.0, header.1)
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
async fn ejection_never_takes_more_than_its_share_nor_the_last_endpoint() {
    let ups = [
        Upstream::start("p1").await,
        Upstream::start("p2").await,
        Upstream::start("q1").await,
        Upstream::start("q2").await,
        Upstream::start("solo").await,
    ];
    for u in &ups {
        u.fail_with(503);
    }
    let dest = |name: &str, eps: &[&Upstream], pct: u32| {
        let eps: Vec<String> = eps
            .iter()
            .map(|u| format!("{{address: {}}}", u.addr))
            .collect();
        format!(
            "  - name: {name}\n    endpoints: [{}]\n    outlier_detection: {{consecutive_failures: 5, base_ejection: 60s, max_ejected_percent: {pct}}}\n",
            eps.join(", ")
        )
    };
    let snapshot = format!(
        "service: order\ndestinations:\n{}{}{}",
        dest("halves", &[&ups[0], &ups[1]], 50),
        dest("all", &[&ups[2], &ups[3]], 100),
        dest("solo", &[&ups[4]], 100),
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let c = client::h1();
    for dst in ["halves", "all", "solo"] {
        for _ in 0..40 {
            let res = call(&c, proxy.outbound(), dst, "/").await;
            // The app's own 503, never the proxy's `no-endpoints`.
            assert_eq!(res.status(), 503, "{dst}");
            assert_eq!(reason(&res), None, "{dst}: {:?}", res.body());
        }
    }
    // Two endpoints, both failing: one is ejected (after exactly 5 failures), the other takes
    // everything after that, even with max_ejected_percent 100.
    for (dst, pair) in [("halves", &ups[0..2]), ("all", &ups[2..4])] {
        assert_eq!(ejections(&proxy, dst).await, (1.0, 1.0), "{dst}");
        let mut seen = [pair[0].requests(), pair[1].requests()];
        seen.sort_unstable();
        assert_eq!(seen, [5, 35], "{dst}");
    }
    // A single endpoint is never ejected.
    assert_eq!(ejections(&proxy, "solo").await, (0.0, 0.0));
    assert_eq!(ups[4].requests(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_and_pending_limits_fail_the_excess_fast() {
    let up = Upstream::start("slow").await;
    up.delay_ms(1000);
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints: [{{address: {}}}]\n    limits: {{max_requests: 2, max_pending_requests: 1}}\n",
        up.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;

    let (status, body) = proxy.admin_get("/config").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("config json");
    assert_eq!(
        v["snapshot"]["destinations"][0]["limits"],
        serde_json::json!({"max_connections": 10000, "max_pending_requests": 1, "max_requests": 2})
    );

    let c = client::h1();
    let started = Instant::now();
    let tasks: Vec<_> = (0..6)
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
    assert_eq!(ok.len(), 3, "2 in flight + 1 pending get through");
    assert_eq!(rejected.len(), 3);
    for (res, took) in &rejected {
        assert_eq!(res.status(), 503);
        assert_eq!(reason(res), Some("overloaded"));
        assert!(
            *took < Duration::from_millis(700),
            "rejected after {took:?}: not fast"
        );
    }
    let mut ok_times: Vec<_> = ok.iter().map(|(_, t)| *t).collect();
    ok_times.sort();
    assert!(ok_times[0] >= Duration::from_millis(1000));
    // The pending one waited for a slot: never more than 2 at the upstream at once.
    assert!(
        ok_times[2] >= Duration::from_millis(2000),
        "third success after {:?}: it did not wait for a slot",
        ok_times[2]
    );
    assert_eq!(up.requests(), 3);
    let limit = |l: &'static str| {
        let mut labels = PAYMENT.to_vec();
        labels.extend([("direction", "outbound"), ("limit", l)]);
        labels
    };
    assert_eq!(
        proxy
            .metric_or_zero("outrigger_overload_rejections_total", &limit("pending"))
            .await,
        3.0
    );
    assert_eq!(
        proxy
            .metric_or_zero("outrigger_overload_rejections_total", &limit("deadline"))
            .await,
        0.0
    );
    eprintln!("limits: successes at {ok_times:?}");
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
async fn p2c_ewma_steers_away_from_a_slow_endpoint() {
    let (f1, f2, slow) = (
        Upstream::start("f1").await,
        Upstream::start("f2").await,
        Upstream::start("slow").await,
    );
    f1.delay_ms(10);
    f2.delay_ms(10);
    slow.delay_ms(100);
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints: [{{address: {}}}, {{address: {}}}, {{address: {}}}]\n",
        f1.addr, f2.addr, slow.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let c = client::h1();
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (c, out) = (c.clone(), proxy.outbound());
            tokio::spawn(async move {
                for _ in 0..75 {
                    assert_eq!(call(&c, out, "payment", "/").await.status(), 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let counts = [f1.requests(), f2.requests(), slow.requests()];
    assert_eq!(counts.iter().sum::<usize>(), 300);
    assert!(
        counts[2] * 100 < 300 * 15,
        "the 10x slower endpoint got {} of 300: {counts:?}",
        counts[2]
    );
    eprintln!("p2c: {counts:?} in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_forgives_a_once_slow_endpoint_in_time() {
    let (fast, once_slow) = (
        Upstream::start("fast").await,
        Upstream::start("once-slow").await,
    );
    once_slow.delay_ms(300);
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    ewma: {{decay: 500ms}}\n    endpoints: [{{address: {}}}, {{address: {}}}]\n",
        fast.addr, once_slow.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let (c, out) = (client::h1(), proxy.outbound());
    // Concurrent requests until the slow one has answered once (its estimate is now 300ms).
    eventually(Duration::from_secs(10), "one slow answer", || async {
        let (r1, r2, r3) = tokio::join!(
            call(&c, out, "payment", "/"),
            call(&c, out, "payment", "/"),
            call(&c, out, "payment", "/")
        );
        assert!([r1, r2, r3].iter().all(|r| r.status() == 200));
        (once_slow.requests() >= 1).then_some(())
    })
    .await;
    // It is as fast as the other now. Light traffic for some decay periods: the old sample
    // must lose its weight and the endpoint get tried again.
    once_slow.delay_ms(0);
    let seen = once_slow.requests();
    let started = Instant::now();
    eventually(
        Duration::from_secs(8),
        "the once-slow endpoint to be tried again",
        || async {
            assert_eq!(call(&c, out, "payment", "/").await.status(), 200);
            (once_slow.requests() > seen).then_some(())
        },
    )
    .await;
    eprintln!("p2c: tried again after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let ups = [
        Upstream::start("r0").await,
        Upstream::start("r1").await,
        Upstream::start("r2").await,
    ];
    // The slow one must not matter to round robin.
    ups[2].delay_ms(20);
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    load_balancer: round-robin\n    endpoints: [{{address: {}}}, {{address: {}}}, {{address: {}}}]\n",
        ups[0].addr, ups[1].addr, ups[2].addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let c = client::h1();
    let mut order = Vec::new();
    for _ in 0..30 {
        let res = call(&c, proxy.outbound(), "payment", "/").await;
        assert_eq!(res.status(), 200);
        order.push(upstream_name(&res).expect("x-upstream").to_string());
    }
    assert_eq!(ups.map(|u| u.requests()), [10, 10, 10]);
    for w in order.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["r0", "r1", "r2"], "{order:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_exactly_as_configured() {
    let up = Upstream::start("a").await;
    let fault_route = |name: &str, fault: &str| {
        format!(
            "      - {{name: {name}, match: {{headers: [{{name: x-fault, value: {name}}}]}}, fault: {fault}}}\n"
        )
    };
    let snapshot = format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints: [{{address: {}}}]\n    routes:\n{}{}{}",
        up.addr,
        fault_route("abort", "{abort: {percent: 100, status: 418}}"),
        fault_route("delay", "{delay: {percent: 100, duration: 300ms}}"),
        fault_route("half", "{abort: {percent: 50, status: 500}}"),
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let (c, out) = (client::h1(), proxy.outbound());
    let route = |r: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut l = PAYMENT.to_vec();
        l.extend([("direction", "outbound"), ("route", r)]);
        l.extend_from_slice(extra);
        l
    };

    for _ in 0..10 {
        let res = call_with(&c, out, "payment", ("x-fault", "abort")).await;
        assert_eq!(res.status(), 418);
        assert_eq!(reason(&res), Some("fault-injected"));
    }
    assert_eq!(
        up.requests(),
        0,
        "aborted requests never reach the upstream"
    );
    assert_eq!(
        proxy
            .metric_or_zero(
                "outrigger_faults_injected_total",
                &route("abort", &[("kind", "abort")])
            )
            .await,
        10.0
    );
    eventually(Duration::from_secs(5), "418s counted", || async {
        let n = proxy
            .metric_or_zero(
                "outrigger_requests_total",
                &route("abort", &[("status_code", "418")]),
            )
            .await;
        (n == 10.0).then_some(())
    })
    .await;

    for _ in 0..3 {
        let started = Instant::now();
        let res = call_with(&c, out, "payment", ("x-fault", "delay")).await;
        let took = started.elapsed();
        assert_eq!(res.status(), 200);
        assert_eq!(reason(&res), None);
        assert!(took >= Duration::from_millis(300), "took only {took:?}");
    }
    assert_eq!(up.requests(), 3);
    assert_eq!(
        proxy
            .metric_or_zero(
                "outrigger_faults_injected_total",
                &route("delay", &[("kind", "delay")])
            )
            .await,
        3.0
    );

    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut aborted = 0;
                for _ in 0..100 {
                    let res = call_with(&c, out, "payment", ("x-fault", "half")).await;
                    match res.status().as_u16() {
                        200 => {}
                        500 => {
                            assert_eq!(reason(&res), Some("fault-injected"));
                            aborted += 1;
                        }
                        s => panic!("unexpected {s}"),
                    }
                }
                aborted
            })
        })
        .collect();
    let mut aborted = 0;
    for t in tasks {
        aborted += t.await.expect("client task");
    }
    // Binomial(400, 0.5): sd 10, so ±50 is 5 sd.
    assert!((150..=250).contains(&aborted), "{aborted} of 400 aborted");
    assert_eq!(up.requests(), 3 + 400 - aborted);
    assert_eq!(
        proxy
            .metric_or_zero(
                "outrigger_faults_injected_total",
                &route("half", &[("kind", "abort")])
            )
            .await,
        aborted as f64
    );
    eprintln!("faults: 50% abort hit {aborted} of 400");
}

/// 20 requests as fast as one keep-alive connection allows; returns (200s, elapsed).
async fn burst(
    c: &TestClient,
    addr: SocketAddr,
    host: &str,
) -> (usize, Duration, Vec<Response<Bytes>>) {
    let started = Instant::now();
    let mut ok = 0;
    let mut refused = Vec::new();
    for _ in 0..20 {
        let res = call(c, addr, host, "/").await;
        if res.status() == 200 {
            ok += 1;
        } else {
            refused.push(res);
        }
    }
    (ok, started.elapsed(), refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_admit_the_burst_then_429() {
    let up = Upstream::start("app").await;
    let snapshot = format!(
        "service: order\n\
         inbound: {{app: {a}, rate_limit: {{requests_per_second: 5, burst: 5}}}}\n\
         destinations:\n  - name: payment\n    endpoints: [{{address: {a}}}]\n    routes:\n      - {{name: limited, match: {{path_prefix: /}}, rate_limit: {{requests_per_second: 5, burst: 5}}}}\n",
        a = up.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let c = client::h1();

    for (direction, addr, route) in [
        ("outbound", proxy.outbound(), "limited"),
        ("inbound", proxy.inbound(), "default"),
    ] {
        let before = up.requests();
        let (ok, took, refused) = burst(&c, addr, "payment").await;
        // The burst of 5, plus at most what refilled at 5/s while it ran.
        let most = 5 + (5.0 * took.as_secs_f64()).floor() as usize;
        assert!(
            (5..=most).contains(&ok),
            "{direction}: {ok} of 20 admitted in {took:?}"
        );
        for res in &refused {
            assert_eq!(res.status(), 429, "{direction}");
            assert_eq!(reason(res), Some("rate-limited"), "{direction}");
        }
        assert_eq!(up.requests() - before, ok, "{direction}");
        let labels = [
            ("direction", direction),
            ("service", "order"),
            ("route", route),
        ];
        assert_eq!(
            proxy
                .metric_or_zero("outrigger_rate_limited_total", &labels)
                .await,
            (20 - ok) as f64,
            "{direction}"
        );
        // It refills: a request gets through again soon.
        eventually(Duration::from_secs(2), "the bucket to refill", || async {
            (call(&c, addr, "payment", "/").await.status() == 200).then_some(())
        })
        .await;
        eprintln!("rate limit {direction}: {ok} of 20 admitted in {took:?}");
    }
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
