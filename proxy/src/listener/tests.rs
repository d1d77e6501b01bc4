//! Attacks on the sidecar's security edges, in process with real sockets: a [`Sidecar`] with
//! snapshots applied, its real listeners on 127.0.0.1:0, real hyper clients, and a
//! local app that echoes the headers it received. Each test fails on a proxy that opens the
//! door: inbound before the first snapshot, plaintext after strict applies, a removable or
//! forgeable caller identity, a pooled connection reused under other TLS settings.

use super::*;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Telemetry;
use crate::tls::identity::Identity;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use outrigger_config::{ProxySettings, Snapshot};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Generous: only a broken proxy waits this long, and a loaded 2-core machine never needs it.
const PATIENCE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn snapshot(yaml: &str) -> Snapshot {
    outrigger_config::from_yaml(yaml).expect("test snapshot")
}

fn sidecar(identity: Option<Arc<Identity>>) -> Arc<Sidecar> {
    let settings = ProxySettings {
        access_log: false,
        ..ProxySettings::default()
    };
    let telemetry = Telemetry::new(&settings, None, Metrics::new());
    Arc::new(Sidecar::new(settings, telemetry, identity))
}

fn apply(sidecar: &Sidecar, snapshot: Snapshot) -> u64 {
    sidecar.snapshot.apply(snapshot, "test", &sidecar.telemetry)
}

async fn listen(sidecar: &Arc<Sidecar>, direction: Direction) -> (Listener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    (Listener::spawn(l, direction, sidecar.clone()), addr)
}

fn inbound_failures(sidecar: &Sidecar) -> u64 {
    sidecar
        .telemetry
        .metrics
        .tls_handshakes
        .with_label_values(&["inbound", "error"])
        .get()
}

