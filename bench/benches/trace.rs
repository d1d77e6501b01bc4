//! Trace propagation on every request: reading the incoming context (none, W3C, B3 single,
//! B3 multi) and writing the attempt's `traceparent` (plus B3 when asked). With no exporter
//! or an unsampled trace this is the whole per-request cost of tracing.

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};
use outrigger_bench::browser_headers;
use outrigger_config::TracingSettings;
use outrigger_proxy::trace::{propagate, Tracer};
use std::hint::black_box;

fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = browser_headers();
    h.reserve(8);
    for (n, v) in pairs {
        h.insert(*n, HeaderValue::from_static(v));
    }
    h
}

fn cases() -> Vec<(&'static str, HeaderMap)> {
    vec![
        ("none", with(&[])),
        (
            "w3c",
            with(&[
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "congo=t61rcWkgMzE"),
            ]),
        ),
        (
            "b3_single",
            with(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]),
        ),
        (
            "b3_multi",
            with(&[
                ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ]),
        ),
    ]
}

fn read(c: &mut Criterion) {
    let tracer = Tracer::new(&TracingSettings::default());
    let mut g = c.benchmark_group("trace/read");
    for (name, h) in cases() {
        g.bench_function(name, |b| b.iter(|| tracer.incoming(black_box(&h))));
    }
    g.finish();
}

/// What `forward` does per request: read, clear stale headers, write one attempt's headers.
fn per_request(c: &mut Criterion) {
    let tracer = Tracer::new(&TracingSettings::default());
    let mut g = c.benchmark_group("trace/per_request");
    for (name, h) in cases() {
        for b3 in [false, true] {
            let id = format!("{name}{}", if b3 { "+b3" } else { "" });
            g.bench_function(id, |b| {
                b.iter_batched(
                    // Room for the new headers, as on the request path, where the request id
                    // and x-forwarded-for have already grown the map (headers.rs times that).
                    || {
                        let mut roomy = HeaderMap::with_capacity(h.len() + 8);
                        roomy.extend(h.iter().map(|(n, v)| (n.clone(), v.clone())));
                        roomy
                    },
                    |mut h| {
                        let ctx = tracer.incoming(&h);
                        propagate::clear_stale(&mut h, &ctx);
                        propagate::inject(&mut h, &ctx, 0x1234_5678, b3);
                        h
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = read, per_request
}
criterion_main!(benches);
