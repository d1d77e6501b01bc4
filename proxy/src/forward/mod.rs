//! The request path: pick the destination and route, pick an endpoint, rewrite headers, send
//! over the pooled client under the route's deadline, and wrap the response so telemetry is
//! reported when it ends. Outbound and inbound share everything after destination choice.

pub mod headers;
pub mod strict;
pub mod upgrade;

use crate::balance;
use crate::body::{Counting, RequestBody, ResponseBody, UpstreamBody};
use crate::concurrency::Overload;
use crate::endpoint::outlier::{ProbeSlot, Transition};
use crate::error::ProxyError;
use crate::fault;
use crate::grpc;
use crate::peer::Peer;
use crate::retry::policy::{classify, is_gateway_status, CompiledRetry, Failure};
use crate::retry::replay::ReplayBody;
use crate::routing::{Compiled, Dest, EndpointTarget};
use crate::sidecar::Sidecar;
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::StatusMetrics;
use crate::telemetry::record::{LogContext, Record};
use crate::telemetry::Telemetry;
use crate::trace::export::Pending;
use crate::trace::span::{ErrorType, SpanRecord};
use crate::trace::{new_span_id, propagate, TraceCtx};
use crate::Direction;
pub use headers::CLIENT_ID;
use headers::{
    append_forwarded_for, ensure_request_id, header_block_size, set_client_id, strip_hop_by_hop,
    wants_upgrade,
};
use http::uri::{PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use outrigger_config::Protocol;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// Everything known about the request before it is sent, for the record.
struct Ctx {
    start: Instant,
    direction: Direction,
    client: SocketAddr,
    log: Option<Box<LogContext>>,
    trace: TraceCtx,
    /// The current attempt's span id: the parent the upstream sees.
    span_id: u64,
    /// The current attempt's span, when this trace is sampled and spans are exported.
    span: Option<Box<Pending>>,
}

pub async fn handle(
    sidecar: Arc<Sidecar>,
    direction: Direction,
    peer: Arc<Peer>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let client = peer.addr;
    if direction == Direction::Inbound {
        // The caller's identity comes only from its verified certificate, never from outside.
        // Set now so route matching sees it, and again after hop-by-hop stripping.
        set_client_id(req.headers_mut(), peer.client_id.as_ref());
    }
    let request_id = ensure_request_id(req.headers_mut());
    let telemetry = &sidecar.telemetry;
    let trace = telemetry.tracer.incoming(req.headers());
    let span_id = new_span_id();
    let span = telemetry.tracer.sink(&trace).map(|sink| {
        Box::new(Pending::new(
            sink.clone(),
            SpanRecord {
                trace_id: trace.trace_id,
                span_id,
                parent: trace.parent,
                direction,
                start: SystemTime::now(),
                duration: Default::default(),
                method: req.method().clone(),
                route: None,
                // Outbound: the destination, once known. Inbound: the verified caller.
                peer_service: peer
                    .identity
                    .as_deref()
                    .filter(|_| direction == Direction::Inbound)
                    .and_then(|id| id.rsplit_once("/service/"))
                    .map(|(_, s)| Arc::from(s)),
                path: req.uri().path_and_query().cloned(),
                host: authority(&req).and_then(|a| a.parse().ok()),
                protocol: req.version(),
                attempt: 1,
                endpoint: None,
                endpoint_version: None,
                client,
                status: None,
                error: None,
            },
        ))
    });
    let mut ctx = Ctx {
        start,
        direction,
        client,
        log: None,
        trace,
        span_id,
        span,
    };
    let Some(state) = sidecar.snapshot.current() else {
        // Not ready yet: nothing to route with.
        return Ok(local_error(
            telemetry,
            &mut ctx,
            None,
            ProxyError::NoEndpoints,
        ));
    };
    if let Some(sink) = &telemetry.access_log {
        ctx.log = Some(Box::new(LogContext {
            sink: sink.clone(),
            entry: Entry {
                time: SystemTime::now(),
                service: state.service.clone(),
                direction,
                method: req.method().clone(),
                authority: authority(&req).and_then(|a| a.parse().ok()),
                path: req.uri().path_and_query().cloned(),
                protocol: req.version(),
                status: 0,
                duration: Default::default(),
                upstream: None,
                dst_service: None,
                route: None,
                bytes_received: 0,
                bytes_sent: 0,
                request_id: Some(request_id),
                error: None,
                client,
            },
            bytes_received: None,
        }));
    }
    let unrouted = match direction {
        Direction::Outbound => &state.unrouted_outbound,
        Direction::Inbound => &state.unrouted_inbound,
    };
    // The mode of the snapshot this request runs on, not the one the connection was
    // accepted under: strict applies to every request from the moment it is in force.
    if direction == Direction::Inbound && strict::refuses(state.mtls, peer.mtls) {
        peer.closer.close();
        let res = strict::response(req.version());
        return Ok(local_response(
            telemetry,
            &mut ctx,
            Some(unrouted),
            strict::REASON,
            res,
        ));
    }
    if header_block_size(req.headers(), req.uri()) > sidecar.settings.max_header_bytes {
        return Ok(local_error(
            telemetry,
            &mut ctx,
            Some(unrouted),
            ProxyError::HeadersTooLarge,
        ));
    }
    if req.method() == http::Method::CONNECT {
        return Ok(local_error(
            telemetry,
            &mut ctx,
            Some(unrouted),
            ProxyError::BadRequest,
        ));
    }
    let dest = match direction {
        Direction::Outbound => {
            let host = authority(&req);
            if host.is_none() && req.version() == Version::HTTP_11 {
                return Ok(local_error(
                    telemetry,
                    &mut ctx,
                    Some(unrouted),
                    ProxyError::MissingAuthority,
                ));
            }
            match state.outbound.lookup(host) {
                Some(d) => d.clone(),
                None => {
                    return Ok(local_error(
                        telemetry,
                        &mut ctx,
                        Some(unrouted),
                        ProxyError::UnknownAuthority,
                    ))
                }
            }
        }
        Direction::Inbound => {
            let inbound = &telemetry.metrics.inbound;
            if peer.mtls {
                &inbound.mtls
            } else {
                &inbound.plaintext
            }
            .inc();
            // With mTLS off there are no identities to check: the allow-list cannot apply.
            let allowed = state.allow.is_empty()
                || state.mtls == outrigger_config::MtlsMode::Off
                || peer
                    .identity
                    .as_deref()
                    .is_some_and(|id| state.allow.iter().any(|a| &**a == id));
            if !allowed {
                telemetry
                    .metrics
                    .authz_denied
                    .with_label_values(&[&state.service])
                    .inc();
                return Ok(local_error(
                    telemetry,
                    &mut ctx,
                    Some(unrouted),
                    ProxyError::Forbidden,
                ));
            }
            match &state.inbound {
                Some(d) => d.clone(),
                None => {
                    return Ok(local_error(
                        telemetry,
                        &mut ctx,
                        Some(unrouted),
                        ProxyError::NoInbound,
                    ))
                }
            }
        }
    };
    Ok(forward(telemetry, &state, &dest, &peer, ctx, req).await)
}

async fn forward(
    telemetry: &Telemetry,
    _state: &Compiled,
    dest: &Dest,
    peer: &Peer,
    mut ctx: Ctx,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let route = dest.route(req.method(), req.uri().path(), req.headers());
    if let Some(log) = ctx.log.as_mut() {
        log.entry.dst_service = Some(dest.name.clone());
        log.entry.route = Some(route.name.clone());
    }
    if let Some(span) = ctx.span.as_mut() {
        span.rec.route = Some(route.name.clone());
        if ctx.direction == Direction::Outbound {
            span.rec.peer_service = Some(dest.name.clone());
        }
    }
    let unpicked = route.metrics_for(None);
    if let Some(bucket) = &route.rate_limit {
        if !bucket.try_acquire() {
            route.counters.rate_limited.inc();
            return local_error(telemetry, &mut ctx, Some(unpicked), ProxyError::RateLimited);
        }
    }
    if let Some(f) = &route.fault {
        let roll = fault::roll(f);
        if let Some(d) = roll.delay {
            route.counters.fault_delays.inc();
            tokio::time::sleep(d).await;
        }
        if let Some(status) = roll.abort {
            route.counters.fault_aborts.inc();
            return local_error(
                telemetry,
                &mut ctx,
                Some(unpicked),
                ProxyError::FaultInjected(status.as_u16()),
            );
        }
    }
    let deadline = ctx.start + route.timeout;
    let permit = match dest.concurrency.acquire(deadline).await {
        Ok(p) => p,
        Err(o) => {
            match o {
                Overload::Pending => dest.counters.overload_pending.inc(),
                Overload::Deadline => dest.counters.overload_deadline.inc(),
                Overload::Connections => dest.counters.overload_connections.inc(),
            }
            return local_error(telemetry, &mut ctx, Some(unpicked), ProxyError::Overloaded);
        }
    };

    let upgrade = req.version() == Version::HTTP_11
        && dest.protocol == Protocol::Http1
        && wants_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // HTTP/2 endpoints get the app's authority as `:authority` (RFC 9113 §8.3.1); HTTP/1
    // ones get it as Host, and the URI names the endpoint for the connection pool.
    let app_authority = match dest.protocol {
        Protocol::Http2 => authority(&req).and_then(|a| a.parse::<http::uri::Authority>().ok()),
        Protocol::Http1 => None,
    };
    let (mut head, body) = req.into_parts();
    if let Err(e) = prepare(&mut head, dest.protocol, ctx.client, upgrade) {
        return local_error(telemetry, &mut ctx, Some(unpicked), e);
    }
    if ctx.direction == Direction::Inbound {
        // After stripping: `Connection: x-outrigger-client-id` must not remove it.
        set_client_id(&mut head.headers, peer.client_id.as_ref());
    }
    propagate::clear_stale(&mut head.headers, &ctx.trace);
    let received = ctx.log.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    if let Some(log) = ctx.log.as_mut() {
        log.bytes_received = received.clone();
    }
    let policy = &route.retry;
    let may_retry = !upgrade && policy.attempts > 1;
    let mut source = if body.is_end_stream() {
        Source::Empty
    } else if may_retry {
        Source::Replay(Some(ReplayBody::new(
            Counting::new(body, received),
            policy.buffer_bytes,
        )))
    } else {
        Source::Streaming(Some(Counting::new(body, received)))
    };
    if may_retry {
        dest.budget.deposit();
    }

    let mut attempt: u32 = 1;
    let mut avoid = None;
    let mut next_body: Option<RequestBody> = None;
    loop {
        let last = !may_retry || attempt >= policy.attempts;
        let version = route.split.as_ref().and_then(|s| {
            if attempt == 1 {
                s.choose(&head.headers)
            } else {
                s.redraw()
            }
        });
        let Some(pick) = balance::pick(
            &dest.endpoints,
            (dest.lb, dest.ewma_decay),
            &dest.rr,
            avoid,
            version,
        ) else {
            return local_error(telemetry, &mut ctx, Some(unpicked), ProxyError::NoEndpoints);
        };
        let ep = &dest.endpoints[pick.index];
        let mut probe = ProbeSlot::new(&ep.state.outlier, pick.probe);
        let metrics = route.metrics_for(Some(ep));
        if let Some(log) = ctx.log.as_mut() {
            log.entry.upstream = Some(ep.addr);
        }
        if let Some(span) = ctx.span.as_mut() {
            span.rec.endpoint = Some(ep.addr);
            span.rec.endpoint_version = dest.versions.get(ep.version).cloned();
        }
        let Some(body) = next_body.take().or_else(|| source.next_attempt(attempt)) else {
            // The body outgrew the replay cap while the previous attempt was still sending it.
            route.counters.body_too_large.inc();
            return local_error(
                telemetry,
                &mut ctx,
                Some(metrics),
                ProxyError::UpstreamReset,
            );
        };
        let target = app_authority.as_ref().unwrap_or(&ep.authority);
        let mut upstream_req = attempt_request(&head, target, attempt, may_retry, body);
        propagate::inject(
            upstream_req.headers_mut(),
            &ctx.trace,
            ctx.span_id,
            telemetry.tracer.b3,
        );

        let started = Instant::now();
        let try_deadline = match route.per_try_timeout {
            Some(t) if !last => deadline.min(started + t),
            _ => deadline,
        };
        let pending = ep.state.start();
        let tls_counters = crate::client::h2::TlsCounters {
            handshakes: &dest.counters.tls_handshakes,
            failures: &dest.counters.tls_failures,
        };
        let sent = tokio::time::timeout_at(
            try_deadline,
            dest.client.send(ep, &tls_counters, upstream_req),
        )
        .await;
        drop(pending);
        ep.state.ewma.observe(started.elapsed(), dest.ewma_decay);

        let (failure, kept) = match sent {
            Ok(Ok(res)) => {
                match check_response(policy, last, res.map(UpstreamBody::Streaming), deadline).await
                {
                    Checked::Done(res) => {
                        let gateway = is_gateway_status(res.status());
                        observe(dest, ep, probe.consume(), gateway);
                        let finish = Finish {
                            ctx,
                            metrics,
                            stats: &dest.stats,
                            permit,
                        };
                        return finish.response(telemetry, res, downstream_upgrade);
                    }
                    Checked::Retry(failure, res) => (failure, Some(res)),
                }
            }
            Ok(Err(e)) => {
                let failure = classify(&e);
                tracing::debug!(
                    request_id = head.headers.get(&headers::REQUEST_ID).and_then(|v| v.to_str().ok()),
                    upstream = %ep.addr,
                    error = ?e,
                    ?failure,
                    attempt,
                    "upstream attempt failed"
                );
                (failure, None)
            }
            Err(_) if try_deadline < deadline => {
                route.counters.per_try_timeouts.inc();
                (Failure::PerTryTimeout, None)
            }
            Err(_) => {
                observe(dest, ep, probe.consume(), true);
                return local_error(telemetry, &mut ctx, Some(metrics), ProxyError::Timeout);
            }
        };
        if failure == Failure::Overloaded {
            // Never reached the endpoint: no outcome to record; the probe slot goes back.
            dest.counters.overload_connections.inc();
        } else {
            observe(dest, ep, probe.consume(), failure.is_gateway_failure());
        }

        let give_up = if last || !policy.retryable(failure) {
            true
        } else if !policy.safe(&head.method, failure) {
            route.counters.not_retryable.inc();
            true
        } else if !source.replayable() {
            route.counters.body_too_large.inc();
            true
        } else if !dest.budget.try_withdraw() {
            route.counters.budget_exhausted.inc();
            true
        } else {
            false
        };
        let delay = match (give_up, policy.backoff.delay(attempt)) {
            (false, d) if Instant::now() + d < deadline => {
                // Take the retry's body before the backoff: that supersedes the failed
                // attempt's, so its connection stops pulling the client's body meanwhile.
                next_body = source.next_attempt(attempt + 1);
                if next_body.is_none() {
                    route.counters.body_too_large.inc();
                }
                next_body.is_some().then_some(d)
            }
            _ => None,
        };
        match (delay, kept) {
            (Some(d), kept) => {
                route.counters.retried.inc();
                // This attempt's span ends here; the next one is its sibling.
                let failed = ctx.span.take();
                let failed_at = Instant::now();
                let status = kept.as_ref().map(|r| r.status().as_u16());
                drop(kept);
                tokio::time::sleep(d).await;
                avoid = Some(pick.index);
                attempt += 1;
                ctx.span_id = new_span_id();
                ctx.span = failed.map(|f| {
                    let next = f.next_attempt(ctx.span_id, attempt);
                    f.finish_at(failed_at, status, Some(failure_error(failure)));
                    next
                });
            }
            (_, Some(res)) => {
                let finish = Finish {
                    ctx,
                    metrics,
                    stats: &dest.stats,
                    permit,
                };
                return finish.response(telemetry, res, None);
            }
            (_, None) => {
                return local_error(telemetry, &mut ctx, Some(metrics), give_up_error(failure));
            }
        }
    }
}

/// The proxy's answer when the last attempt failed without a response to pass on.
fn give_up_error(failure: Failure) -> ProxyError {
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
        f => ErrorType::Proxy(give_up_error(f).reason()),
    }
}

