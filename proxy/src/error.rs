//! Responses the proxy makes itself. Each carries `x-outrigger-error: <reason>`, the request's
//! `x-request-id`, and a JSON body in the one format the whole mesh answers with (the control
//! plane's API too): `{"reason", "message", "hint", "request_id"}`. The reason is stable and
//! machine-readable (the header, the access log's `error`, the metric label); the message names
//! the thing (the host, the destination, the endpoint, the limit); the hint, when there is a
//! likely fix, says it. Every reason is in the README with its cause and fix, and a test walks
//! [`ProxyError::ALL`] against it.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

/// Any error a body or connection may end with, as hyper and tower pass them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const ERROR_HEADER: &str = "x-outrigger-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No destination matches the request's authority.
    UnknownAuthority,
    /// The request has no authority at all (HTTP/1.1 without `Host`).
    MissingAuthority,
    /// The destination has no endpoints to send to.
    NoEndpoints,
    /// Inbound request but this sidecar has no local app configured.
    NoInbound,
    /// The TCP connection to the endpoint could not be made.
    ConnectFailure,
    /// The endpoint closed or reset the connection before a full response.
    UpstreamReset,
    /// The route's deadline passed before the response headers arrived.
    Timeout,
    /// The request header block is larger than `max_header_bytes`.
    HeadersTooLarge,
    /// The request cannot be forwarded as it is.
    BadRequest,
    /// A destination limit (in flight, pending, connections) was reached.
    Overloaded,
    /// A local rate limit refused the request.
    RateLimited,
    /// The last attempt's per-try deadline passed and no retry was possible.
    PerTryTimeout,
    /// Fault injection aborted the request with this status.
    FaultInjected(u16),
    /// The upstream sidecar's certificate names another identity than the destination's.
    PeerIdentityMismatch,
    /// The caller's identity is not on this service's allow-list.
    Forbidden,
    /// Strict mTLS is in force and the request came in plaintext; its connection is ended.
    MtlsRequired,
    /// The request has more than one `Host` header (RFC 9112 §3.2).
    DuplicateHost,
    /// The `Host` header is not a valid `host[:port]` (RFC 9112 §3.2).
    InvalidHost,
    /// An HTTP/2 request whose `Host` names another authority than `:authority`
    /// (RFC 9113 §8.3.1).
    HostMismatch,
    /// The client's request body failed before any response: bad chunked framing, or it
    /// ended before its declared length. The upstream request was aborted; the connection is
    /// ended, as RFC 9112 §6.3 asks after a framing error.
    MalformedBody,
    /// The upstream's response uses a transfer coding other than chunked, which the proxy
    /// would have to decode to relay (RFC 9112 §6.1).
    UpstreamFraming,
    /// A CONNECT request: the mesh forwards requests to services, it is not a forward proxy.
    MethodNotSupported,
    /// A request head hyper could not parse (bytes that are not HTTP, an invalid method or
    /// header): answered for hyper, which would otherwise send a bare 400.
    MalformedRequest,
}

