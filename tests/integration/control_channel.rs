//! The sidecar's control channel is TLS, verified against the operator's trust anchors: a
//! control plane the anchors do not vouch for (another CA, or the right CA but another name)
//! sees only failed handshakes, never the bootstrap token, and pushes nothing. The positive
//! control runs the same fake control plane with the right anchors: it gets the token once, on
//! a connection without a client certificate that is not reused, and every later call
//! presents the workload certificate it issued and carries no token.
//!
//! The fake control plane is a real TLS server (rustls over std sockets, one thread per
//! connection) with a CA made here, answering the two calls a sidecar makes first.

use outrigger_tests::eventually;
use outrigger_tests::pki::ForeignCa;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, KeyPair, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TOKEN: &str = "otb_control_channel_test_token";
const DEADLINE: Duration = Duration::from_secs(30);

/// One HTTP request as the fake control plane saw it.
#[derive(Debug, Clone)]
struct Seen {
    connection: usize,
    method: String,
    target: String,
    authorization: Option<String>,
    client_cert: bool,
    body: String,
}

/// How the fake CA answers CSRs.
#[derive(Clone, Copy)]
struct Policy {
    lifetime: Duration,
    /// Refuse renewals (CSRs on a connection that presented a certificate) with 503.
    refuse_certificate: bool,
    /// Refuse the bootstrap token with 401.
    refuse_token: bool,
}

struct Log {
    connections: usize,
    failed_handshakes: Vec<String>,
    requests: Vec<Seen>,
    policy: Policy,
}

struct FakeControlPlane {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl FakeControlPlane {
    /// Serves with a certificate from `ca` for `names`, and signs CSRs with `ca`.
    fn start(ca: ForeignCa, names: &[&str]) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server cert params");
        let cert = params.signed_by(&key, ca.issuer()).expect("server cert");
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).expect("root");
        // Client certificates are optional, as on the real control plane: the first CSR comes
        // without one.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .expect("client verifier");
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log {
            connections: 0,
            failed_handshakes: Vec::new(),
            requests: Vec::new(),
            policy: Policy {
                lifetime: Duration::from_secs(3600),
                refuse_certificate: false,
                refuse_token: false,
            },
        }));
        let (shared_log, ca) = (log.clone(), Arc::new(ca));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (config, log, ca) = (config.clone(), shared_log.clone(), ca.clone());
                std::thread::spawn(move || serve(conn, config, &log, &ca));
            }
        });
        Self { addr, log }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn failed_handshakes(&self) -> Vec<String> {
        lock(&self.log).failed_handshakes.clone()
    }

    fn requests(&self) -> Vec<Seen> {
        lock(&self.log).requests.clone()
    }

    fn set_policy(&self, policy: Policy) {
        lock(&self.log).policy = policy;
    }

    /// CSRs that presented a certificate (renewals) and carried no token.
    fn renewals(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.target == "/v1/identity/certificates")
            .filter(|r| r.client_cert && r.authorization.is_none())
            .count()
    }

    /// CSRs that carried the token and no certificate.
    fn token_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.target == "/v1/identity/certificates")
            .filter(|r| !r.client_cert && r.authorization.is_some())
            .count()
    }
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

fn serve(sock: TcpStream, config: Arc<ServerConfig>, log: &Mutex<Log>, ca: &ForeignCa) {
    let connection = {
        let mut l = lock(log);
        l.connections += 1;
        l.connections
    };
    let Ok(tls) = ServerConnection::new(config) else {
        return;
    };
    let mut stream = StreamOwned::new(tls, sock);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            lock(log).failed_handshakes.push(e.to_string());
            return;
        }
    }
    let client_cert = stream.conn.peer_certificates().is_some();
    let mut reader = BufReader::new(stream);
    while let Some(seen) = read_request(&mut reader, connection, client_cert) {
        let policy = {
            let mut l = lock(log);
            l.requests.push(seen.clone());
            l.policy
        };
        let path = seen.target.split('?').next().unwrap_or_default();
        let out = reader.get_mut();
        let written = match (seen.method.as_str(), path) {
            ("POST", "/v1/identity/certificates") if client_cert && policy.refuse_certificate => {
                respond(out, "503 Service Unavailable", "{\"error\":\"CA away\"}")
            }
            ("POST", "/v1/identity/certificates") if !client_cert && policy.refuse_token => {
                respond(out, "401 Unauthorized", "{\"error\":\"unauthorized\"}")
            }
            ("POST", "/v1/identity/certificates") => match sign(ca, &seen.body, policy.lifetime) {
                Some(answer) => respond(out, "200 OK", &answer),
                None => respond(out, "400 Bad Request", "{\"error\":\"bad csr\"}"),
            },
            ("GET", "/v1/stream") => {
                stream_snapshot(out, ca);
                // Held open until the sidecar goes: a real stream does not end.
                let mut sink = [0u8; 1024];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            ("POST", p) if p.ends_with("/ack") => {
                out.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").is_ok()
            }
            _ => respond(out, "404 Not Found", "{}"),
        };
        if !written {
            return;
        }
    }
}

