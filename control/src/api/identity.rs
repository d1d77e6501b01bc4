//! The mesh CA's routes for workloads: minting, listing and revoking bootstrap tokens
//! (operators), and signing a sidecar's CSR: its first with a bootstrap token, every renewal
//! with its current certificate. Tokens and keys are never logged.

use super::error::JsonBody;
use super::{ApiError, AppState};
use crate::access::Caller;
use crate::auth::bearer;
use crate::ca::issue::CsrError;
use crate::ca::tokens::TokenInfo;
use crate::ca::{Credential, SignError};
use crate::clock;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Extension;
use axum::Json;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use outrigger_config::path::FieldPath;
use outrigger_config::Validator;
use serde::Deserialize;
use serde_json::{json, Value};

/// Lifetime of a bootstrap token unless the request says otherwise: long enough to start a
/// pod, short enough that a leaked one is soon worthless.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 600;
/// A year: tokens are for bootstrapping, not for ever.
pub const MAX_TOKEN_TTL_SECS: u64 = 366 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    service: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// Certificates it may get; any number until it expires when absent.
    #[serde(default)]
    uses: Option<u32>,
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
    if body.uses == Some(0) {
        return Err(ApiError::BadRequest(
            "uses: at least 1 (leave it out for any number until the token expires)".into(),
        ));
    }
    let minted = app
        .state
        .mint_token(body.service, std::time::Duration::from_secs(ttl), body.uses)
        .await?;
    tracing::info!(service = %minted.service, token_id = %minted.id, expires_at = %minted.expires_at, uses = ?minted.uses, "bootstrap token minted");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": minted.token.expose(),
            "id": minted.id,
            "service": minted.service,
            "expires_at": minted.expires_at,
            "uses": minted.uses,
        })),
    ))
}

/// `GET /v1/identity/tokens`: the live tokens, never their secrets.
pub async fn list_tokens(State(app): State<AppState>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(app.state.tokens().await?))
}

/// `DELETE /v1/identity/tokens/{id}`: revoked at once; certificates it got stay valid (their
/// sidecars renew with them).
pub async fn revoke_token(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.state.revoke_token(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrBody {
    csr: String,
}

/// `POST /v1/identity/certificates`: a workload's renewal, authorised by the certificate it
/// renews; a new sidecar's first, by its bootstrap token; or an operator's, by the admin token.
pub async fn sign(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    // The credential is asked for before the body is looked at.
    let credential = match caller {
        Caller::Workload(service) => Credential::Service(service),
        Caller::Admin => Credential::Operator,
        _ => match bearer(&headers).and_then(|t| std::str::from_utf8(t).ok()) {
            Some(token) => Credential::Token(token.to_string()),
            None => {
                return Err(reject(
                    &app,
                    "token",
                    ApiError::Unauthenticated(
                        "a bootstrap token (Authorization: Bearer <token>, from outrigger token SERVICE) or the workload's current certificate is needed"
                            .into(),
                    ),
                ))
            }
        },
    };
    let body: CsrBody = serde_json::from_slice(&body).map_err(|e| {
        reject(
            &app,
            "malformed",
            ApiError::BadRequest(format!("invalid JSON body: {e}")),
        )
    })?;
    match app.state.sign(credential, body.csr).await {
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
                SignError::Token(e) => ("token", ApiError::Unauthenticated(e.to_string())),
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
        ApiError::Unauthenticated(r) | ApiError::Forbidden(r) | ApiError::BadRequest(r) => {
            r.as_str()
        }
        _ => "",
    };
    tracing::warn!(reason, detail, "CSR refused");
    err
}