/// What a self-made response can name, gathered on the request's way (cheaply: clones of
/// `Arc`s and header values) or at the error's site.
#[derive(Debug, Default, Clone)]
pub struct Detail {
    /// This sidecar's service.
    pub service: Option<std::sync::Arc<str>>,
    /// The request's authority, when the error is about it.
    pub authority: Option<String>,
    /// The destination service the request was routed to.
    pub destination: Option<std::sync::Arc<str>>,
    /// The endpoint the last attempt went to.
    pub endpoint: Option<std::net::SocketAddr>,
    /// The caller's identity, inbound.
    pub caller: Option<std::sync::Arc<str>>,
    /// The limit a request went over, e.g. `max_header_bytes (65536)`.
    pub limit: Option<String>,
    pub request_id: Option<HeaderValue>,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::UnknownAuthority => StatusCode::NOT_FOUND,
            ProxyError::MissingAuthority
            | ProxyError::BadRequest
            | ProxyError::DuplicateHost
            | ProxyError::InvalidHost
            | ProxyError::HostMismatch
            | ProxyError::MalformedBody => StatusCode::BAD_REQUEST,
            ProxyError::NoEndpoints | ProxyError::NoInbound => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailure
            | ProxyError::UpstreamReset
            | ProxyError::PeerIdentityMismatch
            | ProxyError::UpstreamFraming => StatusCode::BAD_GATEWAY,
            ProxyError::Forbidden | ProxyError::MtlsRequired => StatusCode::FORBIDDEN,
            ProxyError::MethodNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::MalformedRequest => StatusCode::BAD_REQUEST,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::FaultInjected(s) => {
                StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// The machine-readable reason: the header value and the metric/log label.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::UnknownAuthority => "unknown-authority",
            ProxyError::MissingAuthority => "missing-authority",
            ProxyError::NoEndpoints => "no-endpoints",
            ProxyError::NoInbound => "no-inbound",
            ProxyError::ConnectFailure => "connect-failure",
            ProxyError::UpstreamReset => "upstream-reset",
            ProxyError::Timeout => "timeout",
            ProxyError::HeadersTooLarge => "headers-too-large",
            ProxyError::BadRequest => "bad-request",
            ProxyError::Overloaded => "overloaded",
            ProxyError::RateLimited => "rate-limited",
            ProxyError::PerTryTimeout => "per-try-timeout",
            ProxyError::FaultInjected(_) => "fault-injected",
            ProxyError::PeerIdentityMismatch => "peer-identity-mismatch",
            ProxyError::Forbidden => "forbidden",
            ProxyError::MtlsRequired => "mtls-required",
            ProxyError::DuplicateHost => "duplicate-host",
            ProxyError::InvalidHost => "invalid-host",
            ProxyError::HostMismatch => "host-mismatch",
            ProxyError::MalformedBody => "malformed-body",
            ProxyError::UpstreamFraming => "upstream-framing",
            ProxyError::MethodNotSupported => "method-not-supported",
            ProxyError::MalformedRequest => "malformed-request",
        }
    }

    /// Every reason, for the README's list and the test that walks it.
    pub const ALL: &'static [ProxyError] = &[
        ProxyError::UnknownAuthority,
        ProxyError::MissingAuthority,
        ProxyError::NoEndpoints,
        ProxyError::NoInbound,
        ProxyError::ConnectFailure,
        ProxyError::UpstreamReset,
        ProxyError::Timeout,
        ProxyError::HeadersTooLarge,
        ProxyError::BadRequest,
        ProxyError::Overloaded,
        ProxyError::RateLimited,
        ProxyError::PerTryTimeout,
        ProxyError::FaultInjected(503),
        ProxyError::PeerIdentityMismatch,
        ProxyError::Forbidden,
        ProxyError::MtlsRequired,
        ProxyError::DuplicateHost,
        ProxyError::InvalidHost,
        ProxyError::HostMismatch,
        ProxyError::MalformedBody,
        ProxyError::UpstreamFraming,
        ProxyError::MethodNotSupported,
        ProxyError::MalformedRequest,
    ];

    /// The one-line message, naming what `d` knows, and the likely fix.
    pub fn explain(self, d: &Detail) -> (String, Option<String>) {
        let dest = d.destination.as_deref().unwrap_or("the destination");
        let service = d.service.as_deref().unwrap_or("this service");
        let at = d
            .endpoint
            .map(|e| format!("'s endpoint {e}"))
            .unwrap_or_else(|| "'s endpoint".into());
        let explain = |a: &str, b: &str| format!("outrigger explain {a} {b}");
        let (message, hint): (String, Option<String>) = match self {
            ProxyError::UnknownAuthority => {
                let host = d.authority.as_deref().unwrap_or("");
                let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
                (
                    format!("{service} calls no service named {host:?}"),
                    Some(format!(
                        "the mesh routes by Host: check the name, and that {name} is in {service}'s calls ({})",
                        explain(service, name)
                    )),
                )
            }
            ProxyError::MissingAuthority => (
                "the request has no Host header or :authority, so it names no service".into(),
                Some("send Host: SERVICE (the service's name)".into()),
            ),
            ProxyError::NoEndpoints => (
                format!("{dest} has no endpoints"),
                Some(format!(
                    "start an instance of {dest}, or see what is registered (outrigger check)"
                )),
            ),
            ProxyError::NoInbound => (
                format!("the sidecar of {service} fronts no local app"),
                Some("start the sidecar with --app ADDR (or snapshot.inbound.app)".into()),
            ),
            ProxyError::ConnectFailure => (
                format!("could not connect to {dest}{at}"),
                Some(format!(
                    "the instance may be down or not listening; {}",
                    explain(service, dest)
                )),
            ),
            ProxyError::UpstreamReset => (
                format!("{dest}{at} closed the connection before a full response"),
                Some(format!("see {dest}'s log for a crash or a restart")),
            ),
            ProxyError::Timeout => (
                format!("{dest} did not answer within the route's timeout"),
                Some(format!(
                    "see why {dest} is slow (outrigger top), or raise the route's timeout ({})",
                    explain(service, dest)
                )),
            ),
            ProxyError::HeadersTooLarge => (
                format!(
                    "the request's header block is over the limit{}",
                    d.limit.as_deref().map(|l| format!(" of {l}")).unwrap_or_default()
                ),
                Some("send fewer or smaller headers, or raise proxy.max_header_bytes".into()),
            ),
            ProxyError::BadRequest => (
                "the request cannot be forwarded as it is".into(),
                None,
            ),
            ProxyError::Overloaded => (
                format!("{dest} is at its limit of requests in flight, pending requests or connections"),
                Some(format!(
                    "add instances of {dest}, or raise its Policy's limits ({})",
                    explain(service, dest)
                )),
            ),
            ProxyError::RateLimited => (
                format!("the rate limit on the way to {dest} was exceeded"),
                Some("slow down, or raise the route's (or the inbound policy's) rate_limit".into()),
            ),
            ProxyError::PerTryTimeout => (
                format!("the attempt at {dest}{at} timed out and no retry was possible"),
                Some("the retry budget or attempts ran out; raise per_try_timeout or see why it is slow".into()),
            ),
            ProxyError::FaultInjected(_) => (
                format!("fault injection on the route to {dest} aborted the request"),
                Some("a route's fault.abort is set; remove it when the test is over".into()),
            ),
            ProxyError::PeerIdentityMismatch => (
                format!("{dest}{at} proved another identity than {dest}'s"),
                Some("an address serves another service than the registry says: see outrigger check".into()),
            ),
            ProxyError::Forbidden => {
                let who = d.caller.as_deref().unwrap_or("a caller without an identity");
                (
                    format!("{who} may not call {service}"),
                    Some(format!("add its service to {service}'s Policy allow list")),
                )
            }
            ProxyError::MtlsRequired => (
                format!("{service} takes only mutual TLS (strict); this plaintext connection is closed"),
                Some("call through your own sidecar, which speaks mTLS to this one".into()),
            ),
            ProxyError::DuplicateHost => (
                "the request has more than one Host header".into(),
                Some("send exactly one Host header".into()),
            ),
            ProxyError::InvalidHost => (
                format!(
                    "the Host header {:?} is not a valid host[:port]",
                    d.authority.as_deref().unwrap_or("")
                ),
                Some("send Host: SERVICE or SERVICE:PORT".into()),
            ),
            ProxyError::HostMismatch => (
                "the Host header disagrees with :authority".into(),
                Some("send one authority, or the same in both".into()),
            ),
            ProxyError::MalformedBody => (
                "the request body has invalid chunked framing or ended early; the connection is closed".into(),
                None,
            ),
            ProxyError::UpstreamFraming => (
                format!("{dest}{at} answered with a transfer coding other than chunked"),
                Some(format!("make {dest} send chunked or a Content-Length")),
            ),
            ProxyError::MethodNotSupported => (
                "CONNECT is not proxied: the mesh forwards requests to services, it is not a forward proxy".into(),
                Some("call the service by name (http://SERVICE/...), or unset the app's proxy variables".into()),
            ),
            ProxyError::MalformedRequest => (
                format!(
                    "the request head is not valid HTTP/1.1 (bytes that are not HTTP, an invalid method or header{})",
                    d.limit.as_deref().map(|l| format!(", or over {l}")).unwrap_or_default()
                ),
                None,
            ),
        };
        (message, hint)
    }

    /// The proxy ends the connection the request came on.
    pub fn closes_connection(self) -> bool {
        matches!(self, ProxyError::MtlsRequired | ProxyError::MalformedBody)
    }

    /// The response: status, the reason header, the request id, and the JSON body.
    pub fn response(self, d: &Detail) -> Response<Bytes> {
        let (message, hint) = self.explain(d);
        let request_id = d.request_id.as_ref().and_then(|v| v.to_str().ok());
        let mut body = serde_json::json!({"reason": self.reason(), "message": message});
        if let Some(h) = hint {
            body["hint"] = h.into();
        }
        if let Some(id) = request_id {
            body["request_id"] = id.into();
        }
        let mut text = body.to_string();
        text.push('\n');
        let mut res = Response::new(Bytes::from(text));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(id) = &d.request_id {
            h.insert(crate::forward::headers::REQUEST_ID, id.clone());
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README lists every reason with its status, cause and fix: walked here, so a new
    /// reason cannot go unlisted, nor a listed one drift from the code.
    #[test]
    fn every_reason_is_in_the_readme_with_its_status() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Errors the proxy makes itself")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            // The control plane's table follows; its own test walks it.
            .and_then(|s| s.split("The control plane's API answers").next())
            .unwrap_or_default();
        for e in ProxyError::ALL {
            let row = section
                .lines()
                .find(|l| l.contains(&format!("| `{}` |", e.reason())))
                .unwrap_or_else(|| panic!("README lists no `{}`", e.reason()));
            let status = match e {
                ProxyError::FaultInjected(_) => "configured".to_string(),
                _ => e.status().as_u16().to_string(),
            };
            assert!(
                row.starts_with(&format!("| {status} |")),
                "README's status for `{}` is not {status}: {row}",
                e.reason()
            );
            assert_eq!(
                row.matches(" | ").count(),
                3,
                "status, reason, cause, fix: {row}"
            );
        }
        let listed = section
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains("| `"))
            .count();
        assert_eq!(
            listed,
            ProxyError::ALL.len(),
            "a README row names no reason the proxy has"
        );
    }

    #[test]
    fn every_response_names_what_it_knows_and_carries_the_request_id() {
        let d = Detail {
            service: Some("order".into()),
            authority: Some("paymnet".into()),
            destination: Some("payment".into()),
            endpoint: Some("10.0.0.5:15006".parse().expect("addr")),
            request_id: Some(HeaderValue::from_static("abc123")),
            ..Detail::default()
        };
        for e in ProxyError::ALL {
            let res = e.response(&d);
            assert_eq!(res.headers()[ERROR_HEADER], e.reason());
            assert_eq!(res.headers()["x-request-id"], "abc123");
            let v: serde_json::Value = serde_json::from_slice(res.body()).expect("json");
            assert_eq!(v["reason"], e.reason());
            assert_eq!(v["request_id"], "abc123");
            assert!(
                v["message"].as_str().is_some_and(|m| !m.contains('\n')),
                "{v}"
            );
        }
        let (m, hint) = ProxyError::UnknownAuthority.explain(&d);
        assert!(m.contains("\"paymnet\"") && m.contains("order"), "{m}");
        assert!(hint.is_some_and(|h| h.contains("order's calls")));
        let (m, _) = ProxyError::ConnectFailure.explain(&d);
        assert!(m.contains("payment's endpoint 10.0.0.5:15006"), "{m}");
    }
}