/// The local app: answers every request with the request's headers as JSON (name → values).
async fn echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut seen = serde_json::Map::new();
                    for name in req.headers().keys() {
                        let values: Vec<serde_json::Value> = req
                            .headers()
                            .get_all(name)
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
                            .collect();
                        seen.insert(name.to_string(), values.into());
                    }
                    let body = serde_json::Value::Object(seen).to_string();
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn inbound_snapshot(app: SocketAddr, mode: &str) -> Snapshot {
    snapshot(&format!(
        "service: payment\ninbound: {{app: \"{app}\"}}\nmtls: {{mode: {mode}}}\n"
    ))
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 connection, and the task driving it (it ends when the connection does).
async fn h1(addr: SocketAddr) -> (H1, JoinHandle<()>) {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("http/1 handshake");
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

/// An h2c (prior knowledge) connection, and the task driving it.
async fn h2(addr: SocketAddr) -> (H2, JoinHandle<()>) {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .expect("h2 handshake");
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

/// Whether an h2c caller at `addr` gets no response at all (the connection is refused).
async fn h2c_refused(addr: SocketAddr) -> bool {
    within("an h2c request", async {
        let s = TcpStream::connect(addr).await.expect("connect");
        let handshake =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await;
        let Ok((mut send, conn)) = handshake else {
            return true;
        };
        tokio::spawn(conn);
        let req = get(http::Version::HTTP_2, "http://payment/")
            .body(Empty::<Bytes>::new())
            .expect("request");
        send.send_request(req).await.is_err()
    })
    .await
}

fn get(version: http::Version, uri: &str) -> http::request::Builder {
    Request::builder().version(version).uri(uri)
}

async fn body_json(res: Response<Incoming>) -> serde_json::Value {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn before_the_first_snapshot_inbound_refuses_plaintext_h2c_and_counts_it() {
    let sidecar = sidecar(None);
    let (_inbound, addr) = listen(&sidecar, Direction::Inbound).await;

    // A plaintext h2c caller gets nothing at all: not even an error response.
    assert!(h2c_refused(addr).await, "served before any snapshot");
    assert_eq!(inbound_failures(&sidecar), 1, "the refusal is counted");

    // The same listener serves once a snapshot says how.
    apply(&sidecar, inbound_snapshot(echo_app().await, "off"));
    let (mut send, _conn) = h2(addr).await;
    let req = get(http::Version::HTTP_2, "http://payment/")
        .body(Empty::new())
        .expect("request");
    let res = within("a request after the snapshot", send.send_request(req))
        .await
        .expect("served");
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_http1_connection_opened_under_permissive_is_refused_at_its_next_request_once_strict_applies(
) {
    let app = echo_app().await;
    let sidecar = sidecar(None);
    apply(&sidecar, inbound_snapshot(app, "permissive"));
    let (_inbound, addr) = listen(&sidecar, Direction::Inbound).await;

    let (mut send, conn) = h1(addr).await;
    let req = || {
        get(http::Version::HTTP_11, "/")
            .header("host", "payment")
            .body(Empty::new())
            .expect("request")
    };
    let res = within("the permissive request", send.send_request(req()))
        .await
        .expect("served");
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "plaintext is fine under permissive"
    );
    body_json(res).await;

    apply(&sidecar, inbound_snapshot(app, "strict"));
    within("the connection to be ready", send.ready())
        .await
        .expect("kept alive");
    let res = within("the strict request", send.send_request(req()))
        .await
        .expect("an answer");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()[crate::error::ERROR_HEADER], "mtls-required");
    assert_eq!(res.headers()[http::header::CONNECTION], "close");
    let body = body_json(res).await;
    assert_eq!(body["reason"], "mtls-required", "{body}");
    // And the connection is over: the proxy closed it.
    within("the proxy to close the connection", conn)
        .await
        .expect("conn task");
    assert!(send.is_closed());
    assert_eq!(
        sidecar
            .telemetry
            .metrics
            .proxy_errors
            .with_label_values(&["inbound", "mtls-required"])
            .get(),
        1
    );
}

#[tokio::test]
async fn an_h2c_connection_opened_under_permissive_is_refused_and_ended_once_strict_applies() {
    let app = echo_app().await;
    let sidecar = sidecar(None);
    apply(&sidecar, inbound_snapshot(app, "permissive"));
    let (_inbound, addr) = listen(&sidecar, Direction::Inbound).await;

    let (mut send, conn) = h2(addr).await;
    let req = || {
        get(http::Version::HTTP_2, "http://payment/")
            .body(Empty::new())
            .expect("request")
    };
    let res = within("the permissive request", send.send_request(req()))
        .await
        .expect("served");
    assert_eq!(res.status(), StatusCode::OK);

    apply(&sidecar, inbound_snapshot(app, "strict"));
    let res = within("the strict request", send.send_request(req()))
        .await
        .expect("an answer");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()[crate::error::ERROR_HEADER], "mtls-required");
    body_json(res).await;
    // GOAWAY: the connection ends, and nothing more can be sent on it.
    within("the proxy to end the connection", conn)
        .await
        .expect("conn task");
    let again = within("a request after GOAWAY", send.send_request(req())).await;
    assert!(again.is_err(), "a request went through after GOAWAY");

    // A new plaintext connection is not even accepted now.
    let before = inbound_failures(&sidecar);
    assert!(h2c_refused(addr).await);
    assert_eq!(inbound_failures(&sidecar), before + 1);
}

/// Serves one connection as if its client certificate had been verified as `peer` names: the
/// header path is what is under test, not the handshake.
async fn connect_as(
    sidecar: &Arc<Sidecar>,
    peer: impl FnOnce(SocketAddr) -> Peer + Send + 'static,
) -> H1 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let sidecar = sidecar.clone();
    tokio::spawn(async move {
        let (drain, draining) = watch::channel(false);
        if let Ok((s, from)) = l.accept().await {
            let metrics = &sidecar.telemetry.metrics;
            let bounds = Arc::new(Bounds::new(
                &sidecar.settings.limits,
                sidecar.settings.max_header_bytes,
                metrics,
                "inbound",
            ));
            let b = builder(&sidecar.settings, StreamExec::new(bounds.clone()));
            let peer = peer(from);
            serve(&b, draining, s, sidecar, Direction::Inbound, peer, &bounds).await;
        }
        drop(drain);
    });
    h1(addr).await.0
}

async fn client_ids_seen(send: &mut H1, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = get(http::Version::HTTP_11, "/").header("host", "payment");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res = within(
        "the request",
        send.send_request(req.body(Empty::new()).expect("request")),
    )
    .await
    .expect("served");
    assert_eq!(res.status(), StatusCode::OK);
    body_json(res).await["x-outrigger-client-id"].clone()
}

#[tokio::test]
async fn the_caller_identity_can_be_neither_removed_nor_forged() {
    const CHECKOUT: &str = "spiffe://outrigger.local/service/checkout";
    let sidecar = sidecar(None);
    apply(&sidecar, inbound_snapshot(echo_app().await, "permissive"));

    let mut verified = connect_as(&sidecar, |a| Peer::mtls(a, Some(Arc::from(CHECKOUT)))).await;
    // Naming it in `Connection` used to make hop-by-hop stripping delete it.
    let seen = client_ids_seen(
        &mut verified,
        &[
            ("connection", "x-outrigger-client-id"),
            (
                "x-outrigger-client-id",
                "spiffe://outrigger.local/service/admin",
            ),
        ],
    )
    .await;
    assert_eq!(seen, serde_json::json!([CHECKOUT]));
    let seen = client_ids_seen(&mut verified, &[]).await;
    assert_eq!(seen, serde_json::json!([CHECKOUT]));

    // Plaintext: whatever the caller claims, the app sees no identity.
    let mut plain = connect_as(&sidecar, Peer::plaintext).await;
    for headers in [
        &[(
            "x-outrigger-client-id",
            "spiffe://outrigger.local/service/admin",
        )][..],
        &[
            ("connection", "x-outrigger-client-id"),
            (
                "x-outrigger-client-id",
                "spiffe://outrigger.local/service/admin",
            ),
        ][..],
    ] {
        let seen = client_ids_seen(&mut plain, headers).await;
        assert!(seen.is_null(), "forged identity reached the app: {seen}");
    }
}

// ---- Outbound: pooled HTTP/2 connections are keyed by their TLS setting. ----

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).expect("self-signed").pem();
    Ca { params, key, pem }
}

