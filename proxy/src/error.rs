//! Responses the proxy makes itself. Each carries `x-outrigger-error: <reason>` and a small JSON
//! body, so a 5xx never leaves anyone guessing whether the app or the mesh produced it.

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
        }
    }

    fn message(self) -> &'static str {
        match self {
            ProxyError::UnknownAuthority => "no destination service matches the request authority",
            ProxyError::MissingAuthority => "the request has no Host header or authority",
            ProxyError::NoEndpoints => "the destination service has no endpoints",
            ProxyError::NoInbound => "this sidecar has no local application configured",
            ProxyError::ConnectFailure => "could not connect to the upstream endpoint",
            ProxyError::UpstreamReset => "the upstream closed the connection before responding",
            ProxyError::Timeout => "the route timeout expired before the upstream responded",
            ProxyError::HeadersTooLarge => "the request header block exceeds the configured limit",
            ProxyError::BadRequest => "the request is malformed",
            ProxyError::Overloaded => "the destination is at its concurrency or connection limit",
            ProxyError::RateLimited => "the local rate limit was exceeded",
            ProxyError::PerTryTimeout => "the attempt timed out and no retry was possible",
            ProxyError::FaultInjected(_) => "fault injection aborted the request",
            ProxyError::PeerIdentityMismatch => {
                "the upstream proved another identity than the destination's"
            }
            ProxyError::Forbidden => "the caller's identity is not allowed to call this service",
            ProxyError::MtlsRequired => {
                "this service accepts only mutual TLS; the connection is closed"
            }
            ProxyError::DuplicateHost => "the request has more than one Host header",
            ProxyError::InvalidHost => "the Host header is not a valid host[:port]",
            ProxyError::HostMismatch => "the Host header disagrees with :authority",
            ProxyError::MalformedBody => {
                "the request body has invalid chunked framing or ended early; the connection is closed"
            }
            ProxyError::UpstreamFraming => {
                "the upstream response uses a transfer coding other than chunked"
            }
        }
    }

    /// The proxy ends the connection the request came on.
    pub fn closes_connection(self) -> bool {
        matches!(self, ProxyError::MtlsRequired | ProxyError::MalformedBody)
    }

    /// The response, with its JSON body.
    pub fn response(self) -> Response<Bytes> {
        let body = format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"}}\n",
            self.reason(),
            self.message()
        );
        let mut res = Response::new(Bytes::from(body));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}
