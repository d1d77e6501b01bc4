//! mTLS between real sidecars with the real control plane as the mesh CA: traffic between
//! sidecars is TLS 1.3 with no plaintext HTTP on the wire, handshakes scale with connections,
//! the app learns the verified caller (never a forged one), allow-lists refuse other callers,
//! strict mode refuses plaintext, a wrong peer identity is a 502, and certificates renew.

use http::Method;
use outrigger_tests::client::{self, raw_exchange, send};
use outrigger_tests::control::Control;
use outrigger_tests::eventually;
use outrigger_tests::load::SteadyLoad;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const MESH: &str = "\
kind: Service
metadata: {name: checkout}
spec: {calls: [payment]}
---
kind: Service
metadata: {name: intruder}
spec: {calls: [payment]}
---
kind: Service
metadata: {name: payment}
spec: {}
---
kind: Policy
metadata: {name: payment}
spec: {service: payment, allow: [checkout]}
";

async fn sidecar(control: &Control, service: &str, app: Option<SocketAddr>) -> Proxy {
    ProxyBuilder::control_plane(control, service, "v1", app)
        .await
        .spawn()
        .ready()
        .await
}

/// Waits until `caller` gets a 200 from payment: routes, certificates and endpoints are in.
async fn reaches_payment(caller: &Proxy) {
    eventually(
        Duration::from_secs(10),
        "the caller to reach payment",
        || async { (call(caller, "/", false).await.status() == 200).then_some(()) },
    )
    .await;
}

/// The first answer to `caller` that is not "no endpoint yet" (503): the verdict on the peer.
async fn first_answer(caller: &Proxy, what: &str) -> http::Response<bytes::Bytes> {
    eventually(Duration::from_secs(10), what, || async {
        let r = call(caller, "/", false).await;
        (r.status() != 503).then_some(r)
    })
    .await
}

async fn call(proxy: &Proxy, path: &str, forged: bool) -> http::Response<bytes::Bytes> {
    let mut req = client::request("GET", &format!("http://{}{path}", proxy.outbound()))
        .header("host", "payment");
    if forged {
        req = req.header(
            "x-outrigger-client-id",
            "spiffe://outrigger.local/service/admin",
        );
    }
    send(&client::h1(), req.body(client::empty()).expect("request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_speak_mtls_and_the_app_learns_the_verified_caller() {
    let control = Control::start_with(&["--cert-lifetime", "6s"]).await;
    let (status, body) = control.apply(MESH).await;
    assert_eq!(status, 200, "{body}");
    let app = Upstream::start("payment-app").await;
    let payment = sidecar(&control, "payment", Some(app.addr)).await;
    let checkout = sidecar(&control, "checkout", None).await;
    reaches_payment(&checkout).await;

    // The app sees who called, verified, whatever the caller claimed.
    let res = call(&checkout, "/echo", true).await;
    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = serde_json::from_slice(res.body()).expect("echo");
    assert_eq!(
        echo["headers"]["x-outrigger-client-id"],
        "spiffe://outrigger.local/service/checkout"
    );
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "the app keeps its own protocol"
    );

    // 10 000 requests, a few handshakes: HTTP/2 multiplexed on one connection per endpoint.
    let out = checkout.outbound();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let c = client::h1();
            for _ in 0..1250 {
                let req = client::request("GET", &format!("http://{out}/"))
                    .header("host", "payment")
                    .body(client::empty())
                    .expect("r");
                assert_eq!(send(&c, req).await.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let handshakes = checkout
        .metric(
            "outrigger_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")],
        )
        .await
        .unwrap_or(0.0);
    assert!(
        (1.0..=3.0).contains(&handshakes),
        "{handshakes} handshakes for 300 requests"
    );
    assert_eq!(
        payment
            .metric(
                "outrigger_inbound_requests_by_security_total",
                &[("security", "plaintext")]
            )
            .await,
        None,
        "strict mode served plaintext"
    );

    // Strict: plaintext straight to payment's inbound listener gets no HTTP answer at all.
    let raw = raw_exchange(
        payment.inbound(),
        b"GET / HTTP/1.1\r\nhost: payment\r\n\r\n",
        Duration::from_secs(3),
    )
    .await
    .unwrap_or_default();
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plaintext was served: {}",
        String::from_utf8_lossy(&raw)
    );

    // A mesh member that payment does not allow gets 403.
    let intruder = sidecar(&control, "intruder", None).await;
    let denied = first_answer(&intruder, "the intruder to reach payment").await;
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["x-outrigger-error"], "forbidden");
    assert!(
        payment
            .metric("outrigger_authz_denied_total", &[])
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // Certificates renew at 70 % of a 6 s lifetime, and traffic never notices.
    let first = checkout
        .metric("outrigger_identity_cert_expiry_timestamp_seconds", &[])
        .await;
    eventually(Duration::from_secs(15), "a renewed certificate", || async {
        assert_eq!(call(&checkout, "/", false).await.status(), 200);
        let now = checkout
            .metric("outrigger_identity_cert_expiry_timestamp_seconds", &[])
            .await;
        (now > first).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_proving_another_identity_is_refused() {
    let control = Control::start().await;
    assert_eq!(control.apply(MESH).await.0, 200);
    // An intruder's sidecar registered as if it were payment: it holds a real mesh certificate,
    // but for the wrong service.
    let app = Upstream::start("impostor-app").await;
    let impostor = sidecar(&control, "intruder", Some(app.addr)).await;
    let (status, body) = control
        .send(
            Method::POST,
            "/v1/registry/instances",
            serde_json::json!({"service": "payment", "version": "v1", "address": "127.0.0.1",
                "ports": {"inbound": impostor.inbound().port()}, "labels": {}, "ttl_secs": 600}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let checkout = sidecar(&control, "checkout", None).await;
    let res = first_answer(&checkout, "a verdict on the impostor").await;
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["x-outrigger-error"], "peer-identity-mismatch");
    assert_eq!(app.requests(), 0, "nothing reached the impostor's app");
}

/// Captures loopback traffic with tcpdump on a port while `traffic` runs; returns the bytes.
async fn capture<F, Fut>(dir: &std::path::Path, name: &str, port: u16, traffic: F) -> Vec<u8>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use tokio::io::AsyncBufReadExt;
    let file = dir.join(format!("{name}.pcap"));
    let mut dump = tokio::process::Command::new("tcpdump")
        .args(["-i", "lo", "--immediate-mode", "-n", "-s", "0", "-w"])
        .arg(&file)
        .args(["tcp", "port", &port.to_string()])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tcpdump (apt-get install tcpdump; .ci/run installs it) must run, as root");
    let mut lines = tokio::io::BufReader::new(dump.stderr.take().expect("stderr")).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("listening on") {
                return;
            }
        }
    })
    .await
    .expect("tcpdump started capturing");
    traffic().await;
    let pid = dump.id().expect("tcpdump pid").to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), dump.wait()).await;
    std::fs::read(&file).expect("capture file")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy stage: run with --ignored"]
