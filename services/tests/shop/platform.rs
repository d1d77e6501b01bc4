//! What every service shares: /healthz, JSON log lines, fault injection, graceful shutdown.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{message, Http, Shop};

#[tokio::test]
async fn every_service_reports_health() {
    let http = Http::default();
    for (service, args) in [
        ("user", vec![]),
        ("catalog", vec![]),
        ("inventory", vec![]),
        ("payment", vec!["--version", "v2", "--error-rate", "1"]),
        ("order", vec!["--mesh", "http://127.0.0.1:9"]),
    ] {
        let shop = Shop::start(service, &args);
        let health = http.get(&shop.url("/healthz")).await;
        assert_eq!(health.status, StatusCode::OK, "{service}");
        let version = if service == "payment" { "v2" } else { "v1" };
        assert_eq!(
            health.json,
            json!({"status": "ok", "service": service, "version": version})
        );
        assert_eq!(health.header("x-service-version"), Some(version));
    }
}

/// Checks a log line has exactly the five fields, in the right shape.
fn assert_log_shape(line: &str, service: &str) -> Value {
    let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let object = value.as_object().expect("a JSON object");
    let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["correlationId", "level", "message", "service", "timestamp"],
        "{line}"
    );
    assert_eq!(value["service"], service);
    assert!(["info", "warn", "error"].contains(&value["level"].as_str().unwrap_or_default()));
    assert!(value["message"].is_string());
    assert!(value["correlationId"].is_string() || value["correlationId"].is_null());
    // 2025-01-02T03:04:05.678Z
    let ts = value["timestamp"].as_str().expect("timestamp");
    let bytes = ts.as_bytes();
    assert_eq!(bytes.len(), 24, "{ts}");
    for (i, b) in bytes.iter().enumerate() {
        match i {
            4 | 7 => assert_eq!(*b, b'-', "{ts}"),
            10 => assert_eq!(*b, b'T', "{ts}"),
            13 | 16 => assert_eq!(*b, b':', "{ts}"),
            19 => assert_eq!(*b, b'.', "{ts}"),
            23 => assert_eq!(*b, b'Z', "{ts}"),
            _ => assert!(b.is_ascii_digit(), "{ts}"),
        }
    }
    value
}

#[tokio::test]
async fn log_lines_have_exactly_the_required_fields() {
    let mut shop = Shop::start("catalog", &[]);
    let http = Http::default();
    let ok = http
        .send(
            Method::GET,
            &shop.url("/products/p1"),
            &[("x-request-id", "corr-42")],
            None,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let missing = http
        .send(
            Method::GET,
            &shop.url("/products/zzz"),
            &[("x-request-id", "corr-43")],
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    http.get(&shop.url("/products")).await;

    let line = shop.wait_for_line(|l| l.contains("corr-42"));
    let value = assert_log_shape(&line, "catalog");
    assert_eq!(value["correlationId"], "corr-42");
    assert_eq!(value["level"], "info");
    assert!(
        message(&line).starts_with("GET /products/p1 200 "),
        "{line}"
    );

    let line = shop.wait_for_line(|l| l.contains("corr-43"));
    let value = assert_log_shape(&line, "catalog");
    assert_eq!(value["level"], "warn");
    assert!(
        message(&line).starts_with("GET /products/zzz 404 "),
        "{line}"
    );

    let line = shop.wait_for_line(|l| message(l).starts_with("GET /products 200"));
    assert_eq!(
        assert_log_shape(&line, "catalog")["correlationId"],
        Value::Null
    );

    let status = shop.terminate();
    assert_eq!(status.code(), Some(0), "{status} {:#?}", shop.lines());
    shop.wait_for_line(|l| message(l) == "stopped");
    let lines = shop.lines();
    for line in &lines {
        assert_log_shape(line, "catalog");
    }
    assert!(message(&lines[0]).starts_with("listening on "));
    assert!(lines
        .iter()
        .any(|l| message(l) == "SIGTERM received, draining"));
}

#[tokio::test]
async fn faults_apply_at_start_and_at_runtime() {
    let http = Http::default();

    let broken = Shop::start("catalog", &["--error-rate", "1"]);
    let answer = http.get(&broken.url("/products")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json, json!({"error": "injected"}));
    // Health and admin are never faulted.
    assert_eq!(
        http.get(&broken.url("/healthz")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get(&broken.url("/admin/faults")).await.json,
        json!({"error_rate": 1.0, "latency_ms": 0})
    );

    let shop = Shop::start("user", &[]);
    let faults = shop.url("/admin/faults");
    let login = shop.url("/login");
    let creds = r#"{"username":"x","password":"y"}"#;
    assert_eq!(
        http.get(&faults).await.json,
        json!({"error_rate": 0.0, "latency_ms": 0})
    );
    assert_eq!(
        http.post(&login, creds).await.status,
        StatusCode::UNAUTHORIZED
    );

    let set = http.post(&faults, r#"{"error_rate":1}"#).await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(set.json, json!({"error_rate": 1.0, "latency_ms": 0}));
    let injected = http.post(&login, creds).await;
    assert_eq!(injected.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(injected.json["error"], "injected");
    assert_eq!(http.get(&shop.url("/healthz")).await.status, StatusCode::OK);

    let set = http
        .post(&faults, r#"{"error_rate":0,"latency_ms":150}"#)
        .await;
    assert_eq!(set.json, json!({"error_rate": 0.0, "latency_ms": 150}));
    let slow = http.post(&login, creds).await;
    assert_eq!(slow.status, StatusCode::UNAUTHORIZED);
    assert!(
        slow.elapsed >= Duration::from_millis(150),
        "{:?}",
        slow.elapsed
    );
    let health = http.get(&shop.url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);

    // A partial update keeps the other setting.
    let set = http.post(&faults, r#"{"latency_ms":0}"#).await;
    assert_eq!(set.json, json!({"error_rate": 0.0, "latency_ms": 0}));

    for bad in [
        r#"{"error_rate":1.5}"#,
        r#"{"error_rate":-1}"#,
        r#"{"latency_ms":-5}"#,
        r#"{"latency_ms":600000}"#,
        r#"{"error_rate":"high"}"#,
        r#"{"eror_rate":1}"#,
        "nope",
    ] {
        let refused = http.post(&faults, bad).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(refused.json["error"].is_string(), "{bad}");
    }
    assert_eq!(
        http.get(&faults).await.json,
        json!({"error_rate": 0.0, "latency_ms": 0})
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json() {
    let shop = Shop::start("inventory", &[]);
    let http = Http::default();
    let missing = http.get(&shop.url("/nothing/here")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json["error"], "not-found");
    let wrong = http
        .send(Method::DELETE, &shop.url("/reserve"), &[], None)
        .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.json["error"], "method-not-allowed");
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let mut shop = Shop::start("payment", &[]);
    let http = Http::default();
    assert_eq!(http.get(&shop.url("/healthz")).await.status, StatusCode::OK);
    let status = shop.terminate();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn bad_flags_are_refused_before_starting() {
    for args in [
        vec!["payment", "--error-rate", "1.5"],
        vec!["catalog", "--latency-ms", "soon"],
        vec!["order", "--mesh", "ftp://x"],
        vec!["nosuchservice"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
            .args(&args)
            .output()
            .expect("run shop");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["user", "--listen", &addr])
        .output()
        .expect("run shop");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(assert_log_shape(last, "user")["level"], "error");
}
