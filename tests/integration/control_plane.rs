//! Sidecars fed by the control plane: not ready before the first snapshot, endpoint changes
//! arrive within a second, a snapshot the sidecar cannot apply is NACKed and the last good one
//! keeps serving, a control plane outage costs no request, and instances come back after the
//! control plane restarts.

use http::Method;
use outrigger_tests::client::{self, send};
use outrigger_tests::control::Control;
use outrigger_tests::eventually;
use outrigger_tests::load::SteadyLoad;
use outrigger_tests::pki::ForeignCa;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const MESH: &str = outrigger_tests::control::CHECKOUT_CALLS_PAYMENT;

async fn served_by(proxy: &Proxy, host: &str) -> (u16, String) {
    let req = client::request("GET", &format!("http://{}/", proxy.outbound()))
        .header("host", host)
        .body(client::empty())
        .expect("request");
    let res = send(&client::h1(), req).await;
    let who = res
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (res.status().as_u16(), who)
}

/// Some(()) when five requests in a row were served by `who`: the other endpoint is gone.
async fn only(proxy: &Proxy, who: &str) -> Option<()> {
    for _ in 0..5 {
        if served_by(proxy, "payment").await.1 != who {
            return None;
        }
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_is_ready_only_with_a_snapshot_and_follows_endpoint_changes() {
    let control = Control::start_with(&["--mtls", "off"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);

    // A sidecar whose control plane is not there yet is alive but not ready.
    let dead = format!("https://127.0.0.1:{}", outrigger_tests::free_port());
    let lonely = ProxyBuilder::control_plane_at(
        &dead,
        &control.trust_anchors(),
        &control.bootstrap_token_file("checkout").await,
        "checkout",
        "v1",
        None,
    )
    .spawn();
    eventually(
        Duration::from_secs(10),
        "the lonely sidecar's admin port",
        || async { (lonely.admin_get("/live").await.0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(lonely.admin_get("/ready").await.0, 503);

    let proxy = ProxyBuilder::control_plane(&control, "checkout", "v1", None)
        .await
        .spawn()
        .ready()
        .await;
    let mut id_a = control.register("payment", "v1", a.addr).await;
    eventually(Duration::from_secs(5), "payment to route to a", || async {
        (served_by(&proxy, "payment").await == (200, "a".to_string())).then_some(())
    })
    .await;

    // Endpoint changes reach the sidecar within a second, every time.
    let deregister = |id: String| {
        let control = &control;
        async move {
            let (status, _) = control
                .send(
                    Method::DELETE,
                    &format!("/v1/registry/instances/{id}"),
                    serde_json::json!({}),
                )
                .await;
            assert!(status == 204 || status == 200, "deregister: {status}");
        }
    };
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let id_b = control.register("payment", "v2", b.addr).await;
        deregister(id_a).await;
        let t = Instant::now();
        eventually(Duration::from_secs(5), "payment to move to b", || {
            only(&proxy, "b")
        })
        .await;
        worst = worst.max(t.elapsed());
        id_a = control.register("payment", "v1", a.addr).await;
        deregister(id_b).await;
        let t = Instant::now();
        eventually(Duration::from_secs(5), "payment to move back to a", || {
            only(&proxy, "a")
        })
        .await;
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_secs(1),
        "slowest endpoint change took {worst:?}"
    );

    // Sync status shows this sidecar connected and acked.
    let (_, sidecars) = control.get("/v1/sidecars").await;
    let me = sidecars
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|s| s["service"] == "checkout" && s["connected"] == true)
        })
        .cloned()
        .expect("checkout sidecar in sync status");
    assert!(me["acked_version"].as_u64().is_some(), "{me}");
}

/// A scripted control plane speaking the real push protocol: the test decides what each
/// snapshot line says and sees every ACK and NACK. The real control plane validates what it
/// stores, so it never sends a snapshot a sidecar must refuse; this is the one way to send one.
struct ScriptedControlPlane {
    addr: std::net::SocketAddr,
    lines: tokio::sync::mpsc::Receiver<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    acks: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl ScriptedControlPlane {
    async fn start() -> Self {
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (streams_tx, lines) = tokio::sync::mpsc::channel(4);
        let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = acks.clone();
        // The sidecar is not ready before it holds a certificate: the script is its CA too.
        let ca = Arc::new(ForeignCa::new());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (streams_tx, recorded, ca) = (streams_tx.clone(), recorded.clone(), ca.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (streams_tx, recorded, ca) =
                            (streams_tx.clone(), recorded.clone(), ca.clone());
                        async move {
                            use http_body_util::BodyExt;
                            if req.uri().path() == "/v1/stream" {
                                let (tx, body) = client::channel_body(16);
                                let _ = streams_tx.send(tx).await;
                                return Ok::<_, std::convert::Infallible>(http::Response::new(
                                    body,
                                ));
                            }
                            if req.uri().path() == "/v1/identity/certificates" {
                                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                                let answer = body
                                    .ok()
                                    .and_then(|b| ca.answer_csr(&b, Duration::from_secs(3600)))
                                    .map(|a| a.to_string())
                                    .unwrap_or_default();
                                return Ok(http::Response::new(client::full(answer)));
                            }
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if let Ok(v) = serde_json::from_slice(&body) {
                                recorded.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                            }
                            let mut res = http::Response::new(client::empty());
                            *res.status_mut() = http::StatusCode::NO_CONTENT;
                            Ok(res)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, lines, acks }
    }

    fn acks(&self) -> Vec<serde_json::Value> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn line(version: u64, snapshot: serde_json::Value) -> bytes::Bytes {
    let mut l = serde_json::json!({"type": "snapshot", "version": version, "snapshot": snapshot})
        .to_string();
    l.push('\n');
    bytes::Bytes::from(l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_sidecar_cannot_apply_is_nacked_and_the_last_good_one_serves() {
    let mut cp = ScriptedControlPlane::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t").expect("token");
    // Plain HTTP: the script speaks the protocol, not TLS.
    let proxy = ProxyBuilder::control_plane_plaintext(
        &format!("http://{}", cp.addr),
        &token,
        "checkout",
        "v1",
        None,
    )
    .spawn();
    let stream = tokio::time::timeout(Duration::from_secs(20), cp.lines.recv())
        .await
        .expect("the sidecar subscribes")
        .expect("stream");
    let snapshot = |endpoint: &str| {
        serde_json::json!({"service": "checkout", "destinations": [
            {"name": "payment", "endpoints": [{"address": endpoint}]}
        ]})
    };
    stream
        .send(line(7, snapshot(&a.addr.to_string())))
        .await
        .expect("send");
    let proxy = proxy.ready().await;
    assert_eq!(served_by(&proxy, "payment").await, (200, "a".to_string()));
    // The fault matrix's "bad config pushed": load runs across the NACK, every request counted.
    let load = SteadyLoad::start(proxy.outbound(), "payment");
    load.progress(20, Duration::from_secs(20), "load before the bad snapshot")
        .await;

    // Version 8 names an endpoint that is no address: NACKed, naming the field.
    stream
        .send(line(8, snapshot("not-an-address")))
        .await
        .expect("send");
    let nack = eventually(Duration::from_secs(5), "the NACK for version 8", || async {
        cp.acks().into_iter().find(|a| a["version"] == 8)
    })
    .await;
    let reason = nack["error"].as_str().expect("a NACK carries its reason");
    assert!(
        reason.contains("destinations[0].endpoints[0].address"),
        "{reason}"
    );
    assert_eq!(
        cp.acks()
            .iter()
            .find(|a| a["version"] == 7)
            .map(|a| a["error"].is_null()),
        Some(true),
        "7 was ACKed"
    );
    for _ in 0..5 {
        assert_eq!(
            served_by(&proxy, "payment").await,
            (200, "a".to_string()),
            "the last good snapshot serves"
        );
    }
    let (_, cfg) = proxy.admin_get("/config").await;
    assert!(cfg.contains("\"version\":7"), "{cfg}");
    assert_eq!(
        proxy
            .metric(
                "outrigger_config_rejected_total",
                &[("source", "control-plane")]
            )
            .await,
        Some(1.0)
    );

    load.progress(100, Duration::from_secs(20), "load after the NACK")
        .await;
    let (ok, failed) = load.stop().await;
    eprintln!("fault matrix: bad snapshot pushed and NACKed: {ok} requests ok, {failed} failed");
    assert_eq!(failed, 0, "{ok} ok");

    // The next good one applies.
    stream
        .send(line(9, snapshot(&b.addr.to_string())))
        .await
        .expect("send");
    eventually(Duration::from_secs(5), "version 9 applied", || async {
        (served_by(&proxy, "payment").await.1 == "b").then_some(())
    })
    .await;
    let ack9 = eventually(Duration::from_secs(5), "the ACK for 9", || async {
        cp.acks().into_iter().find(|a| a["version"] == 9)
    })
    .await;
    assert!(ack9["error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_outage_costs_no_request_and_instances_come_back() {
    let mut control = Control::start_with(&["--mtls", "off"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    // payment's own sidecar registers itself (with heartbeats); checkout's sidecar calls it.
    let payment = ProxyBuilder::control_plane(&control, "payment", "v1", Some(app.addr))
        .await
        .spawn()
        .ready()
        .await;
    let checkout = ProxyBuilder::control_plane(&control, "checkout", "v1", None)
        .await
        .spawn()
        .ready()
        .await;
    eventually(
        Duration::from_secs(10),
        "checkout to reach payment's sidecar",
        || async {
            (served_by(&checkout, "payment").await == (200, "payment-app".to_string()))
                .then_some(())
        },
    )
    .await;

    // Steady traffic for the whole outage; every request must succeed.
    let load = SteadyLoad::start(checkout.outbound(), "payment");
    load.progress(20, Duration::from_secs(5), "traffic before the outage")
        .await;
    control.kill();
    eventually(
        Duration::from_secs(10),
        "the sidecars to notice",
        || async {
            (checkout
                .metric("outrigger_control_plane_connected", &[])
                .await
                == Some(0.0))
            .then_some(())
        },
    )
    .await;
    load.progress(50, Duration::from_secs(5), "traffic during the outage")
        .await;
    assert_eq!(
        checkout.admin_get("/ready").await.0,
        200,
        "still ready on the last good snapshot"
    );

    control.restart().await;
    eventually(
        Duration::from_secs(15),
        "both sidecars to resubscribe",
        || async {
            let a = checkout
                .metric("outrigger_control_plane_connected", &[])
                .await
                == Some(1.0);
            let b = payment
                .metric("outrigger_control_plane_connected", &[])
                .await
                == Some(1.0);
            (a && b).then_some(())
        },
    )
    .await;
    // The registry is rebuilt from heartbeats: payment's sidecar registers again.
    eventually(
        Duration::from_secs(15),
        "payment back in the registry",
        || async {
            let (_, list) = control.get("/v1/registry/instances?service=payment").await;
            list.as_array().is_some_and(|l| !l.is_empty()).then_some(())
        },
    )
    .await;
    load.progress(20, Duration::from_secs(5), "traffic after the outage")
        .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "requests failed during the outage ({ok} ok)");
}
