//! One attempt, the service the retry layer drives: the canary split picks a version (a
//! fresh draw on retries), the balancer an endpoint (not the one the last attempt failed
//! on), then the request goes through the [`SendUpstream`] seam under the per-try timeout,
//! and its outcome feeds the endpoint's latency estimate and outlier detection.
//!
//! The per-try timeout is `tokio::time::timeout_at` on a deadline that is the earlier of the
//! try's and the route's, rather than tower's `Timeout`, which would add a second timer per
//! attempt and hide which of the two fired.

use super::rewrite::attempt_request;
use super::telemetry::RequestTelemetry;
use super::upstream::SendUpstream;
use crate::balance;
use crate::body::UpstreamBody;
use crate::concurrency::Overload;
use crate::endpoint::outlier::{ProbeSlot, Transition};
use crate::error::ProxyError;
use crate::retry::layer::{Attempt, Tried, Try};
use crate::retry::policy::{is_gateway_status, Failure};
use crate::retry::verdict::{judge, Verdict};
use crate::routing::{Dest, EndpointTarget, RouteEntry};
use crate::telemetry::metrics::StatusMetrics;
use crate::trace::export::Pending;
use crate::trace::span::ErrorType;
use crate::trace::{new_span_id, propagate};
use http::uri::Authority;
use http::Response;
use std::sync::{Arc, PoisonError};
use tokio::time::Instant;

/// The attempts of one request to one destination over one route.
pub struct Attempts<'s, 'c, U> {
    dest: &'s Dest,
    route: &'s RouteEntry,
    /// The prepared request head every attempt is made from.
    head: &'c http::request::Parts,
    /// HTTP/2 endpoints get the app's authority as `:authority`; HTTP/1 ones get it as Host,
    /// and the URI names the endpoint for the connection pool.
    app_authority: Option<Authority>,
    b3: bool,
    ctx: &'c mut RequestTelemetry,
    upstream: &'c U,
    deadline: Instant,
    avoid: Option<usize>,
    /// The metrics the request counts under: its route's, then (once an endpoint is picked)
    /// its route's for that endpoint's version.
    pub metrics: &'s Arc<StatusMetrics>,
    failed: Option<Failed>,
}

/// The span of a failed attempt that a retry follows, ended once the retry starts its own.
struct Failed {
    span: Option<Box<Pending>>,
    at: Instant,
    status: Option<u16>,
    failure: Failure,
}

impl<'s, 'c, U: SendUpstream> Attempts<'s, 'c, U> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dest: &'s Dest,
        route: &'s RouteEntry,
        head: &'c http::request::Parts,
        app_authority: Option<Authority>,
        b3: bool,
        ctx: &'c mut RequestTelemetry,
        upstream: &'c U,
        deadline: Instant,
    ) -> Self {
        Self {
            dest,
            route,
            head,
            app_authority,
            b3,
            ctx,
            upstream,
            deadline,
            avoid: None,
            metrics: route.metrics_for(None),
            failed: None,
        }
    }

    /// A retry's span is a sibling of the failed attempt's, which ends when its failure was
    /// seen, not after the backoff.
    fn start_retry_span(&mut self, n: u32) {
        let Some(f) = self.failed.take() else {
            return;
        };
        self.ctx.span = f.span.map(|failed| {
            let next = failed.next_attempt(self.ctx.span_id, n);
            failed.finish_at(f.at, f.status, Some(failure_error(f.failure)));
            next
        });
    }
}

impl<U: SendUpstream> Attempt for Attempts<'_, '_, U> {
    type Response = Response<UpstreamBody>;
    type Error = ProxyError;

