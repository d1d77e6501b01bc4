//! The user service: registration, login and the caller's profile, all in memory.
//!
//! - `POST /register {"username","password"}` → 201 `{"id"}`; 409 `username-taken`
//! - `POST /login {"username","password"}` → 200 `{"token"}`; 401 `bad-credentials`
//! - `GET /profile` with `Authorization: Bearer <token>` → 200 `{"id","username"}`; 401
//!
//! Passwords are stored as salted SHA-256: not plain text, yet cheap enough that login under
//! load measures the mesh rather than a deliberately slow password hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids;
use crate::json::{ApiError, JsonBody};

pub const NAME: &str = "user";

/// Longest accepted username or password, in bytes: keeps one request from storing megabytes.
const MAX_FIELD: usize = 256;

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct Registered {
    id: String,
}

#[derive(Serialize)]
struct Session {
    token: String,
}

#[derive(Serialize)]
struct Profile {
    id: String,
    username: String,
}

struct Account {
    id: String,
    salt: [u8; 16],
    digest: [u8; 32],
}

#[derive(Default)]
struct Users {
    by_name: HashMap<String, Account>,
    /// token → username
    sessions: HashMap<String, String>,
}

type Shared = Arc<Mutex<Users>>;

/// The service's routes (faults, health and logging are added by `server`).
pub fn routes() -> Router {
    let state: Shared = Arc::default();
    Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/profile", get(profile))
        .with_state(state)
}

/// A panic elsewhere while holding the lock leaves the maps consistent (every update is a
/// single insert), so keep serving instead of poisoning the whole service.
fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Users> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn digest(salt: &[u8], password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// Compares digests without an early exit, so response time says nothing about how many
/// leading bytes of a guess were right.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_fields(creds: &Credentials) -> Result<(), ApiError> {
    if creds.username.is_empty() || creds.password.is_empty() {
        return Err(ApiError::bad_request(
            "bad-credentials-format",
            "username and password must not be empty",
        ));
    }
    if creds.username.len() > MAX_FIELD || creds.password.len() > MAX_FIELD {
        return Err(ApiError::bad_request(
            "bad-credentials-format",
            format!("username and password are at most {MAX_FIELD} bytes"),
        ));
    }
    Ok(())
}

async fn register(
    State(state): State<Shared>,
    JsonBody(creds): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    check_fields(&creds)?;
    let salt = ids::secret::<16>().map_err(|e| ApiError::internal(e.to_string()))?;
    let account = Account {
        id: ids::new_id("usr"),
        salt,
        digest: digest(&salt, &creds.password),
    };
    let mut users = lock(&state);
    if users.by_name.contains_key(&creds.username) {
        return Err(ApiError::new(StatusCode::CONFLICT, "username-taken"));
    }
    let id = account.id.clone();
    users.by_name.insert(creds.username, account);
    Ok((StatusCode::CREATED, Json(Registered { id })))
}

async fn login(
    State(state): State<Shared>,
    JsonBody(creds): JsonBody<Credentials>,
) -> Result<Json<Session>, Response> {
    let token = ids::secret::<32>()
        .map(|bytes| ids::hex(&bytes))
        .map_err(|e| ApiError::internal(e.to_string()).into_response())?;
    let mut users = lock(&state);
    let valid = users.by_name.get(&creds.username).is_some_and(|account| {
        same_digest(&account.digest, &digest(&account.salt, &creds.password))
    });
    if !valid {
        // Unknown user and wrong password answer alike, so logins cannot probe usernames.
        return Err(unauthorized("bad-credentials"));
    }
    users.sessions.insert(token.clone(), creds.username);
    Ok(Json(Session { token }))
}

async fn profile(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Profile>, Response> {
    let token = bearer_token(&headers).ok_or_else(|| unauthorized("missing-token"))?;
    let users = lock(&state);
    let username = users
        .sessions
        .get(token)
        .ok_or_else(|| unauthorized("bad-token"))?;
    let account = users
        .by_name
        .get(username)
        .ok_or_else(|| unauthorized("bad-token"))?;
    Ok(Json(Profile {
        id: account.id.clone(),
        username: username.clone(),
    }))
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(code: &'static str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, code).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_salted() {
        let a = digest(b"salt-a", "pw");
        let b = digest(b"salt-b", "pw");
        assert!(!same_digest(&a, &b));
        assert!(same_digest(&a, &digest(b"salt-a", "pw")));
        assert!(!same_digest(&a, &digest(b"salt-a", "pw2")));
    }

    #[test]
    fn parses_bearer_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }
}
