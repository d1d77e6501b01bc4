//! The request as the upstream gets it: the downstream head rewritten once (hop-by-hop
//! headers out, `x-forwarded-for` in, the version and Host the endpoint's protocol needs),
//! then each attempt's request made from it, addressed to the endpoint picked for it.

use super::headers::{append_forwarded_for, strip_hop_by_hop};
use crate::body::RequestBody;
use crate::error::ProxyError;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderName, HeaderValue, Request, Uri, Version};
use outrigger_config::Protocol;
use std::net::SocketAddr;

/// Tells the upstream which attempt this is, when the request may be retried.
pub const ATTEMPT: HeaderName = HeaderName::from_static("x-outrigger-attempt");

/// Turns the downstream request head into the upstream one.
pub fn prepare(
    parts: &mut http::request::Parts,
    protocol: Protocol,
    client: SocketAddr,
    upgrade: bool,
) -> Result<(), ProxyError> {
    // The app's authority travels on: as Host to HTTP/1 endpoints, as `:authority` to HTTP/2
    // ones (which must not also get a Host that could differ). The target's authority is the
    // one the request was routed by, so it replaces a Host that says otherwise (an HTTP/1.1
    // absolute-form request; RFC 9112 §3.2.2 has a proxy regenerate Host from the target).
    if let Some(a) = parts.uri.authority() {
        let agrees = parts
            .headers
            .get(header::HOST)
            .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()));
        if !agrees {
            let v = HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest)?;
            parts.headers.insert(header::HOST, v);
        }
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    append_forwarded_for(&mut parts.headers, client.ip());
    match protocol {
        Protocol::Http1 => parts.version = Version::HTTP_11,
        Protocol::Http2 => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        }
    }
    Ok(())
}

/// One attempt's request: the prepared head, the URI authority, the attempt number.
pub fn attempt_request(
    head: &http::request::Parts,
    authority: &Authority,
    attempt: u32,
    numbered: bool,
    body: RequestBody,
) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    let pq = head
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    if numbered {
        req.headers_mut()
            .insert(ATTEMPT, HeaderValue::from(attempt));
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(req: Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    fn client() -> SocketAddr {
        "10.0.0.7:5000".parse().expect("addr")
    }

    #[test]
    fn http1_endpoints_get_host_and_no_hop_by_hop_headers() {
        let mut h = head(
            Request::get("http://payment:8080/charge")
                .version(Version::HTTP_2)
                .header(header::CONNECTION, "x-secret")
                .header("x-secret", "1")
                .header("keep-alive", "5")
                .body(())
                .expect("req"),
        );
        prepare(&mut h, Protocol::Http1, client(), false).expect("prepared");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers[header::HOST], "payment:8080");
        assert!(!h.headers.contains_key("x-secret"));
        assert!(!h.headers.contains_key("keep-alive"));
        assert_eq!(h.headers["x-forwarded-for"], "10.0.0.7");
    }

    #[test]
    fn an_absolute_form_target_replaces_a_host_that_disagrees() {
        let mut h = head(
            Request::get("http://payment:8080/charge")
                .header(header::HOST, "evil")
                .body(())
                .expect("req"),
        );
        prepare(&mut h, Protocol::Http1, client(), false).expect("prepared");
        let hosts: Vec<_> = h.headers.get_all(header::HOST).iter().collect();
        assert_eq!(hosts, ["payment:8080"]);
    }

    #[test]
    fn http2_endpoints_get_the_authority_and_no_host() {
        let mut h = head(
            Request::get("/charge")
                .header(header::HOST, "payment")
                .body(())
                .expect("req"),
        );
        prepare(&mut h, Protocol::Http2, client(), false).expect("prepared");
        assert_eq!(h.version, Version::HTTP_2);
        assert!(!h.headers.contains_key(header::HOST));
    }

    #[test]
    fn each_attempt_is_addressed_to_its_endpoint_and_numbered_when_retries_may_follow() {
        let h = head(
            Request::post("/charge?id=1")
                .header(header::HOST, "payment")
                .body(())
                .expect("req"),
        );
        let ep: Authority = "127.0.0.1:9001".parse().expect("authority");
        let req = attempt_request(&h, &ep, 2, true, RequestBody::Empty);
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri(), "http://127.0.0.1:9001/charge?id=1");
        assert_eq!(req.headers()[header::HOST], "payment");
        assert_eq!(req.headers()[ATTEMPT], "2");
        let req = attempt_request(&h, &ep, 1, false, RequestBody::Empty);
        assert!(!req.headers().contains_key(ATTEMPT));
    }
}