/// A sidecar-like upstream: TLS 1.3 (ALPN h2, no client certificate asked) with a leaf from
/// `ca` naming `id`, or h2c, told apart by the first byte. Counts the connections of each kind
/// it accepted, and watches how many are open.
struct PeerUpstream {
    addr: SocketAddr,
    tls: Arc<AtomicUsize>,
    plain: Arc<AtomicUsize>,
    open: watch::Receiver<usize>,
}

async fn peer_upstream(ca: &Ca, id: &str) -> PeerUpstream {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::new(ca.params.clone(), &ca.key);
    let leaf = params.signed_by(&key, &issuer).expect("leaf").der().clone();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![leaf], der)
        .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (open, open_rx) = watch::channel(0usize);
    let open = Arc::new(open);
    let up = PeerUpstream {
        addr: l.local_addr().expect("addr"),
        tls: Arc::default(),
        plain: Arc::default(),
        open: open_rx,
    };
    let (tls, plain) = (up.tls.clone(), up.plain.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, tls, plain, open) =
                (acceptor.clone(), tls.clone(), plain.clone(), open.clone());
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let mut first = [0u8; 1];
                if s.peek(&mut first).await.ok() != Some(1) {
                    return;
                }
                open.send_modify(|n| *n += 1);
                if first[0] == 0x16 {
                    tls.fetch_add(1, Ordering::SeqCst);
                    if let Ok(s) = acceptor.accept(s).await {
                        let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                    }
                } else {
                    plain.fetch_add(1, Ordering::SeqCst);
                    let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                }
                open.send_modify(|n| *n -= 1);
            });
        }
    });
    up
}

