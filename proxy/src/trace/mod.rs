//! Distributed tracing: read the incoming context ([`context`]), decide sampling
//! ([`Sampler`]), hand each upstream attempt a `traceparent` naming its own span
//! ([`propagate`]), and record that span ([`span`]) for the background OTLP exporter
//! ([`export`]). Propagation always happens; spans are built only for sampled traces when an
//! exporter is configured, so an unsampled request costs a header parse and one header value.

pub mod context;
pub mod export;
pub mod propagate;
pub mod span;

use context::{B3Form, Incoming};
use export::SpanExport;
use outrigger_config::TracingSettings;

/// Ratio sampling on the trace id, so every sidecar that sees a trace decides the same way.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    threshold: u64,
    all: bool,
}

impl Sampler {
    pub fn new(ratio: f64) -> Self {
        let ratio = ratio.clamp(0.0, 1.0);
        Self {
            threshold: (ratio * u64::MAX as f64) as u64,
            all: ratio >= 1.0,
        }
    }

    pub fn sample(&self, trace_id: u128) -> bool {
        self.all || (trace_id as u64) < self.threshold
    }
}

/// One request's trace context, decided once when it arrives. `Copy`: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: u128,
    /// The caller's span, the parent of every span this request makes.
    pub parent: Option<u64>,
    pub sampled: bool,
    pub b3: B3Form,
    /// A valid `traceparent` arrived (so its `tracestate` stays).
    pub w3c: bool,
}

impl TraceCtx {
    /// Joins the incoming trace, or starts one. A decision that arrived is respected; our
    /// sampler decides only when none did.
    pub fn start(incoming: Incoming, sampler: &Sampler) -> Self {
        let (trace_id, parent, decision) = match incoming.parent {
            Some(p) => (p.trace_id, p.span_id, p.sampled),
            None => (new_trace_id(), None, incoming.decision),
        };
        Self {
            trace_id,
            parent,
            sampled: decision.unwrap_or_else(|| sampler.sample(trace_id)),
            b3: incoming.b3,
            w3c: incoming.w3c,
        }
    }
}

fn new_trace_id() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

pub fn new_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// The sidecar's tracing: settings compiled once, plus the exporter when there is one.
pub struct Tracer {
    sampler: Sampler,
    /// Also send B3 multi-headers upstream.
    pub b3: bool,
    pub export: Option<SpanExport>,
}

impl Tracer {
    pub fn new(settings: &TracingSettings) -> Self {
        Self {
            sampler: Sampler::new(settings.sampling),
            b3: settings.b3,
            export: None,
        }
    }

    #[inline]
    pub fn incoming(&self, headers: &http::HeaderMap) -> TraceCtx {
        TraceCtx::start(context::read(headers), &self.sampler)
    }

    /// Where this request's spans go: only sampled traces, only with an exporter.
    #[inline]
    pub fn sink(&self, ctx: &TraceCtx) -> Option<&SpanExport> {
        self.export.as_ref().filter(|_| ctx.sampled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use context::Parent;

    #[test]
    fn sampler_ratio_holds_roughly_and_is_deterministic() {
        let s = Sampler::new(0.25);
        let n = 100_000;
        let hits = (0..n).filter(|_| s.sample(new_trace_id())).count();
        assert!((20_000..30_000).contains(&hits), "{hits}");
        let id = new_trace_id();
        assert_eq!(s.sample(id), s.sample(id));
        assert!(Sampler::new(1.0).sample(u128::MAX));
        assert!(!Sampler::new(0.0).sample(0));
    }

    #[test]
    fn an_arriving_decision_is_respected() {
        let never = Sampler::new(0.0);
        let always = Sampler::new(1.0);
        let parent = |sampled| Incoming {
            parent: Some(Parent {
                trace_id: 5,
                span_id: Some(6),
                sampled,
            }),
            ..Incoming::default()
        };
        assert!(TraceCtx::start(parent(Some(true)), &never).sampled);
        assert!(!TraceCtx::start(parent(Some(false)), &always).sampled);
        // Deferred (B3 without a decision): ours.
        assert!(TraceCtx::start(parent(None), &always).sampled);
        assert!(!TraceCtx::start(parent(None), &never).sampled);
        let c = TraceCtx::start(parent(None), &always);
        assert_eq!((c.trace_id, c.parent), (5, Some(6)));
        // A bare decision starts a new trace with it.
        let bare = Incoming {
            decision: Some(true),
            ..Incoming::default()
        };
        let c = TraceCtx::start(bare, &never);
        assert!(c.sampled);
        assert_eq!(c.parent, None);
        assert_ne!(c.trace_id, 0);
        // Nothing arrived: a new trace, sampled by ratio.
        assert!(!TraceCtx::start(Incoming::default(), &never).sampled);
        assert!(TraceCtx::start(Incoming::default(), &always).sampled);
    }
}
