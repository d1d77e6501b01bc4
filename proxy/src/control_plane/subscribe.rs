//! The snapshot subscription: one long-lived NDJSON stream per sidecar. Each `snapshot` line
//! is decoded, completed with what only the sidecar knows (its app address and version),
//! validated, applied, and ACKed; a line that fails any of that is NACKed with the reason and
//! the last good snapshot keeps serving. A silent or broken stream is dropped and reopened.
//! An applied snapshot's trust bundle joins the roots the channel trusts, which is how a
//! rotated root reaches the sidecar before the control plane's certificate is signed by it.

use super::api::Api;
use super::trust::Trust;
use super::{backoff, ControlPlane};
use crate::sidecar::Sidecar;
use outrigger_config::path::FieldPath;
use outrigger_config::{Snapshot, Validate, Validator};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub const SOURCE: &str = "control-plane";
/// The control plane sends a keepalive every 10 s; three missed ones mean the stream is dead.
const IDLE: Duration = Duration::from_secs(30);
/// A snapshot line larger than this is refused rather than buffered without bound.
const MAX_LINE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Api(#[from] super::api::ApiError),
    #[error("stream broke: {0}")]
    Stream(#[from] hyper::Error),
    #[error("no message for {0:?}")]
    Idle(Duration),
    #[error("the stream ended")]
    Ended,
    #[error("a line exceeded {MAX_LINE} bytes")]
    LineTooLong,
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

pub fn spawn(cp: ControlPlane, api: Api, trust: Option<Arc<Trust>>, sidecar: Arc<Sidecar>) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            // Without its certificate the sidecar could only be refused: wait for it instead.
            api.credential_ready().await;
            let mut applied = false;
            let result = session(&cp, &api, trust.as_deref(), &sidecar, &mut applied).await;
            sidecar.telemetry.metrics.control_plane_connected.set(0);
            if let Err(e) = result {
                tracing::warn!(error = %e, "control plane stream lost; serving the last good snapshot");
            }
            sidecar.telemetry.metrics.control_plane_reconnects.inc();
            failures = if applied {
                0
            } else {
                failures.saturating_add(1)
            };
            tokio::time::sleep(backoff(failures)).await;
        }
    });
}

async fn session(
    cp: &ControlPlane,
    api: &Api,
    trust: Option<&Trust>,
    sidecar: &Sidecar,
    applied: &mut bool,
) -> Result<(), SessionError> {
    let mut path = format!(
        "/v1/stream?service={}&sidecar={}&version={}",
        encode(&cp.service),
        encode(&cp.sidecar_id),
        encode(&cp.version)
    );
    // So operators' tools (`outrigger top`) can find this sidecar's /metrics and /stats.
    if let Some(admin) = cp.admin {
        path.push_str(&format!("&admin={}", encode(&admin.to_string())));
    }
    let mut body = api.stream(&path).await?;
    sidecar.telemetry.metrics.control_plane_connected.set(1);
    tracing::info!(service = %cp.service, sidecar = %cp.sidecar_id, "subscribed to the control plane");
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame =
            match tokio::time::timeout(IDLE, http_body_util::BodyExt::frame(&mut body)).await {
                Err(_) => return Err(SessionError::Idle(IDLE)),
                Ok(None) => return Err(SessionError::Ended),
                Ok(Some(f)) => f?,
            };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if handle_line(cp, api, trust, sidecar, &line[..end]) {
                *applied = true;
            }
        }
        if buf.len() > MAX_LINE {
            return Err(SessionError::LineTooLong);
        }
    }
}

/// Returns whether a snapshot was applied.
fn handle_line(
    cp: &ControlPlane,
    api: &Api,
    trust: Option<&Trust>,
    sidecar: &Sidecar,
    line: &[u8],
) -> bool {
    if line.iter().all(u8::is_ascii_whitespace) {
        return false;
    }
    let msg: Message = match serde_json::from_slice(line) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable control plane message");
            return false;
        }
    };
    if msg.kind != "snapshot" {
        return false;
    }
    match decode(cp, msg.version, msg.snapshot) {
        Ok(snapshot) => {
            let bundle = trust.map(|_| snapshot.mtls.trust_bundle.clone());
            let version = sidecar.snapshot.apply(snapshot, SOURCE, &sidecar.telemetry);
            if let (Some(trust), Some(bundle)) = (trust, bundle) {
                trust.set_pushed(&bundle);
            }
            tracing::info!(version, "applied snapshot from the control plane");
            ack(cp, api, msg.version, None);
            true
        }
        Err(reason) => {
            sidecar.snapshot.reject(SOURCE, &sidecar.telemetry);
            tracing::warn!(version = msg.version, %reason, "rejected snapshot; the last good one keeps serving");
            ack(cp, api, msg.version, Some(reason));
            false
        }
    }
}

/// Decodes and completes a snapshot; the error is the NACK reason, naming the field.
fn decode(
    cp: &ControlPlane,
    version: u64,
    value: Option<serde_json::Value>,
) -> Result<Snapshot, String> {
    let value = value.ok_or_else(|| "the message has no snapshot".to_string())?;
    let mut snapshot: Snapshot = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    snapshot.version = version;
    if let Some(i) = snapshot.inbound.as_mut() {
        if i.app.is_none() {
            i.app = cp.app.clone();
        }
        i.version = cp.version.clone();
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

fn ack(cp: &ControlPlane, api: &Api, version: u64, error: Option<String>) {
    let api = api.clone();
    let path = format!("/v1/sidecars/{}/ack", encode(&cp.sidecar_id));
    tokio::spawn(async move {
        let body = json!({ "version": version, "error": error });
        if let Err(e) = api.call(http::Method::POST, &path, Some(&body)).await {
            tracing::warn!(error = %e, version, "could not report the snapshot outcome to the control plane");
        }
    });
}

/// Percent-encodes a query or path value (names are plain tokens; this keeps odd ones safe).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> ControlPlane {
        ControlPlane {
            url: http::Uri::from_static("http://127.0.0.1:1"),
            service: "order".into(),
            version: "v2".into(),
            sidecar_id: "order-1".into(),
            channel: super::super::channel::Channel::Plaintext {
                operator_token: None,
                bootstrap_token: None,
            },
            app: Some("127.0.0.1:8085".parse().unwrap()),
            advertise: None,
            admin: None,
            trust_domain: "outrigger.local".into(),
        }
    }

    #[test]
    fn decode_fills_in_what_the_sidecar_knows() {
        let v = json!({"service": "order", "inbound": {"protocol": "http1"}, "destinations": []});
        let s = decode(&cp(), 7, Some(v)).expect("valid");
        assert_eq!(s.version, 7);
        let i = s.inbound.expect("inbound");
        assert_eq!(i.app, Some("127.0.0.1:8085".parse().unwrap()));
        assert_eq!(i.version, "v2");
    }

    #[test]
    fn decode_errors_name_the_field() {
        let v = json!({"service": "order", "destinations": [{"name": "payment", "endpoints": [{"address": "nope"}]}]});
        let e = decode(&cp(), 1, Some(v)).expect_err("invalid");
        assert!(
            e.starts_with("destinations[0].endpoints[0].address:"),
            "{e}"
        );
        let v = json!({"service": "Order!"});
        let e = decode(&cp(), 1, Some(v)).expect_err("invalid");
        assert!(e.contains("service: "), "{e}");
    }

    #[test]
    fn encode_keeps_tokens_and_escapes_the_rest() {
        assert_eq!(encode("order-1.a_b~"), "order-1.a_b~");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
