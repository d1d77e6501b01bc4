//! Benchmarks of the Outrigger proxy's per-request hot path.
//!
//! The criterion benches live in `benches/` (`cargo bench -p outrigger-bench`); this library
//! holds the fixtures they share: a realistic [`Snapshot`] (50 destinations, each with 3 hosts,
//! 2 endpoint versions split 90/10 and 5 routes), its compiled form, and browser-like request
//! headers.
//! `proxybench.sh` runs the built proxy through the shared loopback comparison kit.
#![forbid(unsafe_code)]

use http::{HeaderMap, HeaderName, HeaderValue};
use outrigger_config::{ProxySettings, Snapshot};
use outrigger_proxy::routing::Compiled;
use outrigger_proxy::snapshot::CurrentSnapshot;
use outrigger_proxy::telemetry::metrics::Metrics;
use outrigger_proxy::telemetry::Telemetry;
use std::fmt::Write;
use std::sync::Arc;

/// Destinations in [`snapshot`].
pub const DESTINATIONS: usize = 50;

/// The service the benchmarked sidecar runs beside.
pub const SERVICE: &str = "frontend";

/// A sidecar snapshot as a mid-sized mesh would push it: destinations `svc-0` … `svc-49`, each
/// reachable as `svc-N`, `svc-N.ns` and `svc-N.ns.svc.cluster.local`, with a stable (`v1`) and
/// a canary (`v2`) endpoint, a 90/10 canary split between them (no sticky header: each request
/// draws), and five routes tried in this order before the implied `default`:
///
/// | route | match |
/// |---|---|
/// | `checkout-canary` | prefix `/api/checkout`, `POST`, header `x-canary: always` |
/// | `checkout` | prefix `/api/checkout`, `POST` |
/// | `items` | prefix `/api/items`, `GET` or `HEAD` |
/// | `grpc` | prefix `/outrigger.`, header `content-type: application/grpc` |
/// | `health` | exact `/healthz` |
///
/// Built from YAML through the same loader a static sidecar file uses (validated), so fields
/// added to the config types later take their defaults here.
pub fn snapshot() -> Snapshot {
    outrigger_config::from_yaml_validated(&snapshot_yaml())
        .unwrap_or_else(|e| panic!("the bench snapshot is valid: {e}"))
}

/// The YAML text of [`snapshot`].
pub fn snapshot_yaml() -> String {
    let mut y = format!("version: 1\nservice: {SERVICE}\ndestinations:\n");
    for i in 0..DESTINATIONS {
        let _ = write!(
            y,
            "  - name: svc-{i}
    hosts: [svc-{i}, svc-{i}.ns, svc-{i}.ns.svc.cluster.local]
    protocol: http1
    connect_timeout: 1s
    split: [{{ version: v1, weight: 90 }}, {{ version: v2, weight: 10 }}]
    endpoints:
      - {{ address: '10.0.{i}.1:8080', version: v1 }}
      - {{ address: '10.0.{i}.2:8080', version: v2 }}
    routes:
      - name: checkout-canary
        match:
          path_prefix: /api/checkout
          methods: [POST]
          headers: [{{ name: x-canary, value: always }}]
        timeout: 5s
      - name: checkout
        match: {{ path_prefix: /api/checkout, methods: [POST] }}
        timeout: 5s
      - name: items
        match: {{ path_prefix: /api/items, methods: [GET, HEAD] }}
        timeout: 5s
      - name: grpc
        match:
          path_prefix: /outrigger.
          headers: [{{ name: content-type, value: application/grpc }}]
        timeout: 5s
      - name: health
        match: {{ path_exact: /healthz }}
        timeout: 5s
"
        );
    }
    y
}

/// [`snapshot`] compiled by [`CurrentSnapshot::apply`], as the proxy applies every snapshot.
/// Going through it rather than `routing::compile::Compiler` keeps the fixture independent of
/// which registries the compiler borrows. The metric handles stay valid after the
/// `CurrentSnapshot` and `Telemetry` are gone.
pub fn compiled() -> Arc<Compiled> {
    let telemetry = Telemetry::new(&ProxySettings::default(), None, Metrics::new());
    let current = CurrentSnapshot::new(None);
    current.apply(snapshot(), "bench", &telemetry);
    current.current().expect("a snapshot was just applied")
}

/// The request headers a browser sends for a same-origin `fetch` (12 headers, no
/// `Connection`, no `x-request-id`, no `x-forwarded-for`).
pub fn browser_headers() -> HeaderMap {
    headers(&[
        ("host", "svc-37.ns.svc.cluster.local:8080"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://shop.example.com/cart"),
        ("origin", "https://shop.example.com"),
        (
            "cookie",
            "session=3f9a1c2e7b5d4f60a8e1; cart=17; consent=analytics%3D0",
        ),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-origin"),
        ("priority", "u=4"),
    ])
}

/// [`browser_headers`] plus the `Connection: keep-alive` an HTTP/1.1 browser adds (13).
pub fn browser_headers_with_connection() -> HeaderMap {
    let mut h = browser_headers();
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("keep-alive"),
    );
    h
}

/// A header map from (name, value) pairs, appended in order. Panics on invalid input.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(pairs.len());
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(v).expect("valid header value"),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn snapshot_is_as_documented() {
        let s = snapshot();
        assert_eq!(s.destinations.len(), DESTINATIONS);
        for d in &s.destinations {
            assert_eq!(
                (d.hosts.len(), d.endpoints.len(), d.routes.len()),
                (3, 2, 5)
            );
        }
    }

    #[test]
    fn compiled_routes_as_documented() {
        let c = compiled();
        let d = c
            .outbound
            .lookup(Some("svc-37.ns.svc.cluster.local:8080"))
            .expect("known authority");
        assert_eq!(&*d.name, "svc-37");
        assert!(c.outbound.lookup(Some("unknown.example.com")).is_none());
        let h = browser_headers();
        let mut canary = h.clone();
        canary.insert("x-canary", HeaderValue::from_static("always"));
        let route = |m: Method, p: &str, h: &HeaderMap| d.route(&m, p, h).name.to_string();
        assert_eq!(
            route(Method::POST, "/api/checkout/cart", &canary),
            "checkout-canary"
        );
        assert_eq!(route(Method::POST, "/api/checkout/cart", &h), "checkout");
        assert_eq!(route(Method::GET, "/api/items/42", &h), "items");
        assert_eq!(route(Method::GET, "/healthz", &h), "health");
        assert_eq!(route(Method::GET, "/static/app.js", &h), "default");
        assert!(d.routes.iter().all(|r| r.split.is_some()));
        assert_eq!(browser_headers().len(), 12);
    }
}
