//! The request path, outbound and inbound alike. [`handle_with`] reads as the order the
//! layers apply, each in a module of its own with its own tests:
//!
//! 1. **telemetry** ([`telemetry`]): request id, trace context and span, access-log entry.
//!    Every answer below, the proxy's own included, is counted, logged and traced by it.
//! 2. **admission** ([`admit`]): strict mTLS, the header-block bound, no CONNECT, the `Host`
//!    rules ([`host`]).
//! 3. **destination** ([`destination`]): by authority outbound; the local app, once the
//!    caller is authorised, inbound.
//! 4. **route**: the destination's first matching route ([`crate::routing`]).
//! 5. **rate limit** ([`crate::ratelimit`]), then 6. **fault** injection ([`crate::fault`]).
//! 7. **concurrency limit** ([`crate::concurrency`]), waiting at most until
//! 8. the **request timeout**: one deadline, set from the route, that bounds the wait for a
//!    slot, every attempt and every backoff.
//! 9. **retry** ([`crate::retry::layer`]) around each **attempt** ([`attempt`]): canary
//!    split, balance, per-try timeout, and the **client** behind the [`upstream`] seam.
//! 10. **response** ([`respond`]): framing to relay ([`framing`]), upgrade tunnel, hop-by-hop
//!     headers, the record in the body.
//!
//! The order is the one the first version had, kept on purpose: the rate limit comes before
//! fault injection so that an injected delay never holds a token the limit is counting, and
//! both come before the concurrency limit so that neither a refused nor a faulted request
//! takes an in-flight slot. The timeout starts when the request arrives, so time spent in a
//! fault delay or queued for a slot counts against it, as the client sees it.
//!
//! Each layer is a typed step (a function returning `Result<_, ProxyError>`) rather than a
//! `tower::Service`: the steps borrow the compiled snapshot that one `ArcSwap` load gave the
//! request, and tower's `Service` (`&mut self`, `poll_ready`, a nameable future) would need
//! an owned, cloned stack per request or a boxed future per layer. Retry is a layer around
//! an inner service, with the inner service a small trait of our own.

pub mod admit;
pub mod attempt;
pub mod destination;
pub mod framing;
pub mod headers;
pub mod host;
pub mod respond;
pub mod rewrite;
pub mod strict;
pub mod telemetry;
pub mod upgrade;
pub mod upstream;

#[cfg(test)]
mod compose_tests;
#[cfg(test)]
pub(crate) mod test_support;

use crate::body::{Counting, ResponseBody};
use crate::error::ProxyError;
use crate::fault;
use crate::peer::Peer;
use crate::ratelimit;
use crate::retry::layer::{Exhausted, Retry};
use crate::retry::source::Source;
use crate::routing::Compiled;
use crate::sidecar::Sidecar;
use crate::telemetry::metrics::StatusMetrics;
use crate::trace::propagate;
use crate::Direction;
use attempt::{gave_up, Attempts};
pub use headers::CLIENT_ID;
use headers::{ensure_request_id, set_client_id, wants_upgrade};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use outrigger_config::Protocol;
pub use rewrite::ATTEMPT;
use std::convert::Infallible;
use std::sync::Arc;
use telemetry::{authority, RequestTelemetry};
use upstream::{Pooled, SendUpstream};

/// How long a chunked HTTP/1 request's first body bytes are awaited before the request goes
/// upstream, so that framing broken from the start is a 400 that the upstream never sees. The
/// bytes almost always arrive with the head; a client slower than this (a live upload that
/// starts late) is streamed, at most this much later than it would have been.
const FIRST_FRAME_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The listeners' service: the request path over the destinations' pooled clients.
pub async fn handle(
    sidecar: Arc<Sidecar>,
    direction: Direction,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    // Boxed: the request path's future is several KiB, and hyper moves the service's future
    // by value (into the connection's dispatcher, and into a spawned task per HTTP/2 stream).
    // One small allocation costs less than those copies (bench/RESULTS.md, "Profile").
    Ok(Box::pin(handle_with(&sidecar, direction, &peer, req, &Pooled)).await)
}

/// The request path, sending upstream through `upstream`.
pub async fn handle_with<U: SendUpstream>(
    sidecar: &Sidecar,
    direction: Direction,
    peer: &Peer,
    mut req: Request<Incoming>,
    upstream: &U,
) -> Response<ResponseBody> {
    let telemetry = &sidecar.telemetry;
    if direction == Direction::Inbound {
        // The caller's identity comes only from its verified certificate, never from outside.
        // Set now so route matching sees it, and again after hop-by-hop stripping.
        set_client_id(req.headers_mut(), peer.client_id.as_ref());
    }
    let request_id = ensure_request_id(req.headers_mut());
    let mut ctx = RequestTelemetry::begin(telemetry, direction, peer, &req);
    // The one snapshot load of this request; everything below borrows from it.
    let Some(state) = sidecar.snapshot.current() else {
        // Not ready yet: nothing to route with.
        ctx.detail.request_id = Some(request_id);
        return ctx.refuse(telemetry, None, ProxyError::NoEndpoints);
    };
    // The id goes to the access log when there is one (a clone here would allocate: the
    // header's bytes become shared on their first clone); a refusal finds it there.
    ctx.detail.request_id = ctx.open_log(telemetry, &state.service, &req, request_id);
    match forward(sidecar, &state, &mut ctx, peer, req, upstream).await {
        Ok(res) => res,
        Err(Refused { error, metrics }) => {
            // Named only when there is an error to name them in.
            ctx.detail.service = Some(state.service.clone());
            if direction == Direction::Inbound {
                ctx.detail.caller = peer.identity.clone();
            }
            ctx.refuse(telemetry, Some(metrics), error)
        }
    }
}

