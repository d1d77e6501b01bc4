//! The telemetry layer, first on the request path and last off it: the request's trace
//! context and span, its access-log entry (when the log is on), and how every answer the
//! proxy makes itself is counted, logged and traced like an upstream's. The metrics of a
//! forwarded response are reported by the [`Record`] its body carries.
//!
//! Not tower-http's `TraceLayer`/`SetRequestId`: they allocate per request (a boxed span,
//! request extensions), and our record must also carry the concurrency permit and reach the
//! access log and the sliding percentiles exactly once, when the body ends.

use crate::body::ResponseBody;
use crate::error::{Detail, ProxyError};
use crate::peer::Peer;
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::StatusMetrics;
use crate::telemetry::record::{LogContext, Record};
use crate::telemetry::Telemetry;
use crate::trace::export::Pending;
use crate::trace::span::{ErrorType, SpanRecord};
use crate::trace::{new_span_id, TraceCtx};
use crate::Direction;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Version};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// What is known about one request, for its metrics, log line and span.
pub struct RequestTelemetry {
    pub start: Instant,
    pub direction: Direction,
    pub client: SocketAddr,
    pub version: Version,
    pub log: Option<Box<LogContext>>,
    pub trace: TraceCtx,
    /// The current attempt's span id: the parent the upstream sees.
    pub span_id: u64,
    /// The current attempt's span, when this trace is sampled and spans are exported.
    pub span: Option<Box<Pending>>,
    /// What a response the proxy makes itself names (see [`Detail`]).
    pub detail: Detail,
}

