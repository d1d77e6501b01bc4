//! `POST /v1/apply` and reading and deleting Services, Routes and Policies.

use super::error::{QueryArgs, TextBody};
use super::{ApiError, AppState};
use crate::apply;
use axum::extract::{Path, State};
use axum::Json;
use outrigger_config::mesh::{Kind, Resource};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Validates the whole body, then stores all of it or nothing.
pub async fn apply(
    State(app): State<AppState>,
    QueryArgs(q): QueryArgs<ApplyQuery>,
    TextBody(text): TextBody,
) -> Result<Json<Value>, ApiError> {
    let parsed = match apply::parse(&text) {
        Ok(p) => p,
        Err(details) => {
            app.metrics.applies_rejected.inc();
            return Err(ApiError::Invalid(details));
        }
    };
    let warnings = parsed.warnings();
    let outcome = app.state.apply(parsed, q.dry_run).await?;
    for a in &outcome.applied {
        if !q.dry_run {
            tracing::info!(kind = a.kind.as_str(), name = %a.name, action = ?a.action, revision = outcome.revision, "applied");
        }
    }
    let mut body = json!(outcome);
    body["warnings"] = json!(warnings);
    Ok(Json(body))
}

fn list(app: &AppState, kind: Kind) -> Json<Vec<Resource>> {
    Json(app.state.view().resources.list(kind))
}

fn get_one(app: &AppState, kind: Kind, name: &str) -> Result<Json<Resource>, ApiError> {
    app.state
        .view()
        .resources
        .get(kind, name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("{} {name:?} not found", kind.as_str())))
}

async fn delete_one(app: &AppState, kind: Kind, name: String) -> Result<Json<Value>, ApiError> {
    let revision = app.state.delete(kind, name.clone()).await?;
    tracing::info!(kind = kind.as_str(), name = %name, revision, "deleted");
    Ok(Json(
        json!({"deleted": {"kind": kind, "name": name}, "revision": revision}),
    ))
}

pub async fn list_services(State(app): State<AppState>) -> Json<Vec<Resource>> {
    list(&app, Kind::Service)
}

pub async fn get_service(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Resource>, ApiError> {
    get_one(&app, Kind::Service, &name)
}

pub async fn delete_service(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    delete_one(&app, Kind::Service, name).await
}

pub async fn list_routes(State(app): State<AppState>) -> Json<Vec<Resource>> {
    list(&app, Kind::Route)
}

pub async fn get_route(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Resource>, ApiError> {
    get_one(&app, Kind::Route, &name)
}

pub async fn delete_route(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    delete_one(&app, Kind::Route, name).await
}

pub async fn list_policies(State(app): State<AppState>) -> Json<Vec<Resource>> {
    list(&app, Kind::Policy)
}

pub async fn get_policy(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Resource>, ApiError> {
    get_one(&app, Kind::Policy, &name)
}

pub async fn delete_policy(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    delete_one(&app, Kind::Policy, name).await
}
