//! Header rewrites on every request (and `strip_hop_by_hop` on every response too), on a
//! browser-like header map. Mutating functions get a fresh clone per iteration from
//! `iter_batched`, outside the timed section.

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Uri};
use outrigger_bench::{browser_headers, browser_headers_with_connection};
use outrigger_proxy::forward::headers::{
    append_forwarded_for, ensure_request_id, header_block_size, strip_hop_by_hop, wants_upgrade,
    FORWARDED_FOR, REQUEST_ID,
};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Times `f` on a fresh clone of `base` per iteration; the clone and the drop are not timed.
///
/// A clone is as full as the original: a 12-header map sits exactly at `HeaderMap`'s usable
/// capacity (as one built with `with_capacity(12)` or `reserve(12)` does), so the first insert
/// of a new name regrows it, and that is timed. [`spare`] builds maps that have room instead.
fn mutating<R>(
    g: &mut Group<'_>,
    name: &str,
    base: &HeaderMap,
    f: impl FnMut(&mut HeaderMap) -> R,
) {
    timed(g, name, || base.clone(), f);
}

/// Like [`mutating`], on a copy of `base` with room for 8 more headers.
fn spare<R>(g: &mut Group<'_>, name: &str, base: &HeaderMap, f: impl FnMut(&mut HeaderMap) -> R) {
    let roomy = || {
        let mut h = HeaderMap::with_capacity(base.len() + 8);
        h.extend(base.iter().map(|(n, v)| (n.clone(), v.clone())));
        h
    };
    timed(g, name, roomy, f);
}

fn timed<R>(
    g: &mut Group<'_>,
    name: &str,
    mut setup: impl FnMut() -> HeaderMap,
    mut f: impl FnMut(&mut HeaderMap) -> R,
) {
    g.bench_function(name, |b| {
        b.iter_batched(
            &mut setup,
            |mut h| {
                let r = f(black_box(&mut h));
                (h, r)
            },
            BatchSize::SmallInput,
        )
    });
}

fn strip(c: &mut Criterion) {
    let plain = browser_headers();
    let keep_alive = browser_headers_with_connection();
    let mut listed = keep_alive.clone();
    listed.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-session-hint"),
    );
    listed.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    listed.insert("x-session-hint", HeaderValue::from_static("1"));
    let mut g = c.benchmark_group("headers/strip_hop_by_hop");
    mutating(&mut g, "no_connection", &plain, |h| {
        strip_hop_by_hop(h, false)
    });
    mutating(&mut g, "connection_keep_alive", &keep_alive, |h| {
        strip_hop_by_hop(h, false)
    });
    mutating(&mut g, "connection_lists_two", &listed, |h| {
        strip_hop_by_hop(h, false)
    });
    g.finish();
}

fn forwarded_for(c: &mut Criterion) {
    let plain = browser_headers();
    let mut chained = plain.clone();
    chained.insert(FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
    let mut g = c.benchmark_group("headers/append_forwarded_for");
    mutating(&mut g, "absent", &plain, |h| {
        append_forwarded_for(h, CLIENT)
    });
    spare(&mut g, "absent_spare_capacity", &plain, |h| {
        append_forwarded_for(h, CLIENT)
    });
    mutating(&mut g, "one_present", &chained, |h| {
        append_forwarded_for(h, CLIENT)
    });
    g.finish();
}

fn request_id(c: &mut Criterion) {
    let plain = browser_headers();
    let mut with_id = plain.clone();
    with_id.insert(
        REQUEST_ID,
        HeaderValue::from_static("0af7651916cd43dd8448eb211c80319c"),
    );
    let mut g = c.benchmark_group("headers/ensure_request_id");
    mutating(&mut g, "generate", &plain, ensure_request_id);
    spare(&mut g, "generate_spare_capacity", &plain, ensure_request_id);
    mutating(&mut g, "present", &with_id, ensure_request_id);
    g.finish();
}

fn read_only(c: &mut Criterion) {
    let plain = browser_headers();
    let keep_alive = browser_headers_with_connection();
    let uri: Uri = "/api/items/42?fields=name,price"
        .parse()
        .expect("valid uri");
    c.bench_function("headers/header_block_size", |b| {
        b.iter(|| header_block_size(black_box(&plain), black_box(&uri)))
    });
    let mut g = c.benchmark_group("headers/wants_upgrade");
    g.bench_function("no_connection", |b| {
        b.iter(|| wants_upgrade(black_box(&plain)))
    });
    g.bench_function("connection_keep_alive", |b| {
        b.iter(|| wants_upgrade(black_box(&keep_alive)))
    });
    g.finish();
}

/// The request-side rewrites `forward` does per request, together (no `Connection` header).
fn all_request(c: &mut Criterion) {
    let plain = browser_headers();
    let mut g = c.benchmark_group("headers");
    mutating(&mut g, "request_rewrites", &plain, |h| {
        let id = ensure_request_id(h);
        let upgrade = wants_upgrade(h);
        strip_hop_by_hop(h, upgrade);
        append_forwarded_for(h, CLIENT);
        id
    });
    spare(&mut g, "request_rewrites_spare_capacity", &plain, |h| {
        let id = ensure_request_id(h);
        let upgrade = wants_upgrade(h);
        strip_hop_by_hop(h, upgrade);
        append_forwarded_for(h, CLIENT);
        id
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = strip, forwarded_for, request_id, read_only, all_request
}
criterion_main!(benches);