fn read_request(r: &mut impl BufRead, connection: usize, client_cert: bool) -> Option<Seen> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (mut authorization, mut length) = (None, 0usize);
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value.trim().to_string()),
            "content-length" => length = value.trim().parse().ok()?,
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).ok()?;
    Some(Seen {
        connection,
        method,
        target,
        authorization,
        client_cert,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn respond(out: &mut impl Write, status: &str, body: &str) -> bool {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())
        .and_then(|()| out.write_all(body.as_bytes()))
        .and_then(|()| out.flush())
        .is_ok()
}

/// Signs the CSR in `body` as the mesh CA would, answering in the control plane's format.
fn sign(ca: &ForeignCa, body: &str, lifetime: Duration) -> Option<String> {
    let req: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut csr = CertificateSigningRequestParams::from_pem(req["csr"].as_str()?).ok()?;
    let identity = match csr.params.subject_alt_names.as_slice() {
        [SanType::URI(uri)] => uri.as_str().to_string(),
        _ => return None,
    };
    csr.params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = csr.signed_by(ca.issuer()).ok()?;
    let not_after = (SystemTime::now() + lifetime)
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(
        serde_json::json!({
            "certificate_chain": leaf.pem(),
            "trust_bundle": [ca.cert_pem],
            "identity": identity,
            "expires_at": "soon",
            "not_after_unix": not_after,
        })
        .to_string(),
    )
}

fn stream_snapshot(out: &mut impl Write, ca: &ForeignCa) {
    let mut line = serde_json::json!({
        "type": "snapshot",
        "version": 7,
        "snapshot": {"service": "web", "mtls": {"trust_bundle": [ca.cert_pem]}},
    })
    .to_string();
    line.push('\n');
    let chunk = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{line}\r\n",
        line.len()
    );
    let _ = out.write_all(chunk.as_bytes()).and_then(|()| out.flush());
}

/// A sidecar for `web` trusting `anchors_pem`, holding the test's bootstrap token.
fn sidecar(url: &str, anchors_pem: &str) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let anchors = dir.path().join("anchors.pem");
    let token = dir.path().join("bootstrap-token");
    std::fs::write(&anchors, anchors_pem).expect("anchors");
    std::fs::write(&token, TOKEN).expect("token");
    let proxy = ProxyBuilder::control_plane_at(url, &anchors, &token, "web", "v1", None)
        .arg("--sidecar-id")
        .arg("web-1")
        .spawn();
    (proxy, dir)
}

/// Waits until the fake control plane has refused `n` handshakes: the sidecar tried, and
/// tried again after backing off.
async fn refused_handshakes(cp: &FakeControlPlane, proxy: &mut Proxy, n: usize) {
    eventually(DEADLINE, "the sidecar's handshakes to fail", || {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("the sidecar exited ({status}): {}", proxy.stderr());
        }
        let requests = cp.requests();
        assert!(
            requests.is_empty(),
            "the sidecar sent requests to a control plane its anchors do not vouch for: {requests:?}"
        );
        let failed = cp.failed_handshakes().len();
        async move { (failed >= n).then_some(()) }
    })
    .await;
}

