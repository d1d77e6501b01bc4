//! The user service: register, login, profile, and their error answers.

use axum::http::{Method, StatusCode};

use crate::harness::{Http, Shop};

#[tokio::test]
async fn register_login_and_profile() {
    let shop = Shop::start("user", &[]);
    let http = Http::default();
    let creds = r#"{"username":"alice","password":"s3cret"}"#;

    let registered = http.post(&shop.url("/register"), creds).await;
    assert_eq!(registered.status, StatusCode::CREATED);
    let id = registered.str("id");

    let again = http
        .post(
            &shop.url("/register"),
            r#"{"username":"alice","password":"other"}"#,
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json["error"], "username-taken");

    let login = http.post(&shop.url("/login"), creds).await;
    assert_eq!(login.status, StatusCode::OK);
    let token = login.str("token");

    let auth = format!("Bearer {token}");
    let profile = http
        .send(
            Method::GET,
            &shop.url("/profile"),
            &[("authorization", &auth)],
            None,
        )
        .await;
    assert_eq!(profile.status, StatusCode::OK);
    assert_eq!(
        profile.json,
        serde_json::json!({"id": id, "username": "alice"})
    );
}

#[tokio::test]
async fn bad_credentials_tokens_and_bodies_are_refused() {
    let shop = Shop::start("user", &[]);
    let http = Http::default();
    http.post(
        &shop.url("/register"),
        r#"{"username":"bob","password":"pw"}"#,
    )
    .await;

    for creds in [
        r#"{"username":"bob","password":"wrong"}"#,
        r#"{"username":"nobody","password":"pw"}"#,
    ] {
        let login = http.post(&shop.url("/login"), creds).await;
        assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{creds}");
        assert_eq!(login.json["error"], "bad-credentials");
    }

    for auth in [None, Some("Bearer not-a-token"), Some("Basic Ym9iOnB3")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let profile = http
            .send(Method::GET, &shop.url("/profile"), &headers, None)
            .await;
        assert_eq!(profile.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(profile.header("www-authenticate"), Some("Bearer"));
        assert!(profile.json["error"].is_string());
    }

    for body in [
        "{",
        r#"{"username":"x"}"#,
        r#"{"username":1,"password":"p"}"#,
        "",
    ] {
        for path in ["/register", "/login"] {
            let bad = http.post(&shop.url(path), body).await;
            assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{path} {body}");
            assert_eq!(bad.json["error"], "bad-json");
        }
    }
    let empty = http
        .post(&shop.url("/register"), r#"{"username":"","password":"p"}"#)
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
}
