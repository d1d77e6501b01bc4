//! Two views of the same latencies agree (issue 6, point 6): the exact p50/p95/p99 that
//! `/stats` computes from its HDR histograms, and what a real Prometheus estimates with
//! `histogram_quantile` over the proxy's latency histogram. The estimate interpolates inside
//! one bucket, so "agree" means: the exact value lies in the bucket holding the estimate.
//!
//! Both views count the same requests only if they cover the same window. `increase(...[W])`
//! cannot: a series is born on its first request, so Prometheus's first sample of it already
//! holds requests that `increase` never sees, and it extrapolates to the range's edges. The
//! proxy starts inside this test and `/stats` keeps 300 s, so the counters since start (the
//! latest scrape) cover exactly the requests `/stats` holds; the test proves it by asserting
//! equal counts.

use outrigger_tests::client::{self, send};
use outrigger_tests::eventually;
use outrigger_tests::prometheus::{value, Prometheus};
use outrigger_tests::proxy::ProxyBuilder;
use outrigger_tests::upstream::Upstream;
use std::sync::Arc;
use std::time::Duration;

const REQUESTS: usize = 1000;
const CONCURRENCY: usize = 8;
const SELECTOR: &str = r#"job="quantiles", direction="outbound", dst_service="backend""#;

/// Upstream delay of request `i`: nine in ten fast (1–20 ms), one in ten slow (20–80 ms), so
/// p50, p95 and p99 land in different buckets.
fn delay_ms(i: usize) -> usize {
    if i % 10 < 9 {
        1 + (i * 7) % 20
    } else {
        20 + (i * 13) % 61
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_percentiles_fall_in_the_prometheus_histogram_quantile_bucket() {
    let upstream = Upstream::start("delays").await;
    let snapshot = format!(
        "service: quantiles\n\
         destinations:\n\
         \x20 - name: backend\n    hosts: [\"*\"]\n    endpoints: [{{address: {}}}]\n",
        upstream.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "stats_window: 300s\naccess_log: false")
        .spawn()
        .ready()
        .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s }}\n\
             scrape_configs:\n\
             \x20 - job_name: quantiles\n    static_configs: [{{ targets: [\"{}\"] }}]\n",
            proxy.admin
        ),
    )
    .expect("write prometheus.yml");
    let prom = Prometheus::start(&config, dir.path()).await;
    eventually(
        Duration::from_secs(60),
        "Prometheus to scrape the proxy",
        || {
            let prom = &prom;
            async move { (prom.scalar(r#"up{job="quantiles"}"#).await == Some(1.0)).then_some(()) }
        },
    )
    .await;

    // Traffic: REQUESTS calls, CONCURRENCY at a time, each with its scripted upstream delay.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outbound = proxy.outbound();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let c = client::h1();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= REQUESTS {
                    break;
                }
                let req =
                    client::request("GET", &format!("http://{outbound}/delay/{}", delay_ms(i)))
                        .header("host", "backend")
                        .body(client::empty())
                        .expect("request");
                assert_eq!(send(&c, req).await.status(), 200);
            }
        }));
    }
    for w in workers {
        w.await.expect("traffic worker");
    }

    // Both views have every request: /stats records when the response ends, Prometheus once
    // it has scraped after the last one.
    let n = REQUESTS as f64;
    let stats = eventually(
        Duration::from_secs(30),
        "/stats to count every request",
        || {
            let proxy = &proxy;
            async move {
                let (_, body) = proxy.admin_get("/stats").await;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                let row = v["destinations"]
                    .as_array()?
                    .iter()
                    .find(|r| r["direction"] == "outbound" && r["destination"] == "backend")?
                    .clone();
                (row["count"].as_f64() == Some(n)).then_some(row)
            }
        },
    )
    .await;
    let count = format!("sum(outrigger_request_duration_seconds_count{{{SELECTOR}}})");
    eventually(
        Duration::from_secs(60),
        "Prometheus to scrape after the last request",
        || {
            let (prom, count) = (&prom, &count);
            async move { (prom.scalar(count).await == Some(n)).then_some(()) }
        },
    )
    .await;
    let requests = format!("sum(outrigger_requests_total{{{SELECTOR}}})");
    assert_eq!(prom.scalar(&requests).await, Some(n), "requests counter");

    let buckets = format!("sum by (le) (outrigger_request_duration_seconds_bucket{{{SELECTOR}}})");
    let mut bounds: Vec<f64> = prom
        .query(&buckets)
        .await
        .expect("bucket query")
        .iter()
        .filter_map(|s| s["metric"]["le"].as_str()?.parse().ok())
        .collect();
    bounds.sort_by(f64::total_cmp);
    assert!(bounds.len() > 10, "bucket bounds: {bounds:?}");

    let mut report = Vec::new();
    let mut buckets_hit = Vec::new();
    for (q, key) in [(0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")] {
        let exact = stats[key].as_f64().expect("percentile in /stats") / 1000.0;
        let expr = format!("histogram_quantile({q}, {buckets})");
        let estimate = prom
            .query(&expr)
            .await
            .expect("histogram_quantile")
            .first()
            .and_then(value)
            .expect("an estimate");
        // The bucket (lower, upper] that holds the estimate; `le` is inclusive.
        let i = bounds
            .iter()
            .position(|le| *le >= estimate)
            .expect("estimate within the buckets");
        let (lower, upper) = (if i == 0 { 0.0 } else { bounds[i - 1] }, bounds[i]);
        report.push(format!(
            "p{}: /stats {exact:.4}s, Prometheus {estimate:.4}s in ({lower}, {upper}]",
            q * 100.0
        ));
        // HDR records whole microseconds and reports a value's highest equivalent at three
        // significant digits: up to 1/1024 above the sample, never below it by a microsecond.
        assert!(
            exact >= lower - 1e-6 && exact <= upper * (1.0 + 1.0 / 1024.0) + 1e-6,
            "p{}: the exact {exact}s is outside the bucket ({lower}, {upper}] of Prometheus's \
             estimate {estimate}s\n{}",
            q * 100.0,
            report.join("\n")
        );
        buckets_hit.push(upper);
    }
    buckets_hit.dedup();
    // The delays spread the quantiles over buckets: a test where all three share one bucket
    // would prove little.
    assert!(buckets_hit.len() >= 2, "{}", report.join("\n"));
    eprintln!("{}", report.join("\n"));
}
