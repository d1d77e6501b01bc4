//! The snapshot subscription: one long-lived NDJSON stream per sidecar. Each `snapshot` line
//! is decoded, completed with what only the sidecar knows (its app address and version),
//! validated, applied, and ACKed; a line that fails any of that is NACKed with the reason and
//! the last good snapshot keeps serving. A silent or broken stream is dropped and reopened.
//! An applied snapshot's trust bundle joins the roots the channel trusts, which is how a
//! rotated root reaches the sidecar before the control plane's certificate is signed by it.

use super::api::Api;
use super::push_stream::{self, Line, LineTooLong, Lines};
use super::trust::Trust;
use super::{backoff, ControlPlane};
use crate::sidecar::Sidecar;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub const SOURCE: &str = "control-plane";
/// The control plane sends a keepalive every 10 s; three missed ones mean the stream is dead.
const IDLE: Duration = Duration::from_secs(30);

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
    #[error(transparent)]
    LineTooLong(#[from] LineTooLong),
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
    let mut lines = Lines::default();
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
        lines.feed(&data, |line| {
            if handle_line(cp, api, trust, sidecar, line) {
                *applied = true;
            }
        })?;
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
    let (version, decoded) = match push_stream::parse(line, cp.app.as_ref(), &cp.version) {
        Line::Nothing => return false,
        Line::Unreadable(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable control plane message");
            return false;
        }
        Line::Snapshot { version, snapshot } => (version, snapshot),
    };
    match decoded {
        Ok(snapshot) => {
            let bundle = trust.map(|_| snapshot.mtls.trust_bundle.clone());
            let version = sidecar
                .snapshot
                .apply(*snapshot, SOURCE, &sidecar.telemetry);
            if let (Some(trust), Some(bundle)) = (trust, bundle) {
                trust.set_pushed(&bundle);
            }
            tracing::info!(version, "applied snapshot from the control plane");
            ack(cp, api, version, None);
            true
        }
        Err(reason) => {
            sidecar.snapshot.reject(SOURCE, &sidecar.telemetry);
            tracing::warn!(version, %reason, "rejected snapshot; the last good one keeps serving");
            ack(cp, api, version, Some(reason));
            false
        }
    }
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

    #[test]
    fn encode_keeps_tokens_and_escapes_the_rest() {
        assert_eq!(encode("order-1.a_b~"), "order-1.a_b~");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