impl RequestTelemetry {
    /// Joins (or starts) the request's trace and opens its span when sampled.
    pub fn begin<B>(
        telemetry: &Telemetry,
        direction: Direction,
        peer: &Peer,
        req: &Request<B>,
    ) -> Self {
        let start = Instant::now();
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
                    host: authority(req).and_then(|a| a.parse().ok()),
                    protocol: req.version(),
                    attempt: 1,
                    endpoint: None,
                    endpoint_version: None,
                    client: peer.addr,
                    status: None,
                    error: None,
                },
            ))
        });
        Self {
            start,
            direction,
            client: peer.addr,
            version: req.version(),
            log: None,
            trace,
            span_id,
            span,
            detail: Detail::default(),
        }
    }

    /// Starts the access-log entry, when the log is on. Needs the snapshot (for the service
    /// name), so it comes after the snapshot is loaded.
    /// Opens the request's access-log record, which takes `request_id`; without an access
    /// log, the id is handed back.
    pub fn open_log<B>(
        &mut self,
        telemetry: &Telemetry,
        service: &Arc<str>,
        req: &Request<B>,
        request_id: HeaderValue,
    ) -> Option<HeaderValue> {
        let Some(sink) = &telemetry.access_log else {
            return Some(request_id);
        };
        self.log = Some(Box::new(LogContext {
            sink: sink.clone(),
            entry: Entry {
                time: SystemTime::now(),
                service: service.clone(),
                direction: self.direction,
                method: req.method().clone(),
                authority: authority(req).and_then(|a| a.parse().ok()),
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
                client: self.client,
            },
            bytes_received: None,
        }));
        None
    }

    /// The destination and route are known.
    pub fn routed(&mut self, dest: &Arc<str>, route: &Arc<str>) {
        self.detail.destination = Some(dest.clone());
        if let Some(log) = self.log.as_mut() {
            log.entry.dst_service = Some(dest.clone());
            log.entry.route = Some(route.clone());
        }
        if let Some(span) = self.span.as_mut() {
            span.rec.route = Some(route.clone());
            if self.direction == Direction::Outbound {
                span.rec.peer_service = Some(dest.clone());
            }
        }
    }

    /// A counter of the request body's bytes, when the access log will report them.
    pub fn count_received(&mut self) -> Option<Arc<AtomicU64>> {
        let log = self.log.as_mut()?;
        let received = Arc::new(AtomicU64::new(0));
        log.bytes_received = Some(received.clone());
        Some(received)
    }

    /// An attempt picked this endpoint.
    pub fn picked(&mut self, endpoint: SocketAddr, version: Option<&Arc<str>>) {
        self.detail.endpoint = Some(endpoint);
        if let Some(log) = self.log.as_mut() {
            log.entry.upstream = Some(endpoint);
        }
        if let Some(span) = self.span.as_mut() {
            span.rec.endpoint = Some(endpoint);
            span.rec.endpoint_version = version.cloned();
        }
    }

    /// The record a forwarded response carries until its body ends.
    pub fn record(
        &mut self,
        status: http::StatusCode,
        metrics: &Arc<StatusMetrics>,
        stats: &Arc<crate::telemetry::stats::SlidingHistogram>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Record {
        Record {
            start: self.start,
            status,
            metrics: metrics.clone(),
            stats: Some(stats.clone()),
            log: self.log.take(),
            span: self.span.take(),
            bytes_sent: 0,
            permit: Some(permit),
        }
    }

    /// The proxy's own answer to this request, `x-outrigger-error` being the error's reason:
    /// counted (under `metrics` once the request has a destination), logged and traced like
    /// any other response.
    pub fn refuse(
        &mut self,
        telemetry: &Telemetry,
        metrics: Option<&Arc<StatusMetrics>>,
        err: ProxyError,
    ) -> Response<ResponseBody> {
        let reason = err.reason();
        if self.detail.request_id.is_none() {
            // In the access log's record: cloned only now, on the error path.
            self.detail.request_id = self.log.as_ref().and_then(|l| l.entry.request_id.clone());
        }
        let mut res = err.response(&self.detail);
        if err.closes_connection() && self.version < Version::HTTP_2 {
            // HTTP/2 learns it from the GOAWAY that follows.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        telemetry
            .metrics
            .proxy_errors
            .with_label_values(&[self.direction.as_str(), reason])
            .inc();
        let mut log = self.log.take();
        if let Some(l) = log.as_mut() {
            l.entry.error = Some(reason);
        }
        let mut span = self.span.take();
        if let Some(s) = span.as_mut() {
            s.rec.error = Some(ErrorType::Proxy(reason));
        }
        let record = match metrics {
            Some(m) => Some(Record {
                start: self.start,
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
        res.map(|b: Bytes| ResponseBody::local(b, record))
    }
}

/// The request's authority: `:authority` / absolute-form URI first, then `Host`.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;
    use http_body_util::BodyExt;
    use outrigger_config::ProxySettings;

    fn peer() -> Peer {
        Peer::plaintext("127.0.0.1:5000".parse().expect("addr"))
    }

    #[test]
    fn authority_prefers_the_uri_then_host_and_ignores_empty() {
        let req = Request::get("http://a.example:80/x")
            .header(header::HOST, "b.example")
            .body(())
            .expect("req");
        assert_eq!(authority(&req), Some("a.example:80"));
        let req = Request::get("/x")
            .header(header::HOST, "b.example")
            .body(())
            .expect("req");
        assert_eq!(authority(&req), Some("b.example"));
        let req = Request::get("/x")
            .header(header::HOST, "")
            .body(())
            .expect("req");
        assert_eq!(authority(&req), None);
    }

    #[tokio::test]
    async fn a_refusal_is_counted_under_its_reason_and_says_so() {
        let settings = ProxySettings::default();
        let telemetry = Telemetry::new(&settings, None, Metrics::new());
        let req = Request::get("/").body(()).expect("req");
        let mut t = RequestTelemetry::begin(&telemetry, Direction::Inbound, &peer(), &req);
        let res = t.refuse(&telemetry, None, ProxyError::MtlsRequired);
        assert_eq!(res.status(), 403);
        assert_eq!(res.headers()[crate::error::ERROR_HEADER], "mtls-required");
        assert_eq!(res.headers()[header::CONNECTION], "close");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["reason"], "mtls-required");
        assert_eq!(
            telemetry
                .metrics
                .proxy_errors
                .with_label_values(&["inbound", "mtls-required"])
                .get(),
            1
        );
        // Over HTTP/2 the connection ends by GOAWAY, never by a connection-specific header.
        let req = Request::get("/")
            .version(Version::HTTP_2)
            .body(())
            .expect("req");
        let mut t = RequestTelemetry::begin(&telemetry, Direction::Inbound, &peer(), &req);
        let res = t.refuse(&telemetry, None, ProxyError::MtlsRequired);
        assert!(!res.headers().contains_key(header::CONNECTION));
        let res = t.refuse(&telemetry, None, ProxyError::NoEndpoints);
        assert!(!res.headers().contains_key(header::CONNECTION));
    }
}