async fn no_plaintext_http_crosses_the_wire_between_sidecars() {
    let control = Control::start().await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    let payment = sidecar(&control, "payment", Some(app.addr)).await;
    let checkout = sidecar(&control, "checkout", None).await;
    reaches_payment(&checkout).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marked = || async {
        for _ in 0..20 {
            let req = client::request(
                "GET",
                &format!("http://{}/echo?marker=CANARY-7f3a", checkout.outbound()),
            )
            .header("host", "payment")
            .header("x-marker", "CANARY-7f3a")
            .body(client::empty())
            .expect("request");
            assert_eq!(send(&client::h1(), req).await.status(), 200);
        }
    };
    // The hop from payment's sidecar to its app is plaintext by design: it shows the capture
    // sees what crosses it.
    let app_hop = capture(dir.path(), "app", app.addr.port(), marked).await;
    assert!(
        contains(&app_hop, b"CANARY-7f3a"),
        "the capture saw nothing on the app hop"
    );
    let mesh_hop = capture(dir.path(), "mesh", payment.inbound().port(), marked).await;
    assert!(
        mesh_hop.len() > 2_000,
        "the capture of the sidecar hop is empty ({} bytes)",
        mesh_hop.len()
    );
    for plain in [
        &b"CANARY-7f3a"[..],
        b"HTTP/1.1",
        b"x-marker",
        b"payment-app",
        b"PRI * HTTP/2.0",
    ] {
        assert!(
            !contains(&mesh_hop, plain),
            "{:?} crossed the wire in plaintext",
            String::from_utf8_lossy(plain)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_rotates_under_load_without_a_failed_request() {
    let control = Control::start_with(&["--cert-lifetime", "3s"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    let _payment = sidecar(&control, "payment", Some(app.addr)).await;
    let checkout = sidecar(&control, "checkout", None).await;
    reaches_payment(&checkout).await;

    let load = SteadyLoad::start(checkout.outbound(), "payment");
    load.progress(20, Duration::from_secs(10), "traffic before the rotation")
        .await;

    let roots = |v: serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let (_, before) = control.get("/v1/ca/roots").await;
    let old = roots(before)[0]["id"]
        .as_str()
        .expect("root id")
        .to_string();
    let (status, body) = control
        .send(Method::POST, "/v1/ca/roots", serde_json::json!({}))
        .await;
    assert!(status == 200 || status == 201, "rotate: {status} {body}");
    // Leaves from the old root are still out there: dropping it now is refused.
    let (status, _) = control
        .send(
            Method::DELETE,
            &format!("/v1/ca/roots/{old}"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 409, "the old root still has unexpired leaves");
    // Renewals (at 70 % of 3 s) move every sidecar to the new root; then the old one can go.
    eventually(
        Duration::from_secs(20),
        "no unexpired leaf of the old root",
        || async {
            let (_, list) = control.get("/v1/ca/roots").await;
            let gone = roots(list)
                .iter()
                .any(|r| r["id"] == old.as_str() && r["unexpired_leaves"] == 0);
            gone.then_some(())
        },
    )
    .await;
    let (status, body) = control
        .send(
            Method::DELETE,
            &format!("/v1/ca/roots/{old}"),
            serde_json::json!({}),
        )
        .await;
    assert!(
        status == 200 || status == 204,
        "drop the old root: {status} {body}"
    );
    load.progress(50, Duration::from_secs(10), "traffic after the rotation")
        .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "failed requests during the rotation ({ok} ok)");
    assert!(ok > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_mode_takes_plaintext_and_counts_it() {
    // Permissive: a plain client reaches payment's app through its inbound listener, and the
    // metrics tell plaintext from mTLS.
    let control = Control::start_with(&["--mtls", "permissive"]).await;
    assert_eq!(
        control
            .apply(MESH.replace("allow: [checkout]", "allow: []").as_str())
            .await
            .0,
        200
    );
    let app = Upstream::start("payment-app").await;
    let payment = sidecar(&control, "payment", Some(app.addr)).await;
    let checkout = sidecar(&control, "checkout", None).await;
    reaches_payment(&checkout).await;
    let raw = raw_exchange(
        payment.inbound(),
        b"GET / HTTP/1.1\r\nhost: payment\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("plaintext exchange");
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(
        payment
            .metric(
                "outrigger_inbound_requests_by_security_total",
                &[("security", "plaintext")]
            )
            .await,
        Some(1.0)
    );
    assert!(
        payment
            .metric(
                "outrigger_inbound_requests_by_security_total",
                &[("security", "mtls")]
            )
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_a_client_certificate_from_another_ca() {
    let control = Control::start().await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    let payment = sidecar(&control, "payment", Some(app.addr)).await;
    // A real TLS client with a certificate claiming checkout's identity, signed by nobody the
    // mesh trusts.
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=impostor",
        ])
        .args([
            "-addext",
            "subjectAltName=URI:spiffe://outrigger.local/service/checkout",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let url = format!("https://127.0.0.1:{}/", payment.inbound().port());
    let failed = || async {
        payment
            .metric(
                "outrigger_tls_handshakes_total",
                &[("direction", "inbound"), ("result", "error")],
            )
            .await
            .unwrap_or(0.0)
    };
    for with_cert in [true, false] {
        let before = failed().await;
        let mut curl = tokio::process::Command::new("curl");
        // -k: this client does not check the server; the question is what the server accepts.
        curl.args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ]);
        if with_cert {
            curl.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        let out = curl.arg(&url).output().await.expect("curl");
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            code, "000",
            "with_cert={with_cert}: the server answered HTTP {code}"
        );
        assert!(
            failed().await > before,
            "with_cert={with_cert}: no refused handshake counted"
        );
    }
    assert_eq!(app.requests(), 0, "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_an_expired_client_certificate() {
    // Certificates from the mesh CA itself, for checkout: one fresh, one left to expire.
    let control = Control::start_with(&["--cert-lifetime", "2s"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    let payment = sidecar(&control, "payment", Some(app.addr)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let issue = |name: &'static str| {
        let (dir, control) = (dir.path().to_path_buf(), &control);
        async move {
            // Bootstrap tokens are single-use: one per certificate.
            let token = control.bootstrap_token("checkout").await;
            let (key, csr) = (
                dir.join(format!("{name}.key")),
                dir.join(format!("{name}.csr")),
            );
            let made = std::process::Command::new("openssl")
                .args([
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    "/",
                ])
                .args([
                    "-addext",
                    "subjectAltName=critical,URI:spiffe://outrigger.local/service/checkout",
                    "-keyout",
                ])
                .arg(&key)
                .arg("-out")
                .arg(&csr)
                .output()
                .expect("openssl");
            assert!(
                made.status.success(),
                "{}",
                String::from_utf8_lossy(&made.stderr)
            );
            let body =
                serde_json::json!({"csr": std::fs::read_to_string(&csr).expect("csr")}).to_string();
            let (status, signed) = control
                .call_with(
                    Some(&token),
                    Method::POST,
                    "/v1/identity/certificates",
                    Some(body),
                )
                .await;
            assert_eq!(status, 200, "{signed}");
            let cert = dir.join(format!("{name}.pem"));
            std::fs::write(&cert, signed["certificate_chain"].as_str().expect("chain"))
                .expect("write cert");
            (
                cert,
                key,
                signed["not_after_unix"].as_u64().expect("not_after"),
            )
        }
    };
    let curl = |cert: PathBuf, key: PathBuf| {
        let url = format!("https://127.0.0.1:{}/", payment.inbound().port());
        async move {
            let out = tokio::process::Command::new("curl")
                .args([
                    "-sk",
                    "--http2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                    "--cert",
                ])
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .arg(&url)
                .output()
                .await
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    let (old_cert, old_key, not_after) = issue("old").await;
    // Wait (polling the clock, no fixed sleep) until that certificate has expired.
    eventually(
        Duration::from_secs(10),
        "the certificate to expire",
        || async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs();
            (now > not_after + 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        curl(old_cert, old_key).await,
        "000",
        "an expired client certificate was accepted"
    );
    // The same client with a fresh certificate from the same CA gets through: expiry was the
    // reason, nothing else.
    let (cert, key, _) = issue("fresh").await;
    assert_eq!(curl(cert, key).await, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_no_readiness_and_a_failed_renewal_keeps_the_current_one() {
    let mut control = Control::start_with(&["--cert-lifetime", "4s"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);

    // A bootstrap token the CA does not know: alive, never ready.
    let bogus = control.dir.path().join("bogus.bootstrap");
    std::fs::write(&bogus, "otb_0000").expect("token");
    let lost = ProxyBuilder::control_plane_at(
        &control.url(),
        &control.trust_anchors(),
        &bogus,
        "checkout",
        "v1",
        None,
    )
    .spawn();
    eventually(Duration::from_secs(10), "the CA to refuse it", || async {
        (lost
            .metric("outrigger_identity_renewals_total", &[("result", "error")])
            .await
            >= Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(lost.admin_get("/live").await.0, 200);
    assert_eq!(
        lost.admin_get("/ready").await.0,
        503,
        "ready without a certificate"
    );
    assert_eq!(
        lost.metric("outrigger_identity_cert_expiry_timestamp_seconds", &[])
            .await,
        Some(0.0)
    );

    // With the CA gone, renewals fail: the current certificate keeps serving, the metric rises.
    let app = Upstream::start("payment-app").await;
    let _payment = sidecar(&control, "payment", Some(app.addr)).await;
    let checkout = sidecar(&control, "checkout", None).await;
    reaches_payment(&checkout).await;
    let expiry = checkout
        .metric("outrigger_identity_cert_expiry_timestamp_seconds", &[])
        .await;
    control.kill();
    eventually(Duration::from_secs(15), "a failed renewal", || async {
        (checkout
            .metric("outrigger_identity_renewals_total", &[("result", "error")])
            .await
            >= Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(
        checkout
            .metric("outrigger_identity_cert_expiry_timestamp_seconds", &[])
            .await,
        expiry,
        "the certificate was kept"
    );
    assert_eq!(
        checkout.admin_get("/ready").await.0,
        200,
        "still ready on the certificate it holds"
    );
    assert_eq!(call(&checkout, "/", false).await.status(), 200);
}

/// Issue 14 point 5: a WebSocket crosses the default strict mesh. The sidecars' HTTP/2 cannot
/// carry `Upgrade`, so the request goes on an mTLS connection of its own (ALPN http/1.1); before,
/// the header was stripped and the app never upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_crosses_the_mesh_over_mtls() {
    use outrigger_tests::client::{head_header, read_head};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let control = Control::start().await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    let payment = sidecar(&control, "payment", Some(app.addr)).await;
    let checkout = sidecar(&control, "checkout", None).await;
    reaches_payment(&checkout).await;

    let mut s = tokio::net::TcpStream::connect(checkout.outbound())
        .await
        .expect("connect");
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: payment\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write the upgrade request");
    let (head, early) = read_head(&mut s, Duration::from_secs(10)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        head_header(&head, "upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert_eq!(
        head_header(&head, "x-upstream"),
        Some("payment-app"),
        "{head}"
    );
    assert!(early.is_empty(), "{early:?}");
    for size in [1usize, 4096, 100_000] {
        let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; size];
        let (mut r, mut w) = s.split();
        let (wrote, read) = tokio::join!(w.write_all(&msg), r.read_exact(&mut back));
        wrote.expect("write through the tunnel");
        read.expect("read the echo");
        assert!(back == msg, "{size} bytes came back different");
    }
    // The payment sidecar took the upgrade from a verified peer, over TLS.
    assert!(
        payment
            .metric_or_zero("outrigger_upgrades_total", &[("direction", "inbound")])
            .await
            >= 1.0
    );
    assert!(
        checkout
            .metric_or_zero("outrigger_upgrades_total", &[("direction", "outbound")])
            .await
            >= 1.0
    );
    s.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes after the client's EOF")
        .expect("clean close");
}
