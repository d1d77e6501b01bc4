//! The push stream's wire format, apart from the network: NDJSON split into lines with a bound
//! on a line's size, and each line decoded into a snapshot completed with what only this
//! sidecar knows (its app address and version) and validated. Pure, so it is unit-tested and
//! fuzzed (`tests/fuzz`, target `push_stream`) on its own.

use outrigger_config::path::FieldPath;
use outrigger_config::snapshot::EndpointAddress;
use outrigger_config::{Snapshot, Validate, Validator};
use serde::Deserialize;

/// A snapshot line larger than this is refused rather than buffered without bound.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a line exceeded {MAX_LINE} bytes")]
pub struct LineTooLong;

/// Bytes as they arrive, cut into lines.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Adds `chunk` and hands every complete line (without its `\n`) to `each`.
    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(&[u8])) -> Result<(), LineTooLong> {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.buf[start..].iter().position(|b| *b == b'\n') {
            each(&self.buf[start..start + end]);
            start += end + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            return Err(LineTooLong);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    snapshot: Option<serde_json::Value>,
}

/// What one line says.
#[derive(Debug)]
pub enum Line {
    /// Blank, a keepalive, or a kind this sidecar does not know.
    Nothing,
    /// Not JSON of the stream's shape: logged and skipped, as the control plane never sends it.
    Unreadable(String),
    /// A snapshot, or why it is refused (the NACK reason, naming the field).
    Snapshot {
        version: u64,
        snapshot: Result<Box<Snapshot>, String>,
    },
}

/// Decodes one line for a sidecar fronting `app` as instance version `version`.
pub fn parse(line: &[u8], app: Option<&EndpointAddress>, version: &str) -> Line {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Nothing;
    }
    let msg: Message = match serde_json::from_slice(line) {
        Ok(m) => m,
        Err(e) => return Line::Unreadable(e.to_string()),
    };
    if msg.kind != "snapshot" {
        return Line::Nothing;
    }
    Line::Snapshot {
        version: msg.version,
        snapshot: decode(msg.version, msg.snapshot, app, version).map(Box::new),
    }
}

fn decode(
    version: u64,
    value: Option<serde_json::Value>,
    app: Option<&EndpointAddress>,
    instance_version: &str,
) -> Result<Snapshot, String> {
    let value = value.ok_or_else(|| "the message has no snapshot".to_string())?;
    let mut snapshot: Snapshot = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    snapshot.version = version;
    if let Some(i) = snapshot.inbound.as_mut() {
        if i.app.is_none() {
            i.app = app.cloned();
        }
        i.version = instance_version.to_string();
    }
    let mut v = Validator::default();
    snapshot.validate(&FieldPath::root(), &mut v);
    if !v.problems.is_empty() {
        let reasons: Vec<String> = v
            .problems
            .iter()
            .map(|(p, r)| format!("{p}: {r}"))
            .collect();
        return Err(reasons.join("; "));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut l = Lines::default();
        let mut out = Vec::new();
        for c in chunks {
            let fed = l.feed(c, |line| {
                out.push(String::from_utf8_lossy(line).into_owned())
            });
            assert_eq!(fed, Ok(()));
        }
        out
    }

    #[test]
    fn lines_are_cut_wherever_the_chunks_end() {
        assert_eq!(lines(&[b"a\nb", b"c\n\nd"]), ["a", "bc", ""]);
        assert_eq!(lines(&[b"\n\n"]), ["", ""]);
        let mut l = Lines::default();
        let big = vec![b'x'; MAX_LINE + 1];
        assert_eq!(l.feed(&big, |_| {}), Err(LineTooLong));
    }

    #[test]
    fn a_line_is_nothing_unreadable_or_a_snapshot_with_its_reason() {
        assert!(matches!(parse(b"  ", None, "v1"), Line::Nothing));
        assert!(matches!(
            parse(br#"{"type":"keepalive"}"#, None, "v1"),
            Line::Nothing
        ));
        assert!(matches!(
            parse(b"{not json", None, "v1"),
            Line::Unreadable(_)
        ));
        let good =
            br#"{"type":"snapshot","version":7,"snapshot":{"service":"order","inbound":{}}}"#;
        let app: EndpointAddress = "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        match parse(good, Some(&app), "v2") {
            Line::Snapshot {
                version: 7,
                snapshot: Ok(s),
            } => {
                assert_eq!(s.version, 7);
                let inbound = s.inbound.unwrap_or_else(|| panic!("no inbound"));
                assert_eq!(inbound.app, Some(app));
                assert_eq!(inbound.version, "v2");
            }
            other => panic!("{other:?}"),
        }
        let bad = br#"{"type":"snapshot","version":8,"snapshot":{"service":"order","destinations":[{"name":"x","connect_timeout":"0s"}]}}"#;
        match parse(bad, None, "v1") {
            Line::Snapshot {
                version: 8,
                snapshot: Err(reason),
            } => {
                assert!(
                    reason.contains("destinations[0].connect_timeout"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(br#"{"type":"snapshot","version":9}"#, None, "v1"),
            Line::Snapshot {
                snapshot: Err(_),
                ..
            }
        ));
    }
}
