//! Per-request routing: authority → destination (`AuthorityTable::lookup`), request → route
//! (`Dest::route`), canary split draw (`Split::choose`), endpoint choice (`balance::pick`), on
//! a compiled 50-destination snapshot.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use outrigger_bench::{browser_headers, compiled};
use outrigger_config::LoadBalancer;
use outrigger_proxy::balance;
use std::hint::black_box;

fn lookup(c: &mut Criterion) {
    let compiled = compiled();
    let table = &compiled.outbound;
    let mut g = c.benchmark_group("routing/lookup");
    for (name, authority) in [
        ("hit_fqdn_port", "svc-37.ns.svc.cluster.local:8080"),
        ("hit_short", "svc-37"),
        ("mixed_case", "Svc-37.NS.svc.cluster.local:8080"),
        ("miss", "unknown.example.com:8080"),
    ] {
        assert_eq!(table.lookup(Some(authority)).is_some(), name != "miss");
        g.bench_function(name, |b| {
            b.iter(|| table.lookup(black_box(Some(authority))))
        });
    }
    g.finish();
}

fn route(c: &mut Criterion) {
    let compiled = compiled();
    let dest = compiled
        .outbound
        .lookup(Some("svc-37.ns.svc.cluster.local:8080"))
        .expect("svc-37 is in the snapshot");
    let plain = browser_headers();
    let mut canary = plain.clone();
    canary.insert("x-canary", HeaderValue::from_static("always"));
    let mut g = c.benchmark_group("routing/route");
    let cases: [(&str, Method, &str, &HeaderMap, &str); 4] = [
        // Matches the first rule: prefix, method and header all checked.
        (
            "first",
            Method::POST,
            "/api/checkout/cart",
            &canary,
            "checkout-canary",
        ),
        // The first rule fails on the header scan, the second matches.
        (
            "header_miss_then_second",
            Method::POST,
            "/api/checkout/cart",
            &plain,
            "checkout",
        ),
        ("third", Method::GET, "/api/items/42", &plain, "items"),
        // Five rules fail, the implied catch-all answers.
        ("default", Method::GET, "/static/app.js", &plain, "default"),
    ];
    for (name, method, path, headers, expect) in cases {
        assert_eq!(&*dest.route(&method, path, headers).name, expect);
        g.bench_function(name, |b| {
            b.iter(|| {
                dest.route(black_box(&method), black_box(path), black_box(headers))
                    .name
                    .len()
            })
        });
    }
    g.finish();
}

/// Endpoint choice over the destination's two endpoints, both healthy, nothing to avoid: each
/// balancer on its own, and P2C restricted to the version a canary split chose.
fn pick(c: &mut Criterion) {
    let compiled = compiled();
    let dest = compiled
        .outbound
        .lookup(Some("svc-37"))
        .expect("svc-37 is in the snapshot");
    let mut g = c.benchmark_group("routing/pick");
    for (name, lb, version) in [
        ("p2c_ewma", LoadBalancer::P2cEwma, None),
        ("round_robin", LoadBalancer::RoundRobin, None),
        ("p2c_ewma_split_version", LoadBalancer::P2cEwma, Some(0)),
    ] {
        assert!(balance::pick(
            &dest.endpoints,
            (lb, dest.ewma_decay),
            &dest.rr,
            None,
            version
        )
        .is_some());
        g.bench_function(name, |b| {
            b.iter(|| {
                balance::pick(
                    &dest.endpoints,
                    (black_box(lb), dest.ewma_decay),
                    &dest.rr,
                    None,
                    black_box(version),
                )
            })
        });
    }
    g.finish();
}

/// The 90/10 canary split's draw for a first attempt (no sticky header in the request).
fn split(c: &mut Criterion) {
    let compiled = compiled();
    let headers = browser_headers();
    let dest = compiled
        .outbound
        .lookup(Some("svc-37"))
        .expect("svc-37 is in the snapshot");
    let route = dest.route(&Method::GET, "/api/items/42", &headers);
    let split = route.split.as_ref().expect("the fixture has a split");
    c.bench_function("routing/split_choose", |b| {
        b.iter(|| split.choose(black_box(&headers)))
    });
}

/// What `forward::handle` does for a first attempt between receiving the head and preparing
/// the upstream request: lookup, route, split draw, pick (the destination's own balancer),
/// metric handle for the chosen endpoint's version.
fn whole(c: &mut Criterion) {
    let compiled = compiled();
    let headers = browser_headers();
    let method = Method::GET;
    c.bench_function("routing/lookup_route_pick", |b| {
        b.iter(|| {
            let dest = compiled
                .outbound
                .lookup(black_box(Some("svc-37.ns.svc.cluster.local:8080")))?;
            let route = dest.route(&method, black_box("/api/items/42"), &headers);
            let version = route.split.as_ref().and_then(|s| s.choose(&headers));
            let pick = balance::pick(
                &dest.endpoints,
                (dest.lb, dest.ewma_decay),
                &dest.rr,
                None,
                version,
            )?;
            let endpoint = &dest.endpoints[pick.index];
            Some((route.metrics_for(Some(endpoint)).clone(), endpoint.addr))
        })
    });
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = lookup, route, pick, split, whole
}
criterion_main!(benches);
