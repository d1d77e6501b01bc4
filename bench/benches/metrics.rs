//! Telemetry per request: the Prometheus handles of one route (`StatusMetrics::record`) and the
//! sliding HDR histogram behind `/stats` (`SlidingHistogram::record`), the two things
//! `Record::finish` does when no access log is on. Plus the scrape: `Metrics::encode` with 50
//! label sets.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use http::StatusCode;
use outrigger_bench::SERVICE;
use outrigger_proxy::telemetry::metrics::Metrics;
use outrigger_proxy::telemetry::stats::SlidingHistogram;
use std::hint::black_box;
use std::time::Duration;

/// Latencies cycled through, so the histograms don't hit one bucket only.
const LATENCIES_US: [u64; 8] = [180, 420, 950, 1_700, 2_600, 4_100, 9_800, 31_000];

fn status_metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let sm = metrics.status_metrics(["outbound", SERVICE, "svc-37", "v1", "items"]);
    // Warm: the 200 handles are resolved on the first record, never again.
    sm.record(StatusCode::OK, 0.001);
    let mut i = 0usize;
    c.bench_function("metrics/status_metrics_record_warm", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let secs = LATENCIES_US[i % LATENCIES_US.len()] as f64 / 1e6;
            sm.record(black_box(StatusCode::OK), black_box(secs));
        })
    });
}

fn sliding(c: &mut Criterion) {
    // No runtime: tokio's Instant falls back to the std clock outside one.
    let h = SlidingHistogram::new(Duration::from_secs(60));
    h.record(Duration::from_millis(1));
    let mut i = 0usize;
    c.bench_function("metrics/sliding_histogram_record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            h.record(black_box(Duration::from_micros(
                LATENCIES_US[i % LATENCIES_US.len()],
            )));
        })
    });
    assert!(h.percentiles().count > 1);
}

fn encode(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut handles = Vec::new();
    for d in 0..25 {
        for version in ["v1", "v2"] {
            let dst = format!("svc-{d}");
            let sm = metrics.status_metrics(["outbound", SERVICE, &dst, version, "default"]);
            for (k, us) in LATENCIES_US.iter().enumerate() {
                let status = if k == 7 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                sm.record(status, *us as f64 / 1e6);
            }
            handles.push(sm);
        }
    }
    let text = metrics.encode();
    let series = text
        .lines()
        .filter(|l| l.starts_with("outrigger_requests_total{"))
        .count();
    // 50 label sets, each with a 200 and a 503.
    assert_eq!(series, 100, "{text}");
    c.bench_function("metrics/encode_50_label_sets", |b| {
        b.iter(|| metrics.encode().len())
    });
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = status_metrics, sliding, encode
}
criterion_main!(benches);
