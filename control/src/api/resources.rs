//! `POST /v1/apply` and reading and deleting Services, Routes and Policies.

use super::error::QueryArgs;
use super::{ApiError, AppState};
use crate::apply;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outrigger_config::mesh::{Kind, Resource};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
}

/// The largest apply body: 10,000 services with hosts, calls and splits are about 3 MiB, so
/// ten times that, for the [`outrigger_config::mesh::MAX_DOCUMENTS`] resources an apply may
/// hold. It bounds the memory one request can hold (the text, then its parsed documents).
pub const APPLY_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Validates the whole body, then stores all of it or nothing. A body over
/// [`APPLY_BODY_LIMIT`] is a 413 that names the limit.
pub async fn apply(
    State(app): State<AppState>,
    QueryArgs(q): QueryArgs<ApplyQuery>,
    body: Body,
) -> Result<Json<Value>, Response> {
    let bytes = axum::body::to_bytes(body, APPLY_BODY_LIMIT)
        .await
        .map_err(|e| too_large_or_bad(&e))?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|e| ApiError::BadRequest(format!("the body is not UTF-8: {e}")).into_response())?;
    apply_text(app, q, text)
        .await
        .map_err(IntoResponse::into_response)
}

fn too_large_or_bad(e: &axum::Error) -> Response {
    let over =
        std::error::Error::source(e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
    if over {
        let reason = format!(
            "the body is larger than the apply limit of {} MiB (APPLY_BODY_LIMIT); split it into \
             several applies",
            APPLY_BODY_LIMIT / (1024 * 1024)
        );
        ApiError::TooLarge(reason).into_response()
    } else {
        ApiError::BadRequest(format!("reading the body: {e}")).into_response()
    }
}

async fn apply_text(app: AppState, q: ApplyQuery, text: String) -> Result<Json<Value>, ApiError> {
    // Parsing a large apply takes a while: not on a runtime worker, which would stall every
    // other connection it serves meanwhile.
    let parsed = tokio::task::spawn_blocking(move || {
        apply::parse(&text).map(|p| {
            let warnings = p.warnings();
            (p, warnings)
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("parsing the apply: {e}")))?;
    let (parsed, warnings) = match parsed {
        Ok(p) => p,
        Err(details) => {
            app.metrics.applies_rejected.inc();
            return Err(ApiError::Invalid(details));
        }
    };
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
