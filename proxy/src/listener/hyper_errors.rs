//! hyper answers a request head it cannot parse itself, before any service sees it: a bare
//! `400 Bad Request` (bytes that are not HTTP, an invalid method, a bad header line) or `431`
//! (a head over its buffer, more headers than it takes), with no body and no reason. Every
//! other answer the mesh makes itself carries the reason, a message and a request id, so these
//! are replaced on their way out, in the connection's writer: a response written while a head
//! is arriving that never became a request can only be hyper's own.

use crate::error::{Detail, ProxyError};
use bytes::Bytes;

/// The status line of a response hyper wrote for a head it refused, if `buf` starts one.
fn refused_status(buf: &[u8]) -> Option<u16> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    matches!(code, 400 | 431).then_some(code)
}

/// Our answer in place of hyper's, as bytes on the wire; `None` leaves hyper's as it is.
pub(crate) fn replacement(buf: &[u8], header_limit: usize) -> Option<(ProxyError, Vec<u8>)> {
    let error = match refused_status(buf)? {
        431 => ProxyError::HeadersTooLarge,
        _ => ProxyError::MalformedRequest,
    };
    let detail = Detail {
        limit: Some(format!(
            "max_header_bytes ({header_limit} bytes) or {} headers",
            super::MAX_HEADERS
        )),
        request_id: Some(crate::forward::headers::new_request_id()),
        ..Detail::default()
    };
    let res = error.response(&detail);
    let status = res.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in res.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body: &Bytes = res.body();
    out.extend_from_slice(
        format!(
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    Some((error, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_refusals_are_replaced_and_ours_say_why() {
        assert_eq!(refused_status(b"HTTP/1.1 400 Bad Request\r\n"), Some(400));
        assert_eq!(
            refused_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            Some(431)
        );
        assert_eq!(refused_status(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(refused_status(b"garbage"), None);
        let (e, bytes) = replacement(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            65536,
        )
        .expect("replaced");
        assert_eq!(e, ProxyError::MalformedRequest);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.contains("x-outrigger-error: malformed-request\r\n"),
            "{text}"
        );
        assert!(text.contains("x-request-id: "), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["reason"], "malformed-request");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains("65536")),
            "{v}"
        );
    }
}
