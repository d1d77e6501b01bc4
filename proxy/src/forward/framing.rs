//! The upstream response's framing, as RFC 9112 §6.3 has an intermediary pass it on.
//!
//! hyper's client already reads the upstream's message by §6.3: a response to HEAD and any
//! 1xx, 204 or 304 ends at its head whatever its headers say (bytes after it make the
//! connection fail rather than be reused); Transfer-Encoding overrides Content-Length; a
//! Content-Length that is invalid or differs between fields is an error that closes the
//! connection (the client gets a 502); with neither, the body runs until the upstream
//! closes. What is left is the framing the message is sent on with, which belongs to the
//! client's hop, not the upstream's: hyper frames it again (Content-Length, chunked, or
//! HTTP/2 frames) once the upstream's framing headers are out of the way.

use crate::error::ProxyError;
use http::header::{self, HeaderMap, HeaderValue};
use http::Response;

/// Makes the upstream's response head fit to relay, or refuses it.
pub fn relay<B>(res: &mut Response<B>) -> Result<(), ProxyError> {
    let headers = res.headers_mut();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // Only chunked was decoded; another coding would reach the client still applied and
        // no longer named (Transfer-Encoding is this hop's), so the body would be garbage.
        if !only_chunked(headers) {
            return Err(ProxyError::UpstreamFraming);
        }
        // §6.3 (3): an intermediary that forwards such a message MUST remove Content-Length,
        // which is not the length of what was decoded.
        headers.remove(header::CONTENT_LENGTH);
    } else {
        single_content_length(headers);
    }
    Ok(())
}

/// Whether every coding named is `chunked`, once (RFC 9112 §7: it MUST NOT be applied twice).
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty());
    codings
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// hyper accepts a Content-Length repeated with one value (`5, 5`, or two fields) as §6.3 (5)
/// allows; the client gets it once.
fn single_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return;
    };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let one = first
        .as_bytes()
        .split(|b| *b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .and_then(|v| HeaderValue::from_bytes(v).ok());
    if let Some(one) = one {
        headers.insert(header::CONTENT_LENGTH, one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder();
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("response")
    }

    #[test]
    fn transfer_encoding_overrides_content_length_which_is_removed() {
        let mut r = res(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        assert_eq!(relay(&mut r), Ok(()));
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn a_coding_other_than_chunked_is_refused() {
        for te in [
            &["gzip"][..],
            &["gzip, chunked"],
            &["gzip", "chunked"],
            &["chunked, chunked"],
        ] {
            let pairs: Vec<_> = te.iter().map(|v| ("transfer-encoding", *v)).collect();
            assert_eq!(
                relay(&mut res(&pairs)),
                Err(ProxyError::UpstreamFraming),
                "{te:?}"
            );
        }
        let mut r = res(&[("transfer-encoding", " Chunked ")]);
        assert_eq!(relay(&mut r), Ok(()));
    }

    #[test]
    fn a_repeated_content_length_goes_on_once() {
        for cl in [&["5", "5"][..], &["5, 5"], &["5,5", "5"]] {
            let pairs: Vec<_> = cl.iter().map(|v| ("content-length", *v)).collect();
            let mut r = res(&pairs);
            assert_eq!(relay(&mut r), Ok(()));
            let got: Vec<_> = r.headers().get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(got, ["5"], "{cl:?}");
        }
        let mut r = res(&[("content-length", "7")]);
        assert_eq!(relay(&mut r), Ok(()));
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "7");
    }
}
