//! Header handling on the way through: hop-by-hop removal (RFC 9110 §7.6.1),
//! `x-forwarded-for`, the `x-request-id` correlation id, the verified caller identity, and the
//! header-size limit.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The verified caller identity handed to the local app; always overwritten.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("x-outrigger-client-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message. Fixed ones plus whatever
/// `Connection` names. With `upgrade`, `Connection: upgrade` and `Upgrade` survive, because
/// the tunnel needs the next hop to see them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // `te: trailers` is the one TE value that means something end to end (gRPC needs it).
    // Read it first: an HTTP/1.1 client that sends TE also lists it in `Connection`.
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(header::TE);
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Makes `CLIENT_ID` say exactly `id`: every value that arrived is dropped, and with no
/// verified identity (plaintext) the header is absent.
pub fn set_client_id(headers: &mut HeaderMap, id: Option<&HeaderValue>) {
    match id {
        Some(v) => {
            headers.insert(CLIENT_ID, v.clone());
        }
        None => {
            headers.remove(CLIENT_ID);
        }
    }
}

/// True for an HTTP/1.1 request that asks to switch protocols (WebSocket and friends).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Appends the client's address to `x-forwarded-for`, folding repeated headers into one.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let mut value = String::with_capacity(64);
    for v in headers.get_all(&FORWARDED_FOR).iter() {
        if let Ok(s) = v.to_str() {
            value.push_str(s.trim());
            value.push_str(", ");
        }
    }
    use std::fmt::Write;
    let _ = write!(value, "{client}");
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(FORWARDED_FOR, v);
    }
}

/// The request's correlation id, generated (128 random bits, hex) when absent or empty.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        if !v.is_empty() {
            return v.clone();
        }
    }
    let id = new_request_id();
    headers.insert(REQUEST_ID, id.clone());
    id
}

pub(crate) fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    crate::hex::write_lower(&mut buf, fastrand::u128(..));
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Size of the header block as it would be on the wire (`name: value\r\n`), plus the target.
pub fn header_block_size(headers: &HeaderMap, uri: &http::Uri) -> usize {
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
    headers
        .iter()
        .fold(target, |acc, (n, v)| acc + n.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_fixed_and_listed_hop_by_hop_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_tunnelling() {
        let mut h = map(&[
            ("te", "trailers, deflate"),
            ("connection", "Upgrade, TE"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(wants_upgrade(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn client_id_replaces_every_arriving_value_or_is_absent() {
        let mut h = map(&[
            ("x-outrigger-client-id", "spiffe://forged/a"),
            ("x-outrigger-client-id", "spiffe://forged/b"),
        ]);
        let real = HeaderValue::from_static("spiffe://outrigger.local/service/checkout");
        set_client_id(&mut h, Some(&real));
        let got: Vec<_> = h.get_all(&CLIENT_ID).iter().collect();
        assert_eq!(got, [&real]);
        set_client_id(&mut h, None);
        assert!(!h.contains_key(&CLIENT_ID));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.1");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "::1");
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut h = map(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id);
    }
}
