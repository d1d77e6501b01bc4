//! Each workload has its own credential, and it reaches no further than its own service. These
//! play a compromised sidecar of `order` against a real control plane, and a stolen or stale
//! bootstrap token: every one failed before certificates authenticated the control channel.

use crate::harness::{call, Control, SHOP};
use crate::pki::{csr, identity, sign};
use http::Method;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn reason(v: &serde_json::Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_certificate_reaches_only_its_own_service() {
    let c = Control::start();
    assert_eq!(c.apply(SHOP).await.0, 200);
    let order = c.workload("order").await;
    let payment = c.workload("payment").await;

    // Its own snapshot: yes. Another service's: 403.
    let mine = c
        .call_as(
            &order,
            Method::GET,
            "/v1/stream?service=payment&sidecar=evil",
            None,
        )
        .await;
    assert_eq!(mine.0, 403, "{}", mine.1);
    assert!(reason(&mine.1).contains("\"order\"") && reason(&mine.1).contains("\"payment\""));
    let mut own = crate::harness::Stream::open(&c, &order, "order", "order-1").await;
    assert_eq!(own.snapshot(WAIT).await["snapshot"]["service"], "order");

    // Registering an instance of another service: 403; of its own: 201.
    let reg = |service: &str| {
        json!({"service": service, "version": "v1", "address": "127.0.0.1",
               "ports": {"inbound": 19999}, "ttl_secs": 30})
        .to_string()
    };
    let (status, body) = c
        .call_as(
            &order,
            Method::POST,
            "/v1/registry/instances",
            Some(&reg("payment")),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = c
        .call_as(
            &payment,
            Method::POST,
            "/v1/registry/instances",
            Some(&reg("payment")),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let payment_instance = body["id"].as_str().expect("id").to_string();

    // Keeping alive or evicting another service's instance: 403, and it is still there.
    for (method, path) in [
        (
            Method::PUT,
            format!("/v1/registry/instances/{payment_instance}/heartbeat"),
        ),
        (
            Method::DELETE,
            format!("/v1/registry/instances/{payment_instance}"),
        ),
    ] {
        let (status, body) = c.call_as(&order, method.clone(), &path, None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    let (_, instances) = c.get("/v1/registry/instances?service=payment").await;
    assert_eq!(instances.as_array().map(Vec::len), Some(1), "{instances}");

    // Posing as another service's sidecar: neither its stream id nor its ACKs.
    let mut theirs = crate::harness::Stream::open(&c, &payment, "payment", "payment-1").await;
    theirs.snapshot(WAIT).await;
    let (status, body) = c
        .call_as(
            &order,
            Method::POST,
            "/v1/sidecars/payment-1/ack",
            Some(r#"{"version":1}"#),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = c
        .call_as(
            &order,
            Method::GET,
            "/v1/stream?service=order&sidecar=payment-1",
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        reason(&body).contains("belongs to service \"payment\""),
        "{body}"
    );

    // Renewal: over mTLS with its own certificate, for its own identity only.
    let body = json!({"csr": csr(&[&identity("order")])}).to_string();
    let (status, renewed) = c
        .call_as(
            &order,
            Method::POST,
            "/v1/identity/certificates",
            Some(&body),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["identity"], identity("order"));
    let body = json!({"csr": csr(&[&identity("payment")])}).to_string();
    let (status, refused) = c
        .call_as(
            &order,
            Method::POST,
            "/v1/identity/certificates",
            Some(&body),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    drop((own, theirs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_are_single_service_counted_revocable_and_short_lived() {
    let c = Control::start();
    let good = csr(&[&identity("payment")]);

    // Default lifetime: ten minutes.
    let (status, minted) = c
        .call(
            Method::POST,
            "/v1/identity/tokens",
            Some(r#"{"service":"payment","uses":2}"#),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().expect("token").to_string();
    let id = minted["id"].as_str().expect("id").to_string();
    let expires = minted["expires_at"].as_str().expect("expiry");
    let left = humantime::parse_rfc3339(expires)
        .expect("RFC 3339")
        .duration_since(std::time::SystemTime::now())
        .expect("in the future");
    assert!(
        left <= Duration::from_secs(600) && left > Duration::from_secs(590),
        "{left:?}"
    );

    // Listed by id with its uses; the secret is nowhere in the list.
    let (_, list) = c.get("/v1/identity/tokens").await;
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["uses_left"], 2);
    assert!(!list.to_string().contains(&token));

    // Two uses, then it is spent.
    assert_eq!(sign(&c, Some(&token), &good).await.0, 200);
    assert_eq!(sign(&c, Some(&token), &good).await.0, 200);
    let (status, body) = sign(&c, Some(&token), &good).await;
    assert_eq!(status, 401, "{body}");
    assert!(reason(&body).contains("used up"), "{body}");

    // Revoked: refused at once, and revoking again is a 404.
    let (_, minted) = c
        .call(
            Method::POST,
            "/v1/identity/tokens",
            Some(r#"{"service":"payment"}"#),
        )
        .await;
    let token = minted["token"].as_str().expect("token").to_string();
    let id = minted["id"].as_str().expect("id").to_string();
    let path = format!("/v1/identity/tokens/{id}");
    assert_eq!(c.call(Method::DELETE, &path, None).await.0, 204);
    assert_eq!(sign(&c, Some(&token), &good).await.0, 401);
    assert_eq!(c.call(Method::DELETE, &path, None).await.0, 404);

    // Expired: refused with when.
    let (_, minted) = c
        .call(
            Method::POST,
            "/v1/identity/tokens",
            Some(r#"{"service":"payment","ttl_secs":1}"#),
        )
        .await;
    let token = minted["token"].as_str().expect("token").to_string();
    let body = crate::harness::eventually(WAIT, "the 1 s token to expire", || async {
        let (status, body) = sign(&c, Some(&token), &good).await;
        (status == 401).then_some(body)
    })
    .await;
    assert!(reason(&body).contains("expired"), "{body}");

    // A token is for one service: another identity is 403.
    let (_, minted) = c
        .call(
            Method::POST,
            "/v1/identity/tokens",
            Some(r#"{"service":"payment"}"#),
        )
        .await;
    let token = minted["token"].as_str().expect("token").to_string();
    let (status, _) = sign(&c, Some(&token), &csr(&[&identity("order")])).await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &c,
        Method::POST,
        "/v1/identity/tokens",
        Some(r#"{"service":"payment","uses":0}"#),
        Some(crate::harness::TOKEN),
    )
    .await;
    assert_eq!(status, 400);

    // No secret ever reaches the log.
    let logs = c.logs.lock().expect("logs").join("\n");
    assert!(!logs.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_refused_and_only_served_behind_the_development_flag() {
    let c = Control::start();
    // A plaintext request to the TLS port gets no HTTP answer.
    let mut s = tokio::net::TcpStream::connect(c.addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );

    let dev = Control::start_with(&["--insecure-dev-plaintext"]);
    let logs = dev.logs.lock().expect("logs").join("\n");
    assert!(logs.contains("INSECURE"), "a loud warning: {logs}");
}
