//! A response's verdict under a retry policy: pass it on, or retry, by its status, by
//! `grpc-status` in its headers, or by `grpc-status` in its trailers, read ahead up to the
//! replay cap (the read frames are kept and sent on either way).

use super::policy::{CompiledRetry, Failure};
use crate::body::UpstreamBody;
use crate::grpc;
use http::Response;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use tokio::time::Instant;

pub enum Verdict {
    Done(Response<UpstreamBody>),
    Retry(Failure, Response<UpstreamBody>),
}

/// Reads the verdict; on the `last` attempt every response is final. Reading ahead for
/// trailers stops at `deadline`.
pub async fn judge(
    policy: &CompiledRetry,
    last: bool,
    res: Response<UpstreamBody>,
    deadline: Instant,
) -> Verdict {
    if last {
        return Verdict::Done(res);
    }
    let status = res.status();
    if policy.retryable_status(status) {
        return Verdict::Retry(Failure::Status(status), res);
    }
    if !policy.retries_grpc() || !grpc::is_grpc(res.headers()) {
        return Verdict::Done(res);
    }
    if let Some(code) = grpc::status(res.headers()) {
        return if policy.retryable_grpc(code) {
            Verdict::Retry(Failure::Grpc(code), res)
        } else {
            Verdict::Done(res)
        };
    }
    // The status comes in the trailers: read ahead, within bounds, to see it.
    let (parts, body) = res.into_parts();
    let UpstreamBody::Streaming(mut body) = body else {
        return Verdict::Done(Response::from_parts(parts, body));
    };
    let mut frames = VecDeque::new();
    let mut size = 0usize;
    let mut code = None;
    let mut ended = false;
    while size <= policy.buffer_bytes {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Some(t) = f.trailers_ref() {
                    code = grpc::status(t);
                }
                size += f.data_ref().map_or(0, |d| d.len());
                frames.push_back(f);
            }
            Ok(None) => {
                ended = true;
                break;
            }
            // An error or the deadline: hand the stream on as it is; the client sees it.
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    let res = Response::from_parts(
        parts,
        UpstreamBody::ReadAhead(frames, (!ended).then_some(body)),
    );
    match code {
        Some(c) if policy.retryable_grpc(c) => Verdict::Retry(Failure::Grpc(c), res),
        _ => Verdict::Done(res),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::{GrpcStatus, RetryOn, RetryPolicy};

    fn policy() -> CompiledRetry {
        CompiledRetry::new(&RetryPolicy {
            attempts: 3,
            on: vec![RetryOn::GatewayError],
            grpc_statuses: vec![GrpcStatus::Unavailable],
            ..RetryPolicy::default()
        })
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<UpstreamBody> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(UpstreamBody::ReadAhead(VecDeque::new(), None))
            .expect("response")
    }

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(1)
    }

    #[tokio::test]
    async fn a_listed_status_is_retried_unless_the_attempt_is_the_last() {
        let p = policy();
        assert!(matches!(
            judge(&p, false, response(503, &[]), later()).await,
            Verdict::Retry(Failure::Status(s), _) if s == 503
        ));
        assert!(matches!(
            judge(&p, true, response(503, &[]), later()).await,
            Verdict::Done(r) if r.status() == 503
        ));
        assert!(matches!(
            judge(&p, false, response(500, &[]), later()).await,
            Verdict::Done(_)
        ));
    }

    #[tokio::test]
    async fn a_grpc_status_in_the_headers_is_judged_by_the_grpc_list() {
        let p = policy();
        let grpc = |code: &'static str| {
            response(
                200,
                &[("content-type", "application/grpc"), ("grpc-status", code)],
            )
        };
        // 14 is UNAVAILABLE, listed; 5 is NOT_FOUND, not.
        assert!(matches!(
            judge(&p, false, grpc("14"), later()).await,
            Verdict::Retry(Failure::Grpc(14), _)
        ));
        assert!(matches!(
            judge(&p, false, grpc("5"), later()).await,
            Verdict::Done(_)
        ));
        // Not gRPC at all: a grpc-status header means nothing.
        let plain = response(200, &[("grpc-status", "14")]);
        assert!(matches!(
            judge(&p, false, plain, later()).await,
            Verdict::Done(_)
        ));
    }
}
