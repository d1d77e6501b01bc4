//! What goes upstream: a `traceparent` naming this attempt's span as the parent, B3 headers
//! rewritten the same way when the app reads B3, and no stale context left behind.

use super::context::{
    B3Form, B3, B3_FLAGS, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_SPAN_ID, B3_TRACE_ID, TRACEPARENT,
    TRACESTATE,
};
use super::TraceCtx;
use crate::hex::write_lower;
use http::header::{HeaderMap, HeaderValue};

/// Once per request: drops what would contradict the headers each attempt writes.
pub fn clear_stale(headers: &mut HeaderMap, ctx: &TraceCtx) {
    if !ctx.w3c {
        // `tracestate` is only meaningful next to the `traceparent` it arrived with.
        headers.remove(TRACESTATE);
    }
    if ctx.b3 != B3Form::None {
        for h in [
            B3,
            B3_TRACE_ID,
            B3_SPAN_ID,
            B3_PARENT_SPAN_ID,
            B3_SAMPLED,
            B3_FLAGS,
        ] {
            headers.remove(h);
        }
    }
}

/// Once per attempt: this attempt's span becomes the upstream's parent.
pub fn inject(headers: &mut HeaderMap, ctx: &TraceCtx, span_id: u64, b3_multi: bool) {
    let flag = if ctx.sampled { b'1' } else { b'0' };
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_lower(&mut tp[3..35], ctx.trace_id);
    write_lower(&mut tp[36..52], u128::from(span_id));
    tp[54] = flag;
    insert(headers, TRACEPARENT, &tp);
    if ctx.b3 == B3Form::Single {
        let mut b3 = *b"00000000000000000000000000000000-0000000000000000-0";
        b3[..33].copy_from_slice(&tp[3..36]);
        b3[33..49].copy_from_slice(&tp[36..52]);
        b3[50] = flag;
        insert(headers, B3, &b3);
    }
    if ctx.b3 == B3Form::Multi || b3_multi {
        insert(headers, B3_TRACE_ID, &tp[3..35]);
        insert(headers, B3_SPAN_ID, &tp[36..52]);
        insert(headers, B3_SAMPLED, &[flag]);
        if let Some(p) = ctx.parent {
            let mut buf = [0u8; 16];
            write_lower(&mut buf, u128::from(p));
            insert(headers, B3_PARENT_SPAN_ID, &buf);
        }
    }
}

fn insert(headers: &mut HeaderMap, name: http::HeaderName, value: &[u8]) {
    // Hex digits and dashes are always a valid header value.
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::super::context::read;
    use super::*;

    fn ctx(headers: &HeaderMap) -> TraceCtx {
        TraceCtx::start(read(headers), &super::super::Sampler::new(1.0))
    }

    #[test]
    fn writes_traceparent_and_keeps_tracestate_with_it() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let c = ctx(&h);
        assert!(!c.sampled, "the caller's decision is kept");
        clear_stale(&mut h, &c);
        inject(&mut h, &c, 0x1234, false);
        assert_eq!(
            h[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-00"
        );
        assert_eq!(h[TRACESTATE], "congo=t61rcWkgMzE");
        assert!(!h.contains_key(B3_TRACE_ID));
    }

    #[test]
    fn tracestate_without_valid_traceparent_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("bogus"));
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let c = ctx(&h);
        clear_stale(&mut h, &c);
        inject(&mut h, &c, 7, false);
        assert!(!h.contains_key(TRACESTATE));
        let tp = h[TRACEPARENT].to_str().unwrap();
        assert_eq!(tp.len(), 55);
        assert!(tp.ends_with("-0000000000000007-01"), "{tp}");
    }

    #[test]
    fn b3_is_rewritten_in_the_form_it_came() {
        let mut h = HeaderMap::new();
        h.insert(
            B3,
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let c = ctx(&h);
        clear_stale(&mut h, &c);
        inject(&mut h, &c, 0xabc, false);
        assert_eq!(h[B3], "80f198ee56343ba864fe8b2a57d3eff7-0000000000000abc-1");
        assert_eq!(
            h[TRACEPARENT],
            "00-80f198ee56343ba864fe8b2a57d3eff7-0000000000000abc-01"
        );
        assert!(!h.contains_key(B3_TRACE_ID));

        let mut h = HeaderMap::new();
        h.insert(B3_TRACE_ID, HeaderValue::from_static("a3ce929d0e0e4736"));
        h.insert(B3_SPAN_ID, HeaderValue::from_static("e457b5a2e4d86bd1"));
        h.insert(B3_SAMPLED, HeaderValue::from_static("0"));
        h.insert(B3_FLAGS, HeaderValue::from_static("0"));
        let c = ctx(&h);
        clear_stale(&mut h, &c);
        inject(&mut h, &c, 0xabc, false);
        assert_eq!(h[B3_TRACE_ID], "0000000000000000a3ce929d0e0e4736");
        assert_eq!(h[B3_SPAN_ID], "0000000000000abc");
        assert_eq!(h[B3_PARENT_SPAN_ID], "e457b5a2e4d86bd1");
        assert_eq!(h[B3_SAMPLED], "0");
        assert!(!h.contains_key(B3_FLAGS));
        assert!(!h.contains_key(B3));
    }

    #[test]
    fn b3_injection_is_optional() {
        let mut h = HeaderMap::new();
        let c = ctx(&h);
        inject(&mut h, &c, 1, false);
        assert!(!h.contains_key(B3_TRACE_ID));
        inject(&mut h, &c, 1, true);
        assert_eq!(h[B3_SPAN_ID], "0000000000000001");
        assert_eq!(h[B3_SAMPLED], "1");
        assert!(
            !h.contains_key(B3_PARENT_SPAN_ID),
            "a new trace has no parent"
        );
    }
}