/// Where each attempt's request body comes from.
enum Source {
    Empty,
    Streaming(Option<Counting>),
    Replay(Option<ReplayBody<Counting>>),
}

impl Source {
    /// The body for attempt number `attempt`. The original handle is sent only on the first
    /// attempt, when it was too large to keep from the start; after that it has been
    /// superseded by its clones.
    fn next_attempt(&mut self, attempt: u32) -> Option<RequestBody> {
        match self {
            Source::Empty => Some(RequestBody::Empty),
            Source::Streaming(b) => b.take().map(RequestBody::Streaming),
            Source::Replay(master) => {
                let clone = master.as_ref().and_then(|m| m.try_clone());
                match clone {
                    Some(c) => Some(RequestBody::Replay(c)),
                    None if attempt == 1 => master.take().map(RequestBody::Replay),
                    None => None,
                }
            }
        }
    }

    fn replayable(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Streaming(_) => false,
            Source::Replay(m) => m.as_ref().is_some_and(|m| m.is_replayable()),
        }
    }
}

/// One attempt's request: the prepared head, the URI authority, the attempt number.
fn attempt_request(
    head: &http::request::Parts,
    authority: &http::uri::Authority,
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

pub const ATTEMPT: http::HeaderName = http::HeaderName::from_static("x-outrigger-attempt");

enum Checked {
    Done(Response<UpstreamBody>),
    Retry(Failure, Response<UpstreamBody>),
}

/// Decides whether a response is a retryable failure: by status, by `grpc-status` in the
/// headers, or by `grpc-status` in the trailers (read ahead up to the replay cap).
async fn check_response(
    policy: &CompiledRetry,
    last: bool,
    res: Response<UpstreamBody>,
    deadline: Instant,
) -> Checked {
    if last {
        return Checked::Done(res);
    }
    let status = res.status();
    if policy.retryable_status(status) {
        return Checked::Retry(Failure::Status(status), res);
    }
    if !policy.retries_grpc() || !grpc::is_grpc(res.headers()) {
        return Checked::Done(res);
    }
    if let Some(code) = grpc::status(res.headers()) {
        return if policy.retryable_grpc(code) {
            Checked::Retry(Failure::Grpc(code), res)
        } else {
            Checked::Done(res)
        };
    }
    // The status comes in the trailers: read ahead, within bounds, to see it.
    let (parts, body) = res.into_parts();
    let UpstreamBody::Streaming(mut body) = body else {
        return Checked::Done(Response::from_parts(parts, body));
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
        Some(c) if policy.retryable_grpc(c) => Checked::Retry(Failure::Grpc(c), res),
        _ => Checked::Done(res),
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

/// What the successful path needs to build the downstream response.
struct Finish<'a> {
    ctx: Ctx,
    metrics: &'a Arc<StatusMetrics>,
    stats: &'a Arc<crate::telemetry::stats::SlidingHistogram>,
    permit: OwnedSemaphorePermit,
}

impl Finish<'_> {
    fn response(
        mut self,
        telemetry: &Telemetry,
        mut res: Response<UpstreamBody>,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<ResponseBody> {
        let switching = res.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        match (switching, downstream_upgrade) {
            (true, Some(down)) => {
                telemetry
                    .metrics
                    .upgrades
                    .with_label_values(&[self.ctx.direction.as_str()])
                    .inc();
                upgrade::tunnel(down, hyper::upgrade::on(&mut res));
                strip_hop_by_hop(res.headers_mut(), true);
            }
            _ => strip_hop_by_hop(res.headers_mut(), false),
        }
        let record = Record {
            start: self.ctx.start,
            status: res.status(),
            metrics: self.metrics.clone(),
            stats: Some(self.stats.clone()),
            log: self.ctx.log.take(),
            span: self.ctx.span.take(),
            bytes_sent: 0,
            permit: Some(self.permit),
        };
        res.map(|b| ResponseBody::upstream(b, record))
    }
}

/// Turns the downstream request head into the upstream one.
fn prepare(
    parts: &mut http::request::Parts,
    protocol: Protocol,
    client: SocketAddr,
    upgrade: bool,
) -> Result<(), ProxyError> {
    // The app's authority travels on: as Host to HTTP/1 endpoints, as `:authority` to HTTP/2
    // ones (which must not also get a Host that could differ).
    if let Some(a) = parts.uri.authority() {
        if !parts.headers.contains_key(header::HOST) {
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

/// The request's authority: `:authority` / absolute-form URI first, then `Host`.
fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .filter(|s| !s.is_empty())
}

fn local_error(
    telemetry: &Telemetry,
    ctx: &mut Ctx,
    metrics: Option<&Arc<StatusMetrics>>,
    err: ProxyError,
) -> Response<ResponseBody> {
    local_response(telemetry, ctx, metrics, err.reason(), err.response())
}

/// A response the proxy makes itself, `reason` being its `x-outrigger-error`: counted, logged
/// and traced like any other.
fn local_response(
    telemetry: &Telemetry,
    ctx: &mut Ctx,
    metrics: Option<&Arc<StatusMetrics>>,
    reason: &'static str,
    res: Response<bytes::Bytes>,
) -> Response<ResponseBody> {
    telemetry
        .metrics
        .proxy_errors
        .with_label_values(&[ctx.direction.as_str(), reason])
        .inc();
    let mut log = ctx.log.take();
    if let Some(l) = log.as_mut() {
        l.entry.error = Some(reason);
    }
    let mut span = ctx.span.take();
    if let Some(s) = span.as_mut() {
        s.rec.error = Some(ErrorType::Proxy(reason));
    }
    let record = match metrics {
        Some(m) => Some(Record {
            start: ctx.start,
            status: res.status(),
            metrics: m.clone(),
            stats: None,
            log,
            span,
            bytes_sent: 0,
            permit: None,
        }),
        None => {
            if let Some(s) = span {
                s.finish(Some(res.status().as_u16()), None);
            }
            None
        }
    };
    res.map(|b| ResponseBody::local(b, record))
}