/// Nothing reached the sidecar and nothing of it reached the impostor.
async fn assert_nothing_crossed(cp: &FakeControlPlane, proxy: &Proxy) {
    assert!(
        cp.requests().is_empty(),
        "the sidecar sent requests to a control plane its anchors do not vouch for: {:?}",
        cp.requests()
    );
    // Why it is not ready names the refused certificate.
    let body = eventually(DEADLINE, "/ready to say why", || async {
        let (status, body) = proxy.admin_get("/ready").await;
        assert_ne!(status, 200, "a sidecar without a certificate is not ready");
        body.contains("last attempt failed").then_some(body)
    })
    .await;
    assert!(
        body.starts_with("not ready: no workload certificate yet; last attempt failed:"),
        "{body}"
    );
    assert!(body.contains("certificate"), "{body}");
    assert_eq!(
        proxy.metric("outrigger_config_version", &[]).await,
        Some(0.0)
    );
    let (status, config) = proxy.admin_get("/config").await;
    assert_eq!(status, 503, "{config}");
    assert!(!proxy.stderr().contains(TOKEN), "the token was logged");
    assert!(!proxy.stdout().contains(TOKEN), "the token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_with_another_ca_gets_no_token_and_pushes_nothing() {
    let (mesh, impostor) = (ForeignCa::named("mesh"), ForeignCa::named("impostor"));
    let cp = FakeControlPlane::start(impostor, &["127.0.0.1", "localhost"]);
    let (mut proxy, _dir) = sidecar(&cp.url(), &mesh.cert_pem);
    refused_handshakes(&cp, &mut proxy, 3).await;
    assert_nothing_crossed(&cp, &proxy).await;
    assert!(
        proxy.admin_get("/ready").await.1.contains("UnknownIssuer"),
        "the reason names the unknown issuer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_ca_with_another_name_gets_no_token_either() {
    let mesh = ForeignCa::named("mesh");
    let mesh_pem = mesh.cert_pem.clone();
    let cp = FakeControlPlane::start(mesh, &["elsewhere.example"]);
    let (mut proxy, _dir) = sidecar(&cp.url(), &mesh_pem);
    refused_handshakes(&cp, &mut proxy, 3).await;
    assert_nothing_crossed(&cp, &proxy).await;
    assert!(
        proxy
            .admin_get("/ready")
            .await
            .1
            .contains("not valid for name"),
        "the reason names the name mismatch"
    );
}

/// The positive control: the same fake control plane, anchors that vouch for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_right_anchors_the_token_is_spent_once_and_then_the_certificate_speaks() {
    let mesh = ForeignCa::named("mesh");
    let mesh_pem = mesh.cert_pem.clone();
    let cp = FakeControlPlane::start(mesh, &["127.0.0.1", "localhost"]);
    let (proxy, _dir) = sidecar(&cp.url(), &mesh_pem);
    let proxy = proxy.ready().await;
    assert_eq!(
        proxy.metric("outrigger_config_version", &[]).await,
        Some(7.0)
    );
    let acked = eventually(DEADLINE, "the ACK of version 7", || async {
        cp.requests()
            .into_iter()
            .find(|r| r.target.ends_with("/ack"))
    })
    .await;

    let requests = cp.requests();
    let with_token: Vec<&Seen> = requests
        .iter()
        .filter(|r| r.authorization.is_some())
        .collect();
    assert_eq!(with_token.len(), 1, "{requests:?}");
    let csr = with_token[0];
    assert_eq!(
        (csr.method.as_str(), csr.target.as_str()),
        ("POST", "/v1/identity/certificates")
    );
    assert_eq!(
        csr.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(
        !csr.client_cert,
        "the bootstrap call presents no certificate"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.connection != csr.connection || std::ptr::eq(r, csr)),
        "the connection that carried the token was reused: {requests:?}"
    );

    let stream = requests
        .iter()
        .find(|r| r.target.starts_with("/v1/stream"))
        .expect("the stream");
    assert!(stream.target.contains("service=web"), "{}", stream.target);
    assert!(stream.target.contains("sidecar=web-1"), "{}", stream.target);
    assert!(
        stream.target.contains("admin="),
        "`outrigger top` finds it: {}",
        stream.target
    );
    for call in [stream, &acked] {
        assert!(
            call.client_cert,
            "{call:?} presents the workload certificate"
        );
        assert_eq!(call.authorization, None, "{call:?}");
    }
    assert_eq!(acked.target, "/v1/sidecars/web-1/ack");
    let ack: serde_json::Value = serde_json::from_str(&acked.body).expect("ack body");
    assert_eq!(ack, serde_json::json!({"version": 7, "error": null}));
    assert!(
        cp.failed_handshakes().is_empty(),
        "{:?}",
        cp.failed_handshakes()
    );
    assert!(!proxy.stderr().contains(TOKEN), "the token was logged");
}

/// Renewal presents the certificate and no token; once a certificate has expired the sidecar
/// says so (on `/ready`, and once in its log), falls back to the bootstrap token, and recovers
/// on its own when the CA answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_presents_the_certificate_and_after_expiry_the_token_gets_back_in() {
    let mesh = ForeignCa::named("mesh");
    let mesh_pem = mesh.cert_pem.clone();
    let cp = FakeControlPlane::start(mesh, &["127.0.0.1", "localhost"]);
    let short = Policy {
        lifetime: Duration::from_secs(4),
        refuse_certificate: false,
        refuse_token: false,
    };
    cp.set_policy(short);
    let (proxy, _dir) = sidecar(&cp.url(), &mesh_pem);
    let proxy = proxy.ready().await;
    eventually(DEADLINE, "a renewal over mTLS", || async {
        (cp.renewals() >= 1).then_some(())
    })
    .await;
    assert_eq!(
        cp.token_requests(),
        1,
        "the token was spent again while a certificate was valid"
    );
    assert_eq!(proxy.admin_get("/ready").await.0, 200);

    // The CA goes away: the certificate in force runs out.
    cp.set_policy(Policy {
        refuse_certificate: true,
        refuse_token: true,
        ..short
    });
    let reason = eventually(DEADLINE, "/ready to report the expiry", || async {
        let (status, body) = proxy.admin_get("/ready").await;
        (status == 503 && body.contains("renewal failing")).then_some(body)
    })
    .await;
    assert!(
        reason.starts_with("not ready: workload certificate expired at 20"),
        "{reason}"
    );
    assert!(
        reason.contains("Z; renewal failing: control plane answered"),
        "{reason}"
    );
    // Expired, it can only get back in with the token (refused here, and retried).
    eventually(DEADLINE, "the token to be tried after expiry", || async {
        (cp.token_requests() >= 3).then_some(())
    })
    .await;

    cp.set_policy(short);
    eventually(DEADLINE, "the sidecar to recover on its own", || async {
        (proxy.admin_get("/ready").await.0 == 200).then_some(())
    })
    .await;
    let stderr = proxy.stderr();
    assert_eq!(
        stderr
            .matches("the workload certificate has expired")
            .count(),
        1,
        "one warning per expiry, not one per attempt: {stderr}"
    );
    assert!(!stderr.contains(TOKEN), "the token was logged");
}

