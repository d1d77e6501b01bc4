//! The `Host` rules a request must pass before it is routed: at most one `Host`, with a
//! valid `host[:port]` value (RFC 9112 §3.2), and on HTTP/2 the same authority as
//! `:authority` (RFC 9113 §8.3.1). The proxy routes on `:authority` (or an absolute-form
//! target) before `Host`, while the app may read `Host`: two that disagree would let one
//! request be routed as one service and served as another.

use crate::error::ProxyError;
use http::{header, Request, Version};

/// Lets the request on, or names the `Host` rule it breaks.
pub fn check<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    // No Host at all is the destination step's to judge (HTTP/2 needs none).
    let Some(host) = hosts.next() else {
        return Ok(());
    };
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let host = host.to_str().map_err(|_| ProxyError::InvalidHost)?;
    if !is_valid(host) {
        return Err(ProxyError::InvalidHost);
    }
    // HTTP/1 absolute-form is not compared: RFC 9112 §3.2.2 has the target win, and the
    // rewrite replaces Host with it.
    if req.version() == Version::HTTP_2 {
        if let Some(authority) = req.uri().authority() {
            if !authority.as_str().eq_ignore_ascii_case(host) {
                return Err(ProxyError::HostMismatch);
            }
        }
    }
    Ok(())
}

/// `uri-host [":" port]` of RFC 9110 §7.2, without userinfo. Checked by hand because
/// `http::uri::Authority`'s parser is only reachable through constructors that copy the
/// value, and this runs on every request.
fn is_valid(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // IP-literal: the inside is left to the upstream; only its brackets are framing.
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b".:".contains(&b))
        {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("", port),
            None if after.is_empty() => ("", ""),
            None => return false,
        }
    } else {
        host.split_once(':').unwrap_or((host, ""))
    };
    // reg-name / IPv4address: unreserved, pct-encoded and sub-delims (RFC 3986 §3.2.2).
    let name_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    name_ok && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn one_valid_host_passes() {
        for h in [
            "payment",
            "payment:8080",
            "10.0.0.1:80",
            "[::1]:15001",
            "[fe80::1]",
            "",
        ] {
            assert_eq!(check(&req(Version::HTTP_11, "/", &[h])), Ok(()), "{h}");
        }
        assert_eq!(check(&req(Version::HTTP_11, "/", &[])), Ok(()));
    }

    #[test]
    fn two_host_headers_are_refused_even_when_equal() {
        for v in [Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(
                check(&req(v, "/", &["payment", "payment"])),
                Err(ProxyError::DuplicateHost)
            );
            assert_eq!(
                check(&req(v, "/", &["payment", "evil"])),
                Err(ProxyError::DuplicateHost)
            );
        }
    }

    #[test]
    fn an_invalid_host_value_is_refused() {
        for h in [
            "a b",
            "user@payment",
            "payment:80x",
            "[::1",
            "[::1]x",
            "[]",
            "pay/ment",
            "a:1:2",
        ] {
            assert_eq!(
                check(&req(Version::HTTP_11, "/", &[h])),
                Err(ProxyError::InvalidHost),
                "{h}"
            );
        }
    }

    #[test]
    fn http2_host_must_name_the_authority() {
        let h2 = |hosts: &[&str]| check(&req(Version::HTTP_2, "http://payment:8080/x", hosts));
        assert_eq!(h2(&["payment:8080"]), Ok(()));
        assert_eq!(
            h2(&["PAYMENT:8080"]),
            Ok(()),
            "host names are case-insensitive"
        );
        assert_eq!(h2(&[]), Ok(()));
        assert_eq!(h2(&["evil"]), Err(ProxyError::HostMismatch));
        assert_eq!(h2(&["payment"]), Err(ProxyError::HostMismatch));
        // HTTP/1.1 absolute-form: the target wins and replaces Host (see `rewrite`).
        assert_eq!(
            check(&req(Version::HTTP_11, "http://payment/x", &["evil"])),
            Ok(())
        );
    }
}
