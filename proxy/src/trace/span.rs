//! One span per upstream attempt (or per locally answered request), as plain fields: the
//! request path fills them, and only the exporter's task turns them into OpenTelemetry
//! [`SpanData`] with the HTTP semantic-convention attributes.

use crate::Direction;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Why a span failed: the proxy's own reason (`timeout`, `connect_failure`...) or an
/// upstream status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Proxy(&'static str),
    Status(u16),
}

#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    pub direction: Direction,
    pub start: SystemTime,
    pub duration: std::time::Duration,
    pub method: http::Method,
    pub route: Option<Arc<str>>,
    pub peer_service: Option<Arc<str>>,
    pub path: Option<http::uri::PathAndQuery>,
    pub host: Option<http::uri::Authority>,
    pub protocol: http::Version,
    pub attempt: u32,
    pub endpoint: Option<SocketAddr>,
    pub endpoint_version: Option<Arc<str>>,
    pub client: SocketAddr,
    pub status: Option<u16>,
    pub error: Option<ErrorType>,
}

/// The OpenTelemetry span for a record (in the exporter's task, off the request path).
pub fn to_span_data(r: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let mut attrs = Vec::with_capacity(16);
    attrs.push(KeyValue::new(
        "http.request.method",
        r.method.as_str().to_string(),
    ));
    attrs.push(KeyValue::new("url.scheme", "http"));
    attrs.push(KeyValue::new("outrigger.direction", r.direction.as_str()));
    attrs.push(KeyValue::new("outrigger.attempt", i64::from(r.attempt)));
    if r.attempt > 1 {
        attrs.push(KeyValue::new(
            "http.request.resend_count",
            i64::from(r.attempt - 1),
        ));
    }
    attrs.push(KeyValue::new(
        "network.protocol.version",
        match r.protocol {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        },
    ));
    if let Some(route) = &r.route {
        attrs.push(KeyValue::new("http.route", route.to_string()));
    }
    if let Some(p) = &r.peer_service {
        attrs.push(KeyValue::new("peer.service", p.to_string()));
    }
    if let Some(p) = &r.path {
        attrs.push(KeyValue::new("url.path", p.path().to_string()));
    }
    if let Some(h) = &r.host {
        attrs.push(KeyValue::new("server.address", h.host().to_string()));
        if let Some(port) = h.port_u16() {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    if let Some(e) = r.endpoint {
        attrs.push(KeyValue::new("network.peer.address", e.ip().to_string()));
        attrs.push(KeyValue::new("network.peer.port", i64::from(e.port())));
    }
    if let Some(v) = &r.endpoint_version {
        attrs.push(KeyValue::new(
            "outrigger.destination.version",
            v.to_string(),
        ));
    }
    attrs.push(KeyValue::new("client.address", r.client.ip().to_string()));
    if let Some(s) = r.status {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    let status = match r.error {
        Some(ErrorType::Proxy(reason)) => {
            attrs.push(KeyValue::new("error.type", reason));
            Status::error(reason)
        }
        Some(ErrorType::Status(s)) => {
            attrs.push(KeyValue::new("error.type", s.to_string()));
            Status::error(format!("HTTP {s}"))
        }
        None => Status::Unset,
    };
    let name = match &r.route {
        Some(route) => format!("{} {route}", r.method),
        None => r.method.as_str().to_string(),
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(r.trace_id),
            SpanId::from(r.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: r.parent.map_or(SpanId::INVALID, SpanId::from),
        // The parent is always the caller's span, in another process.
        parent_span_is_remote: r.parent.is_some(),
        span_kind: match r.direction {
            Direction::Outbound => SpanKind::Client,
            Direction::Inbound => SpanKind::Server,
        },
        name: Cow::Owned(name),
        start_time: r.start,
        end_time: r.start + r.duration,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x1234,
            parent: Some(0x00f067aa0ba902b7),
            direction: Direction::Outbound,
            start: SystemTime::UNIX_EPOCH,
            duration: std::time::Duration::from_millis(3),
            method: http::Method::POST,
            route: Some("charge".into()),
            peer_service: Some("payment".into()),
            path: Some(http::uri::PathAndQuery::from_static("/charge?card=secret")),
            host: Some(http::uri::Authority::from_static("payment:8080")),
            protocol: http::Version::HTTP_11,
            attempt: 2,
            endpoint: Some("127.0.0.1:9000".parse().unwrap()),
            endpoint_version: Some("v2".into()),
            client: "127.0.0.1:5555".parse().unwrap(),
            status: Some(503),
            error: Some(ErrorType::Status(503)),
        }
    }

    fn attr<'a>(d: &'a SpanData, k: &str) -> Option<&'a opentelemetry::Value> {
        d.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| &kv.value)
    }

    #[test]
    fn semantic_convention_attributes() {
        let scope = InstrumentationScope::builder("outrigger-proxy").build();
        let d = to_span_data(record(), &scope);
        assert_eq!(d.name, "POST charge");
        assert_eq!(d.span_kind, SpanKind::Client);
        assert_eq!(d.parent_span_id, SpanId::from(0x00f067aa0ba902b7u64));
        assert!(d.parent_span_is_remote);
        assert_eq!(
            d.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            d.end_time,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(3)
        );
        let s = |k| attr(&d, k).map(|v| v.as_str().into_owned());
        assert_eq!(s("http.request.method").as_deref(), Some("POST"));
        assert_eq!(s("http.route").as_deref(), Some("charge"));
        assert_eq!(s("peer.service").as_deref(), Some("payment"));
        // The query string can hold secrets: only the path goes out.
        assert_eq!(s("url.path").as_deref(), Some("/charge"));
        assert_eq!(s("server.address").as_deref(), Some("payment"));
        assert_eq!(s("error.type").as_deref(), Some("503"));
        assert_eq!(s("outrigger.destination.version").as_deref(), Some("v2"));
        assert_eq!(
            attr(&d, "http.response.status_code"),
            Some(&opentelemetry::Value::I64(503))
        );
        assert_eq!(
            attr(&d, "http.request.resend_count"),
            Some(&opentelemetry::Value::I64(1))
        );
        assert_eq!(
            attr(&d, "outrigger.attempt"),
            Some(&opentelemetry::Value::I64(2))
        );
        assert!(matches!(d.status, Status::Error { .. }));
    }

    #[test]
    fn root_spans_and_proxy_errors() {
        let scope = InstrumentationScope::builder("outrigger-proxy").build();
        let mut r = record();
        r.parent = None;
        r.route = None;
        r.attempt = 1;
        r.direction = Direction::Inbound;
        r.error = Some(ErrorType::Proxy("no_endpoints"));
        let d = to_span_data(r, &scope);
        assert_eq!(d.parent_span_id, SpanId::INVALID);
        assert!(!d.parent_span_is_remote);
        assert_eq!(d.name, "POST");
        assert_eq!(d.span_kind, SpanKind::Server);
        assert!(attr(&d, "http.request.resend_count").is_none());
        assert_eq!(
            attr(&d, "error.type")
                .map(|v| v.as_str().into_owned())
                .as_deref(),
            Some("no_endpoints")
        );
    }
}
