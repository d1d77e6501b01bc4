//! `PATCH /v1/services/{name}/split`: canary weight changes.

use super::error::{JsonBody, QueryArgs};
use super::{ApiError, AppState};
use crate::state::SplitOutcome;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitBody {
    /// Version → percent.
    weights: BTreeMap<String, u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SplitQuery {
    /// Accept a version with no registered instance (the outcome warns).
    #[serde(default)]
    force: bool,
}

pub async fn set_split(
    State(app): State<AppState>,
    Path(service): Path<String>,
    QueryArgs(q): QueryArgs<SplitQuery>,
    JsonBody(body): JsonBody<SplitBody>,
) -> Result<Json<SplitOutcome>, ApiError> {
    let outcome = app.state.split(service, body.weights, q.force).await?;
    tracing::info!(service = %outcome.service, split = ?outcome.split, revision = outcome.revision, "split changed");
    Ok(Json(outcome))
}
