//! A route's retry policy, compiled: which failures are retryable, and whether retrying is
//! safe for this request. Connect failures and refused streams never reached the app, so they
//! are safe for any method; everything else only for idempotent methods unless the route opts
//! in.

use crate::client::{ConnectionLimit, UpstreamError};
use outrigger_config::{RetryOn, RetryPolicy};
use std::error::Error as StdError;

/// Why an attempt did not produce a usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectFailure,
    RefusedStream,
    Reset,
    PerTryTimeout,
    Status(http::StatusCode),
    Grpc(u16),
    /// The destination's connection limit was reached (not retried: that would add load).
    Overloaded,
    /// The peer sidecar proved another identity than the destination's (never retried on
    /// the same terms; counted as a gateway failure so the impostor gets ejected).
    PeerIdentityMismatch,
}

impl Failure {
    /// Failures that count against an endpoint for outlier detection.
    pub fn is_gateway_failure(self) -> bool {
        match self {
            Failure::ConnectFailure
            | Failure::Reset
            | Failure::PerTryTimeout
            | Failure::RefusedStream
            | Failure::PeerIdentityMismatch => true,
            Failure::Status(s) => is_gateway_status(s),
            Failure::Grpc(_) | Failure::Overloaded => false,
        }
    }

    /// Nothing reached the application, so any method may be retried.
    fn nothing_sent(self) -> bool {
        matches!(self, Failure::ConnectFailure | Failure::RefusedStream)
    }
}

pub fn is_gateway_status(s: http::StatusCode) -> bool {
    matches!(s.as_u16(), 502..=504)
}

pub struct CompiledRetry {
    pub attempts: u32,
    connect_failure: bool,
    refused_stream: bool,
    reset: bool,
    gateway_error: bool,
    server_error: bool,
    status_codes: Box<[u16]>,
    /// Bit n set: gRPC status n is retryable.
    grpc: u32,
    non_idempotent: bool,
    pub buffer_bytes: usize,
    pub backoff: super::backoff::Backoff,
}

impl CompiledRetry {
    pub fn new(p: &RetryPolicy) -> Self {
        let has = |o: RetryOn| p.on.contains(&o);
        Self {
            attempts: p.attempts.max(1),
            connect_failure: has(RetryOn::ConnectFailure),
            refused_stream: has(RetryOn::RefusedStream),
            reset: has(RetryOn::Reset),
            gateway_error: has(RetryOn::GatewayError),
            server_error: has(RetryOn::ServerError),
            status_codes: p.status_codes.clone().into(),
            grpc: p.grpc_statuses.iter().fold(0, |m, s| m | 1 << (*s as u32)),
            non_idempotent: p.non_idempotent,
            buffer_bytes: p.buffer_bytes,
            backoff: super::backoff::Backoff::new(&p.backoff),
        }
    }

    pub fn retries_grpc(&self) -> bool {
        self.grpc != 0
    }

    /// Whether a response status means "try again" under this policy.
    pub fn retryable_status(&self, s: http::StatusCode) -> bool {
        (self.gateway_error && is_gateway_status(s))
            || (self.server_error && s.is_server_error())
            || self.status_codes.contains(&s.as_u16())
    }

    pub fn retryable_grpc(&self, code: u16) -> bool {
        code < 32 && self.grpc & (1 << code) != 0
    }

    /// Whether the policy lists this failure at all.
    pub fn retryable(&self, f: Failure) -> bool {
        match f {
            Failure::ConnectFailure => self.connect_failure,
            Failure::RefusedStream => self.refused_stream,
            Failure::Reset => self.reset,
            Failure::PerTryTimeout => self.gateway_error || self.server_error,
            Failure::Status(s) => self.retryable_status(s),
            Failure::Grpc(c) => self.retryable_grpc(c),
            Failure::Overloaded | Failure::PeerIdentityMismatch => false,
        }
    }

    /// Whether retrying this request after this failure cannot do harm. Every gRPC call is
    /// a POST, so a listed gRPC status is the route owner saying "this one is safe to retry"
    /// (as gRPC's own retry policies are), whatever the method.
    pub fn safe(&self, method: &http::Method, f: Failure) -> bool {
        f.nothing_sent()
            || matches!(f, Failure::Grpc(_))
            || self.non_idempotent
            || is_idempotent(method)
    }
}

/// RFC 9110 §9.2.2.
pub fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What a failed upstream call means for retries and for the error the client sees.
pub fn classify(e: &UpstreamError) -> Failure {
    let (connect, first): (bool, &(dyn StdError + 'static)) = match e {
        UpstreamError::Connect(c) => (true, c.as_ref()),
        UpstreamError::Http(h) => (false, h),
    };
    let mut source: Option<&(dyn StdError + 'static)> = Some(first);
    let mut refused = false;
    let mut limit = false;
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            refused |= h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        limit |= s.downcast_ref::<ConnectionLimit>().is_some();
        source = s.source();
    }
    if limit {
        Failure::Overloaded
    } else if crate::tls::verify::is_identity_mismatch(first) {
        Failure::PeerIdentityMismatch
    } else if connect {
        Failure::ConnectFailure
    } else if refused {
        Failure::RefusedStream
    } else {
        Failure::Reset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, StatusCode};
    use outrigger_config::GrpcStatus;

    #[test]
    fn default_policy_only_retries_what_never_reached_the_app() {
        let p = CompiledRetry::new(&RetryPolicy::default());
        assert_eq!(p.attempts, 2);
        assert!(p.retryable(Failure::ConnectFailure));
        assert!(p.retryable(Failure::RefusedStream));
        assert!(!p.retryable(Failure::Reset));
        assert!(!p.retryable(Failure::Status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!p.retryable(Failure::PerTryTimeout));
        assert!(p.safe(&Method::POST, Failure::ConnectFailure));
        assert!(!p.safe(&Method::POST, Failure::Status(StatusCode::BAD_GATEWAY)));
        assert!(p.safe(&Method::PUT, Failure::Reset));
    }

    #[test]
    fn conditions_map_to_statuses() {
        let p = CompiledRetry::new(&RetryPolicy {
            on: vec![RetryOn::GatewayError],
            status_codes: vec![409],
            grpc_statuses: vec![GrpcStatus::Unavailable, GrpcStatus::ResourceExhausted],
            non_idempotent: true,
            ..RetryPolicy::default()
        });
        assert!(p.retryable(Failure::Status(StatusCode::BAD_GATEWAY)));
        assert!(p.retryable(Failure::Status(StatusCode::GATEWAY_TIMEOUT)));
        assert!(!p.retryable(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(p.retryable(Failure::Status(StatusCode::CONFLICT)));
        assert!(p.retryable(Failure::PerTryTimeout));
        assert!(p.retryable(Failure::Grpc(14)) && p.retryable(Failure::Grpc(8)));
        assert!(!p.retryable(Failure::Grpc(5)));
        assert!(p.safe(&Method::POST, Failure::Status(StatusCode::BAD_GATEWAY)));
        let strict = CompiledRetry::new(&RetryPolicy {
            grpc_statuses: vec![GrpcStatus::Unavailable],
            ..RetryPolicy::default()
        });
        assert!(
            strict.safe(&Method::POST, Failure::Grpc(14)),
            "listed gRPC statuses are retried for POST"
        );
        assert!(!strict.safe(&Method::POST, Failure::Reset));
        let all = CompiledRetry::new(&RetryPolicy {
            on: vec![RetryOn::ServerError],
            ..RetryPolicy::default()
        });
        assert!(all.retryable(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(!all.retryable(Failure::Overloaded));
    }
}
