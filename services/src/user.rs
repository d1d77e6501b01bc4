//! The user service: registration, login and the caller's profile, in the service's SQLite
//! database (accounts and sessions survive a restart and are shared by its instances).
//!
//! - `POST /register {"username","password"}` → 201 `{"id"}`; 409 `username-taken`
//! - `POST /login {"username","password"}` → 200 `{"token"}`; 401 `bad-credentials`
//! - `GET /profile` with `Authorization: Bearer <token>` → 200 `{"id","username"}`; 401
//!
//! Passwords are stored as salted SHA-256: not plain text, yet cheap enough that login under
//! load measures the mesh rather than a deliberately slow password hash.

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
use crate::store::{Db, StoreError};
use rusqlite::{params, OptionalExtension};

/// Accounts (salted digests) and session tokens.
pub const SCHEMA: &str = "
    CREATE TABLE accounts (
        username TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        salt BLOB NOT NULL,
        digest BLOB NOT NULL
    );
    CREATE TABLE sessions (token TEXT PRIMARY KEY, username TEXT NOT NULL)";

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

/// The service's routes (faults, health and logging are added by `server`).
pub fn routes(db: Db) -> Router {
    Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/profile", get(profile))
        .with_state(db)
}

fn unavailable(e: StoreError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "users-unavailable").with_detail(e.to_string())
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
    State(db): State<Db>,
    JsonBody(creds): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    check_fields(&creds)?;
    let salt = ids::secret::<16>().map_err(|e| ApiError::internal(e.to_string()))?;
    let id = ids::new_id("usr");
    let hashed = digest(&salt, &creds.password);
    let row = id.clone();
    // The username is the primary key: two instances registering one name cannot both win.
    let inserted = db
        .call(move |c| {
            c.execute(
                "INSERT INTO accounts (username, id, salt, digest) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (username) DO NOTHING",
                params![creds.username, row, salt.as_slice(), hashed.as_slice()],
            )
        })
        .await
        .map_err(unavailable)?;
    if inserted == 0 {
        return Err(ApiError::new(StatusCode::CONFLICT, "username-taken"));
    }
    Ok((StatusCode::CREATED, Json(Registered { id })))
}

async fn login(
    State(db): State<Db>,
    JsonBody(creds): JsonBody<Credentials>,
) -> Result<Json<Session>, Response> {
    let token = ids::secret::<32>()
        .map(|bytes| ids::hex(&bytes))
        .map_err(|e| ApiError::internal(e.to_string()).into_response())?;
    let session = token.clone();
    let valid = db
        .call(move |c| {
            let account: Option<(Vec<u8>, Vec<u8>)> = c
                .query_row(
                    "SELECT salt, digest FROM accounts WHERE username = ?1",
                    [&creds.username],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let valid = account.is_some_and(|(salt, stored)| {
                <[u8; 32]>::try_from(stored.as_slice())
                    .is_ok_and(|stored| same_digest(&stored, &digest(&salt, &creds.password)))
            });
            if valid {
                c.execute(
                    "INSERT INTO sessions (token, username) VALUES (?1, ?2)",
                    params![session, creds.username],
                )?;
            }
            Ok(valid)
        })
        .await
        .map_err(|e| unavailable(e).into_response())?;
    if !valid {
        // Unknown user and wrong password answer alike, so logins cannot probe usernames.
        return Err(unauthorized("bad-credentials"));
    }
    Ok(Json(Session { token }))
}

async fn profile(State(db): State<Db>, headers: HeaderMap) -> Result<Json<Profile>, Response> {
    let token = bearer_token(&headers)
        .ok_or_else(|| unauthorized("missing-token"))?
        .to_owned();
    let found = db
        .call(move |c| {
            c.query_row(
                "SELECT a.id, a.username FROM sessions s JOIN accounts a ON a.username = s.username
                 WHERE s.token = ?1",
                [token],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .await
        .map_err(|e| unavailable(e).into_response())?;
    let (id, username) = found.ok_or_else(|| unauthorized("bad-token"))?;
    Ok(Json(Profile { id, username }))
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
