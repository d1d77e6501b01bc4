//! Header handling on any header block: hop-by-hop stripping (with `Connection`-named
//! headers), upgrade detection, X-Forwarded-For, the header-block bound, trace context
//! (traceparent, tracestate, b3) and the Host checks. Input: `name: value` lines; the first
//! byte picks the flags.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use outrigger_proxy::forward::{headers, host};
use outrigger_proxy::trace::context;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut map = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    let _ = context::read(&map);
    let _ = headers::wants_upgrade(&map);
    let mut req = Request::new(());
    *req.headers_mut() = map.clone();
    let _ = host::check(&req);
    let _ = headers::header_block_size(&map, req.uri());
    let mut stripped = map.clone();
    headers::strip_hop_by_hop(&mut stripped, flags & 1 == 1);
    assert!(!stripped.contains_key(http::header::CONNECTION) || flags & 1 == 1);
    headers::append_forwarded_for(&mut stripped, std::net::IpAddr::from([10, 0, 0, flags]));
    let _ = headers::ensure_request_id(&mut stripped);
});
