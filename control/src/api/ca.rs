//! The CA's roots: list them (never a key), rotate to a new one, drop an old one.

use super::error::QueryArgs;
use super::{ApiError, AppState};
use crate::ca::RootInfo;
use crate::state::{DropOutcome, RotateOutcome};
use axum::extract::{Path, State};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;

pub async fn list_roots(State(app): State<AppState>) -> Result<Json<Vec<RootInfo>>, ApiError> {
    Ok(Json(app.state.roots().await?))
}

/// A new root becomes the signer; the bundle holds both until the old one is dropped.
pub async fn rotate(
    State(app): State<AppState>,
) -> Result<(StatusCode, Json<RotateOutcome>), ApiError> {
    Ok((StatusCode::CREATED, Json(app.state.rotate().await?)))
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