    async fn call(&mut self, t: Try) -> Tried<Response<UpstreamBody>, ProxyError> {
        let (dest, route) = (self.dest, self.route);
        if t.n > 1 {
            self.start_retry_span(t.n);
        }
        let version = route.split.as_ref().and_then(|s| {
            if t.n == 1 {
                s.choose(&self.head.headers)
            } else {
                s.redraw()
            }
        });
        let Some(pick) = balance::pick(
            &dest.endpoints,
            (dest.lb, dest.ewma_decay),
            &dest.rr,
            self.avoid,
            version,
        ) else {
            self.metrics = route.metrics_for(None);
            return Tried::Fatal(ProxyError::NoEndpoints);
        };
        self.avoid = Some(pick.index);
        let ep = &dest.endpoints[pick.index];
        let mut probe = ProbeSlot::new(&ep.state.outlier, pick.probe);
        self.metrics = route.metrics_for(Some(ep));
        self.ctx.picked(ep.addr, dest.versions.get(ep.version));

        let target = self.app_authority.as_ref().unwrap_or(&ep.authority);
        let mut req = attempt_request(self.head, target, t.n, t.numbered, t.body);
        propagate::inject(
            req.headers_mut(),
            &self.ctx.trace,
            self.ctx.span_id,
            self.b3,
        );
        let started = Instant::now();
        let try_deadline = match route.per_try_timeout {
            // The last attempt has the rest of the route's time: nothing follows it.
            Some(p) if !t.last => self.deadline.min(started + p),
            _ => self.deadline,
        };
        let pending = ep.state.start();
        let sent = tokio::time::timeout_at(try_deadline, self.upstream.send(dest, ep, req)).await;
        drop(pending);
        ep.state.ewma.observe(started.elapsed(), dest.ewma_decay);

        let (failure, kept) = match sent {
            Ok(Ok(res)) => {
                let res = res.map(UpstreamBody::Streaming);
                match judge(&route.retry, t.last, res, self.deadline).await {
                    Verdict::Done(res) => {
                        observe(dest, ep, probe.consume(), is_gateway_status(res.status()));
                        return Tried::Done(res);
                    }
                    Verdict::Retry(failure, res) => (failure, Some(res)),
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(
                    request_id = self
                        .head
                        .headers
                        .get(&super::headers::REQUEST_ID)
                        .and_then(|v| v.to_str().ok()),
                    upstream = %ep.addr,
                    error = ?e.cause,
                    failure = ?e.failure,
                    attempt = t.n,
                    "upstream attempt failed"
                );
                (e.failure, None)
            }
            Err(_) if try_deadline < self.deadline => {
                route.counters.per_try_timeouts.inc();
                (Failure::PerTryTimeout, None)
            }
            Err(_) => {
                observe(dest, ep, probe.consume(), true);
                return Tried::Fatal(ProxyError::Timeout);
            }
        };
        if failure == Failure::Overloaded {
            // Never reached the endpoint: no outcome to record; the probe slot goes back.
            dest.counters.overloaded(Overload::Connections);
        } else {
            observe(dest, ep, probe.consume(), failure.is_gateway_failure());
        }
        Tried::Failed(failure, kept)
    }

    fn retrying(&mut self, failure: Failure, response: Option<&Response<UpstreamBody>>) {
        // The next attempt's span id goes to its upstream as the parent.
        self.ctx.span_id = new_span_id();
        self.failed = Some(Failed {
            span: self.ctx.span.take(),
            at: Instant::now(),
            status: response.map(|r| r.status().as_u16()),
            failure,
        });
    }
}

/// The proxy's answer when the last attempt failed without a response to pass on.
pub fn gave_up(failure: Failure) -> ProxyError {
    match failure {
        Failure::ConnectFailure => ProxyError::ConnectFailure,
        Failure::PeerIdentityMismatch => ProxyError::PeerIdentityMismatch,
        Failure::Overloaded => ProxyError::Overloaded,
        Failure::PerTryTimeout => ProxyError::PerTryTimeout,
        _ => ProxyError::UpstreamReset,
    }
}

/// How a retried attempt's span names its failure.
fn failure_error(failure: Failure) -> ErrorType {
    match failure {
        Failure::Status(s) => ErrorType::Status(s.as_u16()),
        Failure::Grpc(_) => ErrorType::Proxy("grpc_status"),
        f => ErrorType::Proxy(gave_up(f).reason()),
    }
}

/// Feeds an attempt's outcome to outlier detection and reports ejections.
fn observe(dest: &Dest, ep: &EndpointTarget, probe: bool, gateway_failure: bool) {
    // Checking the ejection cap and ejecting must be one step, or two endpoints failing at
    // once could both pass the check. Only failures can eject, so successes skip the lock.
    let _one_at_a_time = gateway_failure.then(|| {
        dest.eject_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    });
    match ep
        .state
        .outlier
        .record(&dest.outlier, gateway_failure, probe, || dest.may_eject())
    {
        Some(Transition::Ejected) => {
            dest.counters.ejections.inc();
            dest.counters.ejected.inc();
            tracing::warn!(destination = %dest.name, endpoint = %ep.addr, "endpoint ejected after consecutive failures");
        }
        Some(Transition::Restored) => {
            dest.counters.ejected.dec();
            tracing::info!(destination = %dest.name, endpoint = %ep.addr, "endpoint back in service after a successful probe");
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_without_a_response_has_the_matching_answer() {
        assert_eq!(gave_up(Failure::ConnectFailure), ProxyError::ConnectFailure);
        assert_eq!(gave_up(Failure::PerTryTimeout), ProxyError::PerTryTimeout);
        assert_eq!(gave_up(Failure::Overloaded), ProxyError::Overloaded);
        assert_eq!(
            gave_up(Failure::PeerIdentityMismatch),
            ProxyError::PeerIdentityMismatch
        );
        assert_eq!(gave_up(Failure::Reset), ProxyError::UpstreamReset);
        assert_eq!(gave_up(Failure::RefusedStream), ProxyError::UpstreamReset);
    }
}
