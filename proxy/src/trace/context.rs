//! The incoming trace context: W3C `traceparent` (Trace Context level 1), B3 single
//! (`b3`) and B3 multi (`x-b3-*`), in that order of precedence. Anything malformed is
//! treated as absent: a bad header from outside starts a new trace, never an error.

use http::header::{HeaderMap, HeaderName};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// What arrived, if anything usable did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    /// The caller's span; `None` when only a sampling decision arrived (`b3: 1`).
    pub span_id: Option<u64>,
    /// The caller's decision; `None` leaves it to our sampler (B3 may defer).
    pub sampled: Option<bool>,
}

/// Which B3 form the request came with, so the one the app reads is kept current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum B3Form {
    #[default]
    None,
    Single,
    Multi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Incoming {
    pub parent: Option<Parent>,
    /// A decision without ids (`b3: 0`, `x-b3-sampled: 1` alone): start a new trace with it.
    pub decision: Option<bool>,
    pub b3: B3Form,
    /// `tracestate` belongs to the `traceparent` it came with; without a valid one it goes.
    pub w3c: bool,
}

/// Reads the trace context from request headers. Never fails.
pub fn read(headers: &HeaderMap) -> Incoming {
    let b3 = if headers.contains_key(B3) {
        B3Form::Single
    } else if headers.contains_key(B3_TRACE_ID)
        || headers.contains_key(B3_SAMPLED)
        || headers.contains_key(B3_FLAGS)
    {
        B3Form::Multi
    } else {
        B3Form::None
    };
    let mut incoming = Incoming {
        b3,
        ..Incoming::default()
    };
    if let Some(p) = single(headers, &TRACEPARENT).and_then(traceparent) {
        incoming.parent = Some(p);
        incoming.w3c = true;
        return incoming;
    }
    match b3 {
        B3Form::Single => match single(headers, &B3).map(b3_single) {
            Some(B3Single::Context(p)) => incoming.parent = Some(p),
            Some(B3Single::Decision(d)) => incoming.decision = Some(d),
            Some(B3Single::Invalid) | None => {}
        },
        B3Form::Multi => {
            let sampled = b3_sampled(headers);
            match b3_multi(headers) {
                Some((trace_id, span_id)) => {
                    incoming.parent = Some(Parent {
                        trace_id,
                        span_id: Some(span_id),
                        sampled,
                    })
                }
                None => incoming.decision = sampled,
            }
        }
        B3Form::None => {}
    }
    incoming
}

/// The header's value when it appears exactly once and is text; repeated trace headers are
/// ambiguous, so they count as absent.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    first.to_str().ok().map(str::trim)
}

/// `version-traceid-parentid-flags`. Version 00 is exactly 55 characters; a higher version
/// may append fields after a `-` (the spec's forward compatibility); `ff` is invalid.
fn traceparent(s: &str) -> Option<Parent> {
    let b = s.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = lower_hex(&b[0..2])? as u8;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = lower_hex(&b[3..35])?;
    let span_id = lower_hex(&b[36..52])? as u64;
    let flags = lower_hex(&b[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id: Some(span_id),
        sampled: Some(flags & 1 == 1),
    })
}

enum B3Single {
    Context(Parent),
    Decision(bool),
    Invalid,
}

/// `traceid-spanid[-sampling[-parentspanid]]`, or the sampling state alone.
fn b3_single(s: &str) -> B3Single {
    match s {
        "0" => return B3Single::Decision(false),
        "1" | "d" => return B3Single::Decision(true),
        _ => {}
    }
    let mut parts = s.split('-');
    let (Some(t), Some(sp)) = (parts.next(), parts.next()) else {
        return B3Single::Invalid;
    };
    let sampled = match parts.next() {
        None => None,
        Some("0") => Some(false),
        Some("1" | "d") => Some(true),
        Some(_) => return B3Single::Invalid,
    };
    if let Some(parent) = parts.next() {
        if parent.len() != 16 || lower_hex(parent.as_bytes()).is_none() {
            return B3Single::Invalid;
        }
    }
    if parts.next().is_some() {
        return B3Single::Invalid;
    }
    match (b3_trace_id(t), b3_span_id(sp)) {
        (Some(trace_id), Some(span_id)) => B3Single::Context(Parent {
            trace_id,
            span_id: Some(span_id),
            sampled,
        }),
        _ => B3Single::Invalid,
    }
}

fn b3_multi(headers: &HeaderMap) -> Option<(u128, u64)> {
    let t = b3_trace_id(single(headers, &B3_TRACE_ID)?)?;
    let s = b3_span_id(single(headers, &B3_SPAN_ID)?)?;
    Some((t, s))
}