/// The proxy answers the request itself, counted under `metrics`.
struct Refused<'s> {
    error: ProxyError,
    metrics: &'s Arc<StatusMetrics>,
}

/// Refusals from here on count under `metrics`.
fn under<'s>(metrics: &'s Arc<StatusMetrics>) -> impl FnOnce(ProxyError) -> Refused<'s> + Copy {
    move |error| Refused { error, metrics }
}

async fn forward<'s, U: SendUpstream>(
    sidecar: &Sidecar,
    state: &'s Compiled,
    ctx: &mut RequestTelemetry,
    peer: &Peer,
    mut req: Request<Incoming>,
    upstream: &U,
) -> Result<Response<ResponseBody>, Refused<'s>> {
    let telemetry = &sidecar.telemetry;
    let direction = ctx.direction;
    let unrouted = match direction {
        Direction::Outbound => &state.unrouted_outbound,
        Direction::Inbound => &state.unrouted_inbound,
    };
    let max_header_bytes = sidecar.settings.max_header_bytes;
    // What an error names is gathered only when there is one.
    let note = |ctx: &mut RequestTelemetry, e: ProxyError, req: &Request<Incoming>| {
        match e {
            ProxyError::UnknownAuthority | ProxyError::InvalidHost => {
                ctx.detail.authority = telemetry::authority(req).map(str::to_string)
            }
            ProxyError::HeadersTooLarge => {
                ctx.detail.limit = Some(format!("max_header_bytes ({max_header_bytes} bytes)"))
            }
            _ => {}
        }
        e
    };
    admit::check(state, direction, peer, &req, max_header_bytes)
        .map_err(|e| note(ctx, e, &req))
        .map_err(under(unrouted))?;
    let dest = destination::resolve(state, direction, peer, &req, &telemetry.metrics)
        .map_err(|e| note(ctx, e, &req))
        .map_err(under(unrouted))?;
    let route = dest.route(req.method(), req.uri().path(), req.headers());
    ctx.routed(&dest.name, &route.name);
    let unpicked = under(route.metrics_for(None));
    let counters = &route.counters;
    if let Err(e) = ratelimit::admit(route.rate_limit.as_ref(), &counters.rate_limited) {
        return Err(unpicked(e));
    }
    let faulted = fault::inject(
        route.fault.as_ref(),
        &counters.fault_delays,
        &counters.fault_aborts,
    );
    if let Err(e) = faulted.await {
        return Err(unpicked(e));
    }
    let deadline = ctx.start + route.timeout;
    let permit = match dest.concurrency.acquire(deadline).await {
        Ok(p) => p,
        Err(why) => {
            dest.counters.overloaded(why);
            return Err(unpicked(ProxyError::Overloaded));
        }
    };

    // An upgrade to a peer sidecar goes as HTTP/1.1 on an mTLS connection of its own
    // (`client::upgrade`): HTTP/2 between sidecars cannot carry it.
    let upgrade = req.version() == Version::HTTP_11
        && (dest.protocol == Protocol::Http1 || dest.tunnels.upgrade_tls.is_some())
        && wants_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| (hyper::upgrade::on(&mut req), peer.tunnels.hold()));
    let hop = if upgrade {
        Protocol::Http1
    } else {
        dest.protocol
    };
    let app_authority = match hop {
        Protocol::Http2 => authority(&req).and_then(|a| a.parse().ok()),
        Protocol::Http1 => None,
    };
    let (mut head, body) = req.into_parts();
    if let Err(e) = rewrite::prepare(&mut head, hop, ctx.client, upgrade) {
        return Err(unpicked(e));
    }
    if direction == Direction::Inbound {
        // After stripping: `Connection: x-outrigger-client-id` must not remove it.
        set_client_id(&mut head.headers, peer.client_id.as_ref());
    }
    propagate::clear_stale(&mut head.headers, &ctx.trace);

    let retry = Retry::new(&route.retry, &dest.budget, &counters.retry, !upgrade);
    let mut body = Counting::new(body, ctx.count_received());
    // A chunked HTTP/1 body's framing can break from its first bytes; those usually came with
    // the head, so they are checked before anything goes upstream (a length-delimited body
    // can only be short, which shows at its end).
    if head.version < Version::HTTP_2
        && http_body::Body::size_hint(&body).exact().is_none()
        && body.first_frame(FIRST_FRAME_WAIT).await.is_err()
    {
        return Err(unpicked(ProxyError::MalformedBody));
    }
    let client_body = body.failure();
    let source = Source::new(body, retry.may_retry(), route.retry.buffer_bytes);
    let b3 = telemetry.tracer.b3;
    let mut attempts = Attempts::new(
        dest,
        route,
        &head,
        app_authority,
        b3,
        ctx,
        upstream,
        deadline,
    );
    let outcome = retry
        .drive(&mut attempts, &head.method, source, deadline)
        .await;
    let metrics = attempts.metrics;
    match outcome {
        Ok(res) => respond::forwarded(
            telemetry,
            ctx,
            (metrics, &dest.stats),
            permit,
            res,
            downstream_upgrade,
            sidecar.settings.limits.tunnel_idle_timeout,
        )
        .map_err(under(metrics)),
        // The upstream only saw its request cut off; the fault was the client's body.
        Err(_) if client_body.is_some_and(|f| f.is_set()) => {
            Err(under(metrics)(ProxyError::MalformedBody))
        }
        Err(Exhausted::Fatal(e)) => Err(under(metrics)(e)),
        Err(Exhausted::GaveUp(f)) => Err(under(metrics)(gave_up(f))),
    }
}
