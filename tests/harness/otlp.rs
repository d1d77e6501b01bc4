//! A real OTLP/gRPC trace receiver as a child process (`tests/otlp/receiver.py`, built from
//! the official OpenTelemetry protobuf definitions), the spans it has received, and the
//! W3C `traceparent` as the tests read it off the wire.

use crate::eventually;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// One received span, as the receiver wrote it.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent: Option<String>,
    pub name: String,
    /// `SPAN_KIND_CLIENT`, `SPAN_KIND_SERVER`, ...
    pub kind: String,
    /// The resource's `service.name`.
    pub service: String,
    pub resource: serde_json::Value,
    pub attributes: serde_json::Value,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_OK` or `STATUS_CODE_ERROR`.
    pub status: String,
}

impl Span {
    fn from_json(v: &serde_json::Value) -> Option<Span> {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        Some(Span {
            trace_id: s("trace_id")?,
            span_id: s("span_id")?,
            parent: s("parent_span_id"),
            name: s("name")?,
            kind: s("kind")?,
            service: s("service").unwrap_or_default(),
            resource: v["resource"].clone(),
            attributes: v["attributes"].clone(),
            status: s("status")?,
        })
    }

    pub fn attr(&self, key: &str) -> &serde_json::Value {
        &self.attributes[key]
    }

    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attributes[key].as_str()
    }

    pub fn int_attr(&self, key: &str) -> Option<i64> {
        self.attributes[key].as_i64()
    }

    /// `outrigger.attempt`, 0 when missing.
    pub fn attempt(&self) -> i64 {
        self.int_attr("outrigger.attempt").unwrap_or(0)
    }

    pub fn is_client(&self) -> bool {
        self.kind == "SPAN_KIND_CLIENT"
    }

    pub fn is_server(&self) -> bool {
        self.kind == "SPAN_KIND_SERVER"
    }
}

/// The running receiver. Killed when dropped.
pub struct Receiver {
    child: tokio::process::Child,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// A receiver that accepts every export at once.
    pub async fn start() -> Receiver {
        Self::with_args(&[]).await
    }

    /// A receiver with extra flags: `--delay SECONDS` (a slow collector), `--fail`.
    pub async fn with_args(args: &[&str]) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py");
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("spans.jsonl");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 tests/otlp/receiver.py");
        let stdout = child.stdout.take().expect("receiver stdout");
        let mut line = String::new();
        // Importing grpcio and the generated stubs takes a while on a loaded machine.
        let read = tokio::time::timeout(
            Duration::from_secs(60),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        let port = match read {
            Ok(Ok(_)) => line.trim().parse().ok(),
            _ => None,
        };
        let Some(port) = port else {
            let _ = child.start_kill();
            panic!(
                "the OTLP receiver did not start (needs `python3 -m pip install -r \
                 tests/requirements.txt`); stdout {line:?}, stderr: {}",
                std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
            );
        };
        Receiver {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// What a proxy's `--otlp-endpoint` / `tracing.otlp_endpoint` should say.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        // Only whole lines: the receiver may be in the middle of writing the last one.
        let whole = text.rfind('\n').map_or("", |i| &text[..i]);
        whole
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter_map(|v| Span::from_json(&v))
            .collect()
    }

    /// The spans of one trace received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Waits until the trace has at least `n` spans and returns them.
    pub async fn wait_trace(&self, trace_id: &str, n: usize) -> Vec<Span> {
        eventually(
            Duration::from_secs(30),
            &format!("{n} span(s) of trace {trace_id} at the receiver"),
            || async {
                let spans = self.trace(trace_id);
                (spans.len() >= n).then_some(spans)
            },
        )
        .await
    }

    /// Whether the process is still running (a crashed receiver explains missing spans).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A W3C `traceparent` as it was seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traceparent {
    pub version: String,
    pub trace_id: String,
    pub parent_id: String,
    pub flags: String,
}

impl Traceparent {
    /// Parses a `traceparent` strictly: version 00, lowercase hex of the right lengths, no
    /// all-zero ids. `None` for anything else, so a test can assert a header is valid.
    pub fn parse(s: &str) -> Option<Traceparent> {
        let parts: Vec<&str> = s.split('-').collect();
        let [version, trace_id, parent_id, flags] = parts[..] else {
            return None;
        };
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let nonzero = |p: &str| p.bytes().any(|b| b != b'0');
        (version == "00"
            && hex(trace_id, 32)
            && nonzero(trace_id)
            && hex(parent_id, 16)
            && nonzero(parent_id)
            && hex(flags, 2))
        .then(|| Traceparent {
            version: version.into(),
            trace_id: trace_id.into(),
            parent_id: parent_id.into(),
            flags: flags.into(),
        })
    }

    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.flags, 16).is_ok_and(|f| f & 1 == 1)
    }
}