/// `x-b3-flags: 1` (debug) implies sampled; `x-b3-sampled` takes `1`/`0` (and the legacy
/// `true`/`false`); anything else defers to our sampler.
fn b3_sampled(headers: &HeaderMap) -> Option<bool> {
    if single(headers, &B3_FLAGS) == Some("1") {
        return Some(true);
    }
    match single(headers, &B3_SAMPLED)? {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// B3 trace ids are 64 or 128 bits; a 64-bit one is the low half of the W3C id.
fn b3_trace_id(s: &str) -> Option<u128> {
    if s.len() != 16 && s.len() != 32 {
        return None;
    }
    lower_hex(s.as_bytes()).filter(|&t| t != 0)
}

fn b3_span_id(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    lower_hex(s.as_bytes())
        .map(|v| v as u64)
        .filter(|&v| v != 0)
}

/// Lowercase hex only, as both specs require; at most 32 digits.
fn lower_hex(b: &[u8]) -> Option<u128> {
    if b.is_empty() || b.len() > 32 {
        return None;
    }
    let mut v: u128 = 0;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
    const SPAN: u64 = 0x00f067aa0ba902b7;

    #[test]
    fn valid_traceparents() {
        let cases: &[(&str, Option<bool>)] = &[
            (TP, Some(true)),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                Some(false),
            ),
            // Unknown flag bits are ignored; only the sampled bit counts.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
                Some(true),
            ),
            // A future version may append fields.
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
                Some(true),
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                Some(false),
            ),
        ];
        for (v, sampled) in cases {
            let i = read(&headers(&[("traceparent", v)]));
            assert_eq!(
                i.parent,
                Some(Parent {
                    trace_id: TRACE,
                    span_id: Some(SPAN),
                    sampled: *sampled
                }),
                "{v}"
            );
            assert!(i.w3c, "{v}");
        }
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        let bad = [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for v in bad {
            let i = read(&headers(&[("traceparent", v)]));
            assert_eq!(i, Incoming::default(), "{v:?}");
        }
        // Twice is ambiguous: ignored.
        let i = read(&headers(&[("traceparent", TP), ("traceparent", TP)]));
        assert_eq!(i.parent, None);
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let i = read(&headers(&[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
            ("traceparent", TP),
        ]));
        assert_eq!(i.parent.map(|p| p.trace_id), Some(TRACE));
        assert_eq!(i.b3, B3Form::Single);
        // A bad traceparent falls back to B3.
        let i = read(&headers(&[
            ("traceparent", "nonsense"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]));
        assert_eq!(
            i.parent.map(|p| p.trace_id),
            Some(0x80f198ee56343ba864fe8b2a57d3eff7)
        );
        assert!(!i.w3c);
    }

    #[test]
    fn b3_single_forms() {
        let ok: &[(&str, u128, u64, Option<bool>)] = &[
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
                0x80f198ee56343ba864fe8b2a57d3eff7,
                0xe457b5a2e4d86bd1,
                Some(true),
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0",
                0x80f198ee56343ba864fe8b2a57d3eff7,
                0xe457b5a2e4d86bd1,
                Some(false),
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d",
                0x80f198ee56343ba864fe8b2a57d3eff7,
                0xe457b5a2e4d86bd1,
                Some(true),
            ),
            // Deferred decision; 64-bit trace id.
            (
                "a3ce929d0e0e4736-e457b5a2e4d86bd1",
                0xa3ce929d0e0e4736,
                0xe457b5a2e4d86bd1,
                None,
            ),
        ];
        for (v, t, s, sampled) in ok {
            let i = read(&headers(&[("b3", v)]));
            assert_eq!(
                i.parent,
                Some(Parent {
                    trace_id: *t,
                    span_id: Some(*s),
                    sampled: *sampled
                }),
                "{v}"
            );
            assert_eq!(i.b3, B3Form::Single);
        }
        assert_eq!(read(&headers(&[("b3", "0")])).decision, Some(false));
        assert_eq!(read(&headers(&[("b3", "1")])).decision, Some(true));
        assert_eq!(read(&headers(&[("b3", "d")])).decision, Some(true));
        let bad = [
            "",
            "2",
            "true",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd-1",
            "80f198ee56343ba864fe8b2a57d3ef-e457b5a2e4d86bd1-1",
            "80F198EE56343BA864FE8B2A57D3EFF7-E457B5A2E4D86BD1-1",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
        ];
        for v in bad {
            let i = read(&headers(&[("b3", v)]));
            assert_eq!((i.parent, i.decision), (None, None), "{v:?}");
            assert_eq!(i.b3, B3Form::Single, "{v:?}");
        }
    }

    #[test]
    fn b3_multi_forms() {
        let i = read(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(
            i.parent,
            Some(Parent {
                trace_id: 0x463ac35c9f6413ad48485a3953bb6124,
                span_id: Some(0xa2fb4a1d1a96d312),
                sampled: Some(true)
            })
        );
        assert_eq!(i.b3, B3Form::Multi);
        let sampled = |pairs: &[(&str, &str)]| {
            let mut all = vec![
                ("x-b3-traceid", "48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ];
            all.extend_from_slice(pairs);
            read(&headers(&all)).parent.and_then(|p| p.sampled)
        };
        assert_eq!(sampled(&[("x-b3-sampled", "0")]), Some(false));
        assert_eq!(sampled(&[("x-b3-sampled", "true")]), Some(true));
        assert_eq!(
            sampled(&[("x-b3-flags", "1"), ("x-b3-sampled", "0")]),
            Some(true)
        );
        assert_eq!(sampled(&[("x-b3-sampled", "maybe")]), None);
        assert_eq!(sampled(&[]), None);
        // Decision alone.
        assert_eq!(
            read(&headers(&[("x-b3-sampled", "0")])).decision,
            Some(false)
        );
        // Bad ids: no context.
        for (t, s) in [
            ("48485a3953bb612", "a2fb4a1d1a96d312"),
            ("48485a3953bb6124", "A2FB4A1D1A96D312"),
            ("0000000000000000", "a2fb4a1d1a96d312"),
            ("48485a3953bb6124", ""),
        ] {
            let i = read(&headers(&[("x-b3-traceid", t), ("x-b3-spanid", s)]));
            assert_eq!(i.parent, None, "{t} {s}");
        }
    }

    #[test]
    fn non_text_headers_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_bytes(b"00-\xff").unwrap());
        assert_eq!(read(&h).parent, None);
    }
}