/// Startup refuses what would put the channel or a credential at risk, saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_refuses_to_start_without_a_safe_channel() {
    let mesh = ForeignCa::named("mesh");
    let dir = tempfile::tempdir().expect("tempdir");
    let (anchors, token) = (dir.path().join("anchors.pem"), dir.path().join("token"));
    std::fs::write(&anchors, &mesh.cert_pem).expect("anchors");
    std::fs::write(&token, TOKEN).expect("token");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("empty");
    let url = format!("https://127.0.0.1:{}", outrigger_tests::free_port());
    let plain = format!("http://127.0.0.1:{}", outrigger_tests::free_port());
    let cases: Vec<(ProxyBuilder, &str)> = vec![
        (
            ProxyBuilder::control_plane_at(&plain, &anchors, &token, "web", "v1", None),
            "--insecure-dev-plaintext",
        ),
        (
            ProxyBuilder::control_plane_at(&url, &empty, &token, "web", "v1", None),
            "hold no certificate",
        ),
        (
            ProxyBuilder::control_plane_at(&url, &anchors, &token, "web", "v1", None)
                .arg("--token-file")
                .arg(token.to_str().expect("path")),
            "sidecars never hold operator tokens",
        ),
    ];
    for (builder, reason) in cases {
        let mut proxy = builder.spawn();
        let code = proxy.exit_code(DEADLINE).await;
        assert_ne!(code, Some(0));
        let stderr = proxy.stderr();
        assert!(stderr.contains(reason), "expected {reason:?} in: {stderr}");
        assert!(!stderr.contains(TOKEN), "the token was printed: {stderr}");
    }
}
