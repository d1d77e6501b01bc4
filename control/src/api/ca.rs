//! The CA's roots: list them (never a key), rotate to a new one (pending until every sidecar
//! trusts it), show who lags, drop an old one.

use super::error::QueryArgs;
use super::{ApiError, AppState};
use crate::ca::RootInfo;
use crate::push::Trust;
use crate::state::{DropOutcome, RotateOutcome};
use axum::extract::{Path, State};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde::Serialize;

pub async fn list_roots(State(app): State<AppState>) -> Result<Json<Vec<RootInfo>>, ApiError> {
    Ok(Json(app.state.roots().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateQuery {
    #[serde(default)]
    force: bool,
}

/// A new root joins the bundle; it signs once every connected sidecar trusts it (at once with
/// `force=true`). The bundle holds both until the old one is dropped.
pub async fn rotate(
    State(app): State<AppState>,
    QueryArgs(q): QueryArgs<RotateQuery>,
) -> Result<(StatusCode, Json<RotateOutcome>), ApiError> {
    Ok((StatusCode::CREATED, Json(app.state.rotate(q.force).await?)))
}

#[derive(Serialize)]
pub struct Status {
    /// The mesh's mTLS mode and trust domain, as every snapshot carries them.
    mtls_mode: outrigger_config::MtlsMode,
    trust_domain: String,
    active: String,
    pending: Option<String>,
    /// Every sidecar seen, and whether it trusts the pending root (all do when none is).
    sidecars: Vec<Trust>,
    /// Connected sidecars the pending root waits for.
    lagging: Vec<String>,
}

/// `GET /v1/ca/status`: which root signs, which waits, and for whom.
pub async fn status(State(app): State<AppState>) -> Result<Json<Status>, ApiError> {
    let ca = app.state.ca_state().await?;
    let (pending, sidecars) = match &ca.pending {
        Some((id, pem)) => (Some(id.clone()), app.sidecars.trust(pem)),
        None => {
            let mut all = app.sidecars.trust("");
            for t in &mut all {
                t.trusts_pending = true;
            }
            (None, all)
        }
    };
    let lagging = crate::rollout::lagging(&sidecars)
        .into_iter()
        .map(|t| t.id.clone())
        .collect();
    let view = app.state.view();
    Ok(Json(Status {
        mtls_mode: view.mtls.mode,
        trust_domain: view.mtls.trust_domain.clone(),
        active: ca.active,
        pending,
        sidecars,
        lagging,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropQuery {
    #[serde(default)]
    force: bool,
}

pub async fn drop_root(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<DropQuery>,
) -> Result<Json<DropOutcome>, ApiError> {
    Ok(Json(app.state.drop_root(id, q.force).await?))
}
