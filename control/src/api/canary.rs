//! `PATCH /v1/services/{name}/split`: canary weight changes.

use super::error::JsonBody;
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

pub async fn set_split(
    State(app): State<AppState>,
    Path(service): Path<String>,
    JsonBody(body): JsonBody<SplitBody>,
) -> Result<Json<SplitOutcome>, ApiError> {
    let outcome = app.state.split(service, body.weights).await?;
    tracing::info!(service = %outcome.service, split = ?outcome.split, revision = outcome.revision, "split changed");
    Ok(Json(outcome))
}
