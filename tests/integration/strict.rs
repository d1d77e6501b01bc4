//! Strict means strict, against the real `outrigger-proxy` binary (config-file mode, whose
//! watched file is one real way to switch permissive to strict): a plaintext connection opened
//! while permissive is refused at its next request once strict applies, whatever the HTTP
//! version; a forged caller identity never reaches the app over plaintext; and a duration of
//! centuries is refused with its field path, at start and on reload, instead of passing
//! validation and panicking on the request path.
//!
//! The in-process attacks (inbound before the first snapshot, the `Connection:` trick against
//! a verified identity, pooled outbound connections across a TLS change) are in
//! `proxy/src/listener/tests.rs`: they need states a file-mode sidecar cannot reach.

use outrigger_tests::client::{self, head_header, read_response};
use outrigger_tests::eventually;
use outrigger_tests::proxy::{render, Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

fn inbound(app: SocketAddr, mode: &str) -> String {
    format!("service: payment\ninbound: {{app: \"{app}\"}}\nmtls: {{mode: {mode}}}\n")
}

/// Rewrites the watched file and waits until the proxy serves it as snapshot `version`.
async fn switch(proxy: &Proxy, snapshot: &str, version: f64) {
    proxy.write_config(&render(proxy.outbound(), proxy.inbound(), snapshot, ""));
    eventually(WAIT, "the new snapshot to apply", || async {
        (proxy.metric("outrigger_config_version", &[]).await == Some(version)).then_some(())
    })
    .await;
}

const GET_ECHO: &[u8] = b"GET /echo HTTP/1.1\r\nhost: payment\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_connections_opened_under_permissive_are_refused_once_strict_applies() {
    let app = Upstream::start("payment-app").await;
    let proxy = ProxyBuilder::file(&inbound(app.addr, "permissive"), "")
        .spawn()
        .ready()
        .await;

    // Two keep-alive connections, HTTP/1.1 and h2c, both served in plaintext.
    let mut h1 = tokio::net::TcpStream::connect(proxy.inbound())
        .await
        .expect("connect");
    h1.write_all(GET_ECHO).await.expect("write");
    let (head, _) = read_response(&mut h1, WAIT).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut h2 = client::h2_conn(proxy.inbound()).await;
    let h2_get = || {
        client::request("GET", "http://payment/echo")
            .version(http::Version::HTTP_2)
            .body(client::empty())
            .expect("request")
    };
    let res = h2.send_request(h2_get()).await.expect("h2 request");
    assert_eq!(res.status(), 200);
    client::collect(res).await;
    let served = app.requests();

    switch(&proxy, &inbound(app.addr, "strict"), 2.0).await;

    // HTTP/1.1: the next request is refused with the proxy's own 403, and the connection ends.
    h1.write_all(GET_ECHO).await.expect("write");
    let (head, body) = read_response(&mut h1, WAIT).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(
        head_header(&head, "x-outrigger-error"),
        Some("mtls-required")
    );
    assert_eq!(head_header(&head, "connection"), Some("close"));
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(body["reason"], "mtls-required");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, h1.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the connection stayed open: {read:?} {rest:?}"
    );

    // h2c: every request on the connection is refused until the proxy's GOAWAY ends it.
    let res = h2.send_request(h2_get()).await.expect("an answer");
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["x-outrigger-error"], "mtls-required");
    client::collect(res).await;
    eventually(WAIT, "the h2c connection to end", || {
        let sent = h2.send_request(h2_get());
        async move {
            match sent.await {
                Err(_) => Some(()),
                Ok(res) => {
                    assert_eq!(res.status(), 403, "a plaintext request got through");
                    None
                }
            }
        }
    })
    .await;
    assert_eq!(
        app.requests(),
        served,
        "nothing reached the app after strict"
    );

    // A new plaintext connection is not even served.
    let before = proxy
        .metric(
            "outrigger_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "error")],
        )
        .await
        .unwrap_or(0.0);
    let answer = client::raw_exchange(proxy.inbound(), GET_ECHO, WAIT)
        .await
        .unwrap_or_default();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let after = proxy
        .metric(
            "outrigger_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "error")],
        )
        .await;
    assert_eq!(after, Some(before + 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_caller_identity_never_reaches_the_app_over_plaintext() {
    let app = Upstream::start("payment-app").await;
    let proxy = ProxyBuilder::file(&inbound(app.addr, "permissive"), "")
        .spawn()
        .ready()
        .await;
    for connection in [None, Some("x-outrigger-client-id")] {
        let mut req = client::request("GET", &format!("http://{}/echo", proxy.inbound()))
            .header("host", "payment")
            .header(
                "x-outrigger-client-id",
                "spiffe://outrigger.local/service/admin",
            );
        if let Some(c) = connection {
            req = req.header("connection", c);
        }
        let res = client::send(&client::h1(), req.body(client::empty()).expect("r")).await;
        assert_eq!(res.status(), 200);
        let echo: serde_json::Value = serde_json::from_slice(res.body()).expect("echo");
        assert!(
            echo["headers"].get("x-outrigger-client-id").is_none(),
            "forged identity reached the app: {echo}"
        );
    }
}

fn centuries(endpoint: SocketAddr, timeout: &str) -> String {
    format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints: [{{address: \"{endpoint}\"}}]\n    routes:\n      - name: slow\n        timeout: {timeout}\n"
    )
}

const CENTURIES_AT: &str =
    "snapshot.destinations[0].routes[0].timeout (line 11, column 20): must be at most 1day";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_of_centuries_is_refused_with_its_field_path() {
    let app = Upstream::start("payment").await;

    let mut refused = ProxyBuilder::file(&centuries(app.addr, "300years"), "").spawn();
    let code = refused.exit_code(WAIT).await;
    assert_ne!(code, Some(0));
    let err = refused.stderr();
    assert!(err.contains(CENTURIES_AT), "{err}");

    // On reload: refused, counted and logged, and the last good snapshot keeps serving.
    let proxy = ProxyBuilder::file(&centuries(app.addr, "5s"), "")
        .spawn()
        .ready()
        .await;
    proxy.write_config(&render(
        proxy.outbound(),
        proxy.inbound(),
        &centuries(app.addr, "300years"),
        "",
    ));
    eventually(WAIT, "the rejection to be counted", || async {
        (proxy
            .metric("outrigger_config_rejected_total", &[("source", "file")])
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    eventually(WAIT, "the reason to be logged", || async {
        proxy.stderr().contains(CENTURIES_AT).then_some(())
    })
    .await;
    let res = client::send(
        &client::h1(),
        client::request("GET", &format!("http://{}/", proxy.outbound()))
            .header("host", "payment")
            .body(client::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(res.status(), 200);
}
