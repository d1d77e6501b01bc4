//! The request path: pick the destination and route, pick an endpoint, rewrite headers, send
//! over the pooled client under the route's deadline, and wrap the response so telemetry is
//! reported when it ends. Outbound and inbound share everything after destination choice.

pub mod headers;
pub mod upgrade;

use crate::body::{RequestBody, ResponseBody};
use crate::error::ProxyError;
use crate::routing::{Compiled, Dest, EndpointTarget};
use crate::state::Shared;
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::StatusMetrics;
use crate::telemetry::record::{LogContext, Record};
use crate::Direction;
use headers::{
    append_forwarded_for, ensure_request_id, header_block_size, strip_hop_by_hop, wants_upgrade,
};
use http::uri::{PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use outrigger_config::Protocol;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// Everything known about the request before it is sent, for the record.
struct Ctx {
    start: Instant,
    direction: Direction,
    client: SocketAddr,
    log: Option<Box<LogContext>>,
}

pub async fn handle(
    shared: Arc<Shared>,
    direction: Direction,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let request_id = ensure_request_id(req.headers_mut());
    let mut ctx = Ctx {
        start,
        direction,
        client,
        log: None,
    };
    let Some(state) = shared.current() else {
        // Not ready yet: nothing to route with.
        return Ok(local_error(
            &shared,
            &mut ctx,
            None,
            ProxyError::NoEndpoints,
        ));
    };
    if let Some(sink) = &shared.access_log {
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
    if header_block_size(req.headers(), req.uri()) > shared.settings.max_header_bytes {
        return Ok(local_error(
            &shared,
            &mut ctx,
            Some(unrouted),
            ProxyError::HeadersTooLarge,
        ));
    }
    if req.method() == http::Method::CONNECT {
        return Ok(local_error(
            &shared,
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
                    &shared,
                    &mut ctx,
                    Some(unrouted),
                    ProxyError::MissingAuthority,
                ));
            }
            match state.outbound.lookup(host) {
                Some(d) => d.clone(),
                None => {
                    return Ok(local_error(
                        &shared,
                        &mut ctx,
                        Some(unrouted),
                        ProxyError::UnknownAuthority,
                    ))
                }
            }
        }
        Direction::Inbound => match &state.inbound {
            Some(d) => d.clone(),
            None => {
                return Ok(local_error(
                    &shared,
                    &mut ctx,
                    Some(unrouted),
                    ProxyError::NoInbound,
                ))
            }
        },
    };
    Ok(forward(&shared, &state, &dest, ctx, req).await)
}

async fn forward(
    shared: &Shared,
    _state: &Compiled,
    dest: &Dest,
    mut ctx: Ctx,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let route = dest.route(req.method(), req.uri().path(), req.headers());
    if let Some(log) = ctx.log.as_mut() {
        log.entry.dst_service = Some(dest.name.clone());
        log.entry.route = Some(route.name.clone());
    }
    let Some(endpoint) = dest.pick() else {
        return local_error(
            shared,
            &mut ctx,
            Some(route.metrics_for(None)),
            ProxyError::NoEndpoints,
        );
    };
    let metrics = route.metrics_for(Some(endpoint));
    if let Some(log) = ctx.log.as_mut() {
        log.entry.upstream = Some(endpoint.addr);
    }

    let upgrade = req.version() == Version::HTTP_11
        && dest.protocol == Protocol::Http1
        && wants_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if let Err(e) = prepare(&mut parts, dest.protocol, endpoint, ctx.client, upgrade) {
        return local_error(shared, &mut ctx, Some(metrics), e);
    }
    let received = ctx.log.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    if let Some(log) = ctx.log.as_mut() {
        log.bytes_received = received.clone();
    }
    let upstream_req = Request::from_parts(parts, RequestBody::new(body, received));

    let sent = tokio::time::timeout(route.timeout, dest.client.request(upstream_req)).await;
    let mut res = match sent {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => {
            let err = if e.is_connect() {
                ProxyError::ConnectFailure
            } else {
                ProxyError::UpstreamReset
            };
            tracing::debug!(upstream = %endpoint.addr, error = ?e, reason = err.reason(), "upstream request failed");
            return local_error(shared, &mut ctx, Some(metrics), err);
        }
        Err(_) => return local_error(shared, &mut ctx, Some(metrics), ProxyError::Timeout),
    };

    let switching = res.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    match (switching, downstream_upgrade) {
        (true, Some(down)) => {
            shared
                .metrics
                .upgrades
                .with_label_values(&[ctx.direction.as_str()])
                .inc();
            upgrade::tunnel(down, hyper::upgrade::on(&mut res));
            strip_hop_by_hop(res.headers_mut(), true);
        }
        _ => strip_hop_by_hop(res.headers_mut(), false),
    }
    let record = Record {
        start: ctx.start,
        status: res.status(),
        metrics: metrics.clone(),
        stats: Some(dest.stats.clone()),
        log: ctx.log.take(),
        bytes_sent: 0,
    };
    res.map(|b| ResponseBody::upstream(b, record))
}

/// Turns the downstream request head into the upstream one.
fn prepare(
    parts: &mut http::request::Parts,
    protocol: Protocol,
    endpoint: &EndpointTarget,
    client: SocketAddr,
    upgrade: bool,
) -> Result<(), ProxyError> {
    // The app's authority travels on: as Host to HTTP/1 endpoints. HTTP/2 endpoints get the
    // endpoint address as :authority (the pool is keyed by it).
    if let Some(a) = parts.uri.authority() {
        if !parts.headers.contains_key(header::HOST) {
            let v = HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest)?;
            parts.headers.insert(header::HOST, v);
        }
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    append_forwarded_for(&mut parts.headers, client.ip());
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(endpoint.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| ProxyError::BadRequest)?;
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
    shared: &Shared,
    ctx: &mut Ctx,
    metrics: Option<&Arc<StatusMetrics>>,
    err: ProxyError,
) -> Response<ResponseBody> {
    shared
        .metrics
        .proxy_errors
        .with_label_values(&[ctx.direction.as_str(), err.reason()])
        .inc();
    let mut log = ctx.log.take();
    if let Some(l) = log.as_mut() {
        l.entry.error = Some(err.reason());
    }
    let res = err.response();
    let record = metrics.map(|m| Record {
        start: ctx.start,
        status: res.status(),
        metrics: m.clone(),
        stats: None,
        log,
        bytes_sent: 0,
    });
    res.map(|b| ResponseBody::local(b, record))
}