fn outbound_snapshot(
    mode: &str,
    bundle: &[&str],
    expected: &str,
    endpoint: SocketAddr,
) -> Snapshot {
    let mut s = snapshot(&format!(
        "service: checkout\nmtls: {{mode: {mode}}}\ndestinations:\n  - name: payment\n    protocol: http2\n    identity: \"{expected}\"\n    endpoints: [{{address: \"{endpoint}\"}}]\n"
    ));
    s.mtls.trust_bundle = bundle.iter().map(|p| p.to_string()).collect();
    s
}

/// One request through the outbound listener to `payment`; its status and error reason.
async fn call_payment(outbound: SocketAddr) -> (StatusCode, Option<String>) {
    let (mut send, _conn) = h1(outbound).await;
    let req = get(http::Version::HTTP_11, "/")
        .header("host", "payment")
        .body(Empty::new())
        .expect("request");
    let res = within("the outbound request", send.send_request(req))
        .await
        .expect("an answer");
    let reason = res
        .headers()
        .get(crate::error::ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (res.status(), reason)
}

#[tokio::test]
async fn pooled_http2_connections_are_not_reused_across_a_tls_change() {
    const PAYMENT: &str = "spiffe://outrigger.local/service/payment";
    let (old_root, new_root) = (ca(), ca());
    let up = peer_upstream(&old_root, PAYMENT).await;
    let count = |c: &Arc<AtomicUsize>| c.load(Ordering::SeqCst);
    // An identity without a certificate yet: enough to build client configs (the upstream
    // asks for no client certificate).
    let sidecar = sidecar(Some(Arc::new(Identity::default())));
    apply(
        &sidecar,
        outbound_snapshot("permissive", &[&old_root.pem], PAYMENT, up.addr),
    );
    let (_outbound, out) = listen(&sidecar, Direction::Outbound).await;

    assert_eq!(call_payment(out).await, (StatusCode::OK, None));
    assert_eq!(call_payment(out).await, (StatusCode::OK, None));
    assert_eq!(count(&up.tls), 1, "one multiplexed mTLS connection");
    // A push that leaves the TLS setting alone keeps the connection.
    apply(
        &sidecar,
        outbound_snapshot("permissive", &[&old_root.pem], PAYMENT, up.addr),
    );
    assert_eq!(call_payment(out).await, (StatusCode::OK, None));
    assert_eq!(
        count(&up.tls),
        1,
        "an unchanged setting keeps its connection"
    );

    // A new trust bundle (a root joining during rotation): a new connection, verified
    // under it, and the old one closes.
    apply(
        &sidecar,
        outbound_snapshot("strict", &[&old_root.pem, &new_root.pem], PAYMENT, up.addr),
    );
    assert_eq!(call_payment(out).await, (StatusCode::OK, None));
    assert_eq!(count(&up.tls), 2, "the new bundle made a new connection");
    let mut open = up.open.clone();
    within("the old connection to close", open.wait_for(|n| *n == 1))
        .await
        .expect("upstream running");

    // Another expected identity: the pooled connection (verified as payment) must not carry
    // the request; a new handshake finds the mismatch.
    apply(
        &sidecar,
        outbound_snapshot(
            "strict",
            &[&old_root.pem, &new_root.pem],
            "spiffe://outrigger.local/service/ledger",
            up.addr,
        ),
    );
    let (status, reason) = call_payment(out).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(reason.as_deref(), Some("peer-identity-mismatch"));

    // A bundle without the root the upstream's certificate chains to: refused the same way.
    apply(
        &sidecar,
        outbound_snapshot("strict", &[&new_root.pem], PAYMENT, up.addr),
    );
    let (status, _) = call_payment(out).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    // mTLS off: plaintext h2c on a connection of its own, never a TLS one made before.
    apply(
        &sidecar,
        outbound_snapshot("off", &[&old_root.pem], PAYMENT, up.addr),
    );
    assert_eq!(call_payment(out).await, (StatusCode::OK, None));
    assert_eq!(count(&up.plain), 1, "off means a plaintext connection");
}
