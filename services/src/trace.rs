//! Trace-context propagation: the one thing a shop service knows about the mesh.
//!
//! The sidecars start and record spans, but only the application can tie an inbound request
//! to the outbound calls it causes. So every service copies the trace headers of the request
//! it is handling onto each call it makes for that request, unchanged. This module owns the
//! list of those headers and the copying; `client.rs` applies it to every outbound call.

use axum::extract::FromRequestParts;
use axum::http::header::{HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;

/// The correlation id header: also the `correlationId` of every log line.
pub const REQUEST_ID: &str = "x-request-id";

/// Headers copied from an inbound request to its outbound calls: W3C trace context and
/// baggage, the correlation id, and B3 (single and multi header) because the mesh accepts
/// B3 as well.
pub const PROPAGATED: [&str; 10] = [
    "traceparent",
    "tracestate",
    "baggage",
    REQUEST_ID,
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// The trace headers of one inbound request, ready to be stamped on outbound calls.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl TraceContext {
    /// Picks the propagated headers out of an inbound request's headers (all values of a
    /// repeated header, in order, since `tracestate` may legally be split over several).
    pub fn from_headers(inbound: &HeaderMap) -> TraceContext {
        let mut headers = Vec::new();
        for name in PROPAGATED {
            let name = HeaderName::from_static(name);
            for value in inbound.get_all(&name) {
                headers.push((name.clone(), value.clone()));
            }
        }
        TraceContext { headers }
    }

    /// Writes the trace headers onto an outbound request, replacing any already there so an
    /// outbound call can never carry two different trace ids.
    pub fn apply(&self, outbound: &mut HeaderMap) {
        for (name, _) in &self.headers {
            outbound.remove(name);
        }
        for (name, value) in &self.headers {
            outbound.append(name.clone(), value.clone());
        }
    }

    /// The inbound `x-request-id`, for log lines about this request.
    pub fn request_id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name == REQUEST_ID)
            .and_then(|(_, value)| value.to_str().ok())
    }
}

/// Handlers take the context as an extractor; it never rejects (no headers = empty context).
impl<S: Send + Sync> FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(TraceContext::from_headers(&parts.headers))
    }
}

/// The `x-request-id` of a request, if present and printable: the log line's correlation id.
pub fn correlation_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn copies_only_trace_headers() {
        let inbound = map(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
            ("x-request-id", "req-1"),
            ("authorization", "Bearer secret"),
            ("content-type", "application/json"),
        ]);
        let ctx = TraceContext::from_headers(&inbound);
        let mut outbound = map(&[("traceparent", "stale"), ("host", "catalog")]);
        ctx.apply(&mut outbound);

        let traceparent: Vec<_> = outbound.get_all("traceparent").iter().collect();
        assert_eq!(
            traceparent,
            ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        );
        let tracestate: Vec<_> = outbound.get_all("tracestate").iter().collect();
        assert_eq!(tracestate, ["a=1", "b=2"]);
        assert_eq!(
            outbound.get("x-request-id").map(HeaderValue::as_bytes),
            Some(&b"req-1"[..])
        );
        assert!(outbound.get("authorization").is_none());
        assert!(outbound.get("content-type").is_none());
        assert!(outbound.get("host").is_some());
        assert_eq!(ctx.request_id(), Some("req-1"));
    }

    #[test]
    fn empty_context_changes_nothing() {
        let ctx = TraceContext::from_headers(&HeaderMap::new());
        let mut outbound = map(&[("x-request-id", "own")]);
        ctx.apply(&mut outbound);
        assert_eq!(correlation_id(&outbound).as_deref(), Some("own"));
        assert_eq!(ctx.request_id(), None);
    }
}
