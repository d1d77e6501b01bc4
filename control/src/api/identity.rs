//! The mesh CA's routes for workloads: minting a bootstrap token for a service (operators, with
//! the API token) and signing a sidecar's CSR (with that bootstrap token). Tokens and keys
//! are never logged.

use super::error::JsonBody;
use super::{ApiError, AppState};
use crate::auth::bearer;
use crate::ca::issue::CsrError;
use crate::ca::SignError;
use crate::clock;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use outrigger_config::path::FieldPath;
use outrigger_config::Validator;
use serde::Deserialize;
use serde_json::{json, Value};

/// Lifetime of a bootstrap token unless the request says otherwise.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
/// A year: tokens are for bootstrapping, not for ever.
pub const MAX_TOKEN_TTL_SECS: u64 = 366 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    service: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /v1/identity/tokens`: 201 with the token, shown this once.
pub async fn create_token(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<TokenBody>,
) -> Result<impl IntoResponse, ApiError> {
    let mut v = Validator::default();
    v.name(&body.service, FieldPath::root().key("service"));
    if let Some((path, reason)) = v.problems.into_iter().next() {
        return Err(ApiError::BadRequest(format!("{path}: {reason}")));
    }
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs: between 1 and {MAX_TOKEN_TTL_SECS}"
        )));
    }
    let minted = app
        .state
        .mint_token(body.service, std::time::Duration::from_secs(ttl))
        .await?;
    tracing::info!(service = %minted.service, expires_at = %minted.expires_at, "bootstrap token minted");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": minted.token.expose(),
            "service": minted.service,
            "expires_at": minted.expires_at,
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrBody {
    csr: String,
}

/// `POST /v1/identity/certificates`: authorized by a bootstrap token, not the API token.
pub async fn sign(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    // The token is asked for before the body is looked at.
    let Some(token) = bearer(&headers).and_then(|t| std::str::from_utf8(t).ok()) else {
        return Err(reject(
            &app,
            "token",
            ApiError::TokenRejected(
                "a bootstrap token is needed: Authorization: Bearer <token> (outrigger token SERVICE)"
                    .into(),
            ),
        ));
    };
    let body: CsrBody = serde_json::from_slice(&body).map_err(|e| {
        reject(
            &app,
            "malformed",
            ApiError::BadRequest(format!("invalid JSON body: {e}")),
        )
    })?;
    match app.state.sign(token.to_string(), body.csr).await {
        Ok(issued) => {
            app.metrics.certificates_issued.inc();
            tracing::info!(
                identity = %issued.identity,
                serial = %issued.leaf.serial,
                expires_at = %clock::rfc3339(issued.leaf.not_after_unix),
                "certificate issued"
            );
            Ok(Json(json!({
                "certificate_chain": issued.leaf.pem,
                "trust_bundle": issued.trust_bundle,
                "identity": issued.identity,
                "expires_at": clock::rfc3339(issued.leaf.not_after_unix),
                "not_after_unix": issued.leaf.not_after_unix,
            })))
        }
        Err(e) => {
            let (reason, err) = match e {
                SignError::Token(e) => ("token", ApiError::TokenRejected(e.to_string())),
                SignError::Csr(e @ CsrError::WrongIdentity { .. }) => {
                    ("identity", ApiError::Forbidden(e.to_string()))
                }
                SignError::Csr(e @ CsrError::BadSignature) => {
                    ("signature", ApiError::BadRequest(e.to_string()))
                }
                SignError::Csr(e @ CsrError::Malformed(_)) => {
                    ("malformed", ApiError::BadRequest(e.to_string()))
                }
                e @ (SignError::Ca(_) | SignError::Store(_)) => {
                    return Err(ApiError::Internal(e.to_string()))
                }
                e @ SignError::Stopped => return Err(ApiError::Unavailable(e.to_string())),
            };
            Err(reject(&app, reason, err))
        }
    }
}

/// Counts and logs a refused CSR; `reason` is one of a few fixed label values.
fn reject(app: &AppState, reason: &'static str, err: ApiError) -> ApiError {
    app.metrics.csr_rejected.with_label_values(&[reason]).inc();
    let detail = match &err {
        ApiError::TokenRejected(r) | ApiError::Forbidden(r) | ApiError::BadRequest(r) => r.as_str(),
        _ => "",
    };
    tracing::warn!(reason, detail, "CSR refused");
    err
}
