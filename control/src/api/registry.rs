//! The registry routes: register, heartbeat, deregister, list. A sidecar's certificate lets it
//! keep only its own service's instances.

use super::error::{JsonBody, QueryArgs};
use super::{ApiError, AppState};
use crate::access::Caller;
use crate::registry::{Instance, Registration};
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

pub async fn register(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(reg): JsonBody<Registration>,
) -> Result<impl IntoResponse, ApiError> {
    if !caller.may_act_for(&reg.service) {
        return Err(ApiError::Forbidden(
            caller.not_for(&reg.service, "register instances"),
        ));
    }
    let i = app.state.register(reg).await?;
    tracing::info!(id = %i.id, service = %i.service, version = %i.version, endpoint = %i.endpoint, "registered");
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": i.id, "ttl_secs": i.ttl_secs, "endpoint": i.endpoint})),
    ))
}

/// 404 tells the sidecar its lease is gone (expired, or the control plane restarted): it
/// registers again.
pub async fn heartbeat(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    own(&app, &caller, &id, "heartbeat")?;
    if app.state.heartbeat(id.clone()).await? {
        Ok(Json(json!({"id": id})))
    } else {
        Err(ApiError::NotFound(format!(
            "lease {id:?} is unknown or expired: register again"
        )))
    }
}

pub async fn deregister(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    own(&app, &caller, &id, "deregister")?;
    if app.state.deregister(id.clone()).await? {
        tracing::info!(id = %id, "deregistered");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("lease {id:?} is unknown")))
    }
}

/// Refuses a caller that may not act for the service instance `id` belongs to. An unknown id
/// passes, so the handler's 404 tells a sidecar to register again.
fn own(app: &AppState, caller: &Caller, id: &str, what: &str) -> Result<(), ApiError> {
    let view = app.state.view();
    match view.instances.iter().find(|i| i.id == id) {
        Some(i) if !caller.may_act_for(&i.service) => Err(ApiError::Forbidden(
            caller.not_for(&i.service, &format!("{what} its instances")),
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    service: Option<String>,
}

pub async fn list(
    State(app): State<AppState>,
    QueryArgs(q): QueryArgs<ListQuery>,
) -> Json<Vec<Instance>> {
    let view = app.state.view();
    Json(
        view.instances
            .iter()
            .filter(|i| q.service.as_ref().is_none_or(|s| &i.service == s))
            .cloned()
            .collect(),
    )
}
