//! The sidecars' routes: the push stream, ACK/NACK, and their sync status. A sidecar's
//! certificate opens only its own service's stream, and a sidecar id, once seen, belongs to
//! that service: no workload can ACK for, or pose as, another's sidecar.

use super::error::{JsonBody, QueryArgs};
use super::{ApiError, AppState};
use crate::access::Caller;
use crate::push::{self, SidecarStatus, StreamContext, Subscriber};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{header, StatusCode};
use outrigger_config::path::FieldPath;
use outrigger_config::Validator;
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Deserialize)]
pub struct StreamQuery {
    service: String,
    sidecar: String,
    /// The instance's version label; older sidecars do not send it.
    #[serde(default)]
    version: Option<String>,
    /// The sidecar's admin listener (`ip:port`); older sidecars do not send it.
    #[serde(default)]
    admin: Option<String>,
}

/// Ids are shown to operators and used as map keys; keep them short and printable.
fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 253 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(
            "sidecar ids are 1-253 printable ASCII characters without spaces".into(),
        ));
    }
    Ok(())
}

pub async fn stream(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryArgs(q): QueryArgs<StreamQuery>,
) -> Result<Response, ApiError> {
    if !caller.may_act_for(&q.service) {
        return Err(ApiError::Forbidden(
            caller.not_for(&q.service, "read the snapshot"),
        ));
    }
    let mut v = Validator::default();
    v.name(&q.service, FieldPath::root().key("service"));
    if let Some(version) = &q.version {
        v.name(version, FieldPath::root().key("version"));
    }
    if let Some((path, reason)) = v.problems.into_iter().next() {
        return Err(ApiError::BadRequest(format!("{path}: {reason}")));
    }
    check_id(&q.sidecar)?;
    if let Some(owner) = app.sidecars.owner(&q.sidecar) {
        if owner != q.service && !matches!(caller, Caller::Admin) {
            return Err(ApiError::Forbidden(format!(
                "sidecar id {:?} belongs to service {owner:?}",
                q.sidecar
            )));
        }
    }
    // Operators' tools connect to this address, so it must be one, not any text.
    let admin = match &q.admin {
        None => None,
        Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
            ApiError::BadRequest(format!("admin: {a:?} is not an ip:port address"))
        })?),
    };
    tracing::info!(sidecar = %q.sidecar, service = %q.service, "stream opened");
    let body = push::open(
        StreamContext {
            state: app.state.clone(),
            sidecars: app.sidecars.clone(),
            metrics: app.metrics.clone(),
            keepalive: app.keepalive,
            lines: app.lines.clone(),
            shutdown: app.shutdown.clone(),
        },
        Subscriber {
            id: q.sidecar,
            service: q.service,
            version: q.version,
            admin,
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::new(body),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    version: u64,
    #[serde(default)]
    error: Option<String>,
}

pub async fn ack(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AckBody>,
) -> Result<StatusCode, ApiError> {
    if let Some(owner) = app.sidecars.owner(&id) {
        if !caller.may_act_for(&owner) {
            return Err(ApiError::Forbidden(
                caller.not_for(&owner, "acknowledge snapshots"),
            ));
        }
    }
    if let Some(reason) = &body.error {
        tracing::warn!(sidecar = %id, version = body.version, reason = %reason, "snapshot refused (NACK)");
    }
    if app.sidecars.ack(&id, body.version, body.error) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "sidecar {id:?} has no push stream: open /v1/stream first"
        )))
    }
}

pub async fn list(State(app): State<AppState>) -> Json<Vec<SidecarStatus>> {
    Json(app.sidecars.list())
}
