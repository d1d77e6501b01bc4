//! Zero trust on day 2, against the real control plane: certificates that live seconds renew
//! for as long as the mesh runs without a failed request or a moment out of readiness; a root
//! rotation waits for the connected sidecars but not for one cut off from the control plane,
//! which still trusts its peers when it comes back; and a sidecar rides out a control plane
//! restart on the certificate it holds, and says so when that certificate expires. In
//! development (a plaintext control channel, an operator token) a sidecar still holds a
//! certificate before it is ready.

use http::Method;
use outrigger_tests::client::{self, send};
use outrigger_tests::control::Control;
use outrigger_tests::eventually;
use outrigger_tests::load::SteadyLoad;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::relay::{Path, Relay};
use outrigger_tests::upstream::Upstream;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Strict mTLS (the control plane's default) with an allow-list: only checkout may call payment.
const MESH: &str = "\
kind: Service
metadata: {name: checkout}
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

const RENEWALS: &str = "outrigger_identity_renewals_total";
const EXPIRY: &str = "outrigger_identity_cert_expiry_timestamp_seconds";
const HANDSHAKES: &str = "outrigger_tls_handshakes_total";

/// A sidecar for `service` that joins with a bootstrap token minted for it just now, good for
/// one CSR within 3 s: it must be spent on the first certificate and never needed again.
async fn join(
    control: &Control,
    url: &str,
    service: &str,
    app: Option<SocketAddr>,
    extra: &[&str],
) -> Proxy {
    let token = control.bootstrap_token_file_with(service, 3, 1).await;
    let mut builder =
        ProxyBuilder::control_plane_at(url, &control.trust_anchors(), &token, service, "v1", app);
    for a in extra {
        builder = builder.arg(a);
    }
    builder.spawn().ready().await
}

async fn call_payment(caller: &Proxy) -> u16 {
    let req = client::request("GET", &format!("http://{}/", caller.outbound()))
        .header("host", "payment")
        .body(client::empty())
        .expect("request");
    send(&client::h1(), req).await.status().as_u16()
}

async fn reaches_payment(caller: &Proxy) {
    eventually(
        Duration::from_secs(10),
        "the caller to reach payment",
        || async { (call_payment(caller).await == 200).then_some(()) },
    )
    .await;
}

/// Samples `/ready` of some sidecars until stopped, keeping every answer that was not 200.
struct ReadyWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl ReadyWatch {
    fn start(admins: Vec<SocketAddr>) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut samples, mut bad) = (0, Vec::new());
            let mut every = tokio::time::interval(Duration::from_millis(200));
            while !*stopped.borrow() {
                for admin in &admins {
                    let (status, body) = client::admin_get(*admin, "/ready").await;
                    samples += 1;
                    if status != 200 {
                        bad.push(format!("{admin}: {status} {body}"));
                    }
                }
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stopped.changed() => {}
                }
            }
            (samples, bad)
        });
        Self { stop, task }
    }

    /// (samples taken, the answers that were not 200).
    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.send_replace(true);
        self.task.await.expect("ready watch")
    }
}

/// How many "workload certificate issued" lines the sidecar logged, by credential (`via`).
fn issued_via(proxy: &Proxy, via: &str) -> usize {
    proxy
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "workload certificate issued" && l["via"] == via)
        .count()
}

/// payment's instance as checkout sees it: an address that moves every few seconds. Each
/// address is a fresh relay to payment's inbound listener, so checkout's first request to it
/// opens a new connection with a full mTLS handshake, made with the certificates both sidecars
/// hold at that moment. (Sidecars keep one HTTP/2 connection per endpoint for as long as it
/// lives, and a renewal changes no TLS setting, so without new endpoints the handshake that
/// opened the mesh would be the only one.)
struct MovingPayment<'a> {
    control: &'a Control,
    inbound: SocketAddr,
    current: Option<(Relay, String)>,
    /// Kept open, so that requests still in flight on a retired address finish.
    retired: Vec<Relay>,
    moves: usize,
}

impl<'a> MovingPayment<'a> {
    fn new(control: &'a Control, payment: &Proxy) -> Self {
        Self {
            control,
            inbound: payment.inbound(),
            current: None,
            retired: Vec::new(),
            moves: 0,
        }
    }

    /// Moves payment to a new address: registers it, deregisters the old one (so all traffic
    /// must take the new connection; the old relay stays open for requests in flight there),
    /// and waits until `checkout` has connected to it, calling payment meanwhile in case no
    /// other traffic does.
    async fn advance(&mut self, checkout: &Proxy) {
        let relay = Relay::start(self.inbound).await;
        let id = self.control.register("payment", "v1", relay.addr).await;
        if let Some((old, old_id)) = self.current.take() {
            let (status, body) = self
                .control
                .send(
                    Method::DELETE,
                    &format!("/v1/registry/instances/{old_id}"),
                    json!({}),
                )
                .await;
            assert!(
                status == 200 || status == 204,
                "deregister: {status} {body}"
            );
            self.retired.push(old);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while relay.connections() == 0 {
            if Instant::now() > deadline {
                let (_, config) = checkout.admin_get("/config").await;
                let log = checkout.stderr();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "checkout never connected to payment's new address {}: its config {config}; \
                     its log, newest first: {tail:#?}",
                    relay.addr
                );
            }
            call_payment(checkout).await;
        }
        self.current = Some((relay, id));
        self.moves += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_never_lapses_over_twenty_certificate_lifetimes_under_load() {
    const LIFETIME: Duration = Duration::from_secs(5);
    let setup = Instant::now();
    let control = Control::start_with(&["--cert-lifetime", "5s"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    // payment does not register itself: checkout reaches it at the addresses the test moves.
    let payment = join(
        &control,
        &control.url(),
        "payment",
        Some(app.addr),
        &["--no-register"],
    )
    .await;
    let checkout = join(&control, &control.url(), "checkout", None, &[]).await;
    let mut moving = MovingPayment::new(&control, &payment);
    moving.advance(&checkout).await;
    reaches_payment(&checkout).await;

    let started = Instant::now();
    let setup = setup.elapsed();
    let ready = ReadyWatch::start(vec![checkout.admin, payment.admin]);
    let load = SteadyLoad::start(checkout.outbound(), "payment");
    // A new handshake every half lifetime: every certificate either sidecar holds (each is
    // current for 0.7 of a lifetime) is presented in at least one, and a lapse anywhere would
    // show as a failed request.
    let mut every = tokio::time::interval_at(started + LIFETIME / 2, LIFETIME / 2);
    while started.elapsed() < LIFETIME * 20 {
        every.tick().await;
        moving.advance(&checkout).await;
        // A lapse fails the test now rather than after the full run.
        assert_eq!(
            load.failed(),
            0,
            "failed requests after {:?}",
            started.elapsed()
        );
    }
    let (ok, failed) = load.stop().await;
    let (samples, not_ready) = ready.stop().await;
    let elapsed = started.elapsed();
    eprintln!(
        "renewal: set up in {setup:?}; {elapsed:?}, {ok} ok / {failed} failed, {samples} \
         /ready samples, {} addresses; renewals checkout {} payment {}",
        moving.moves,
        checkout.metric_or_zero(RENEWALS, &[("result", "ok")]).await,
        payment.metric_or_zero(RENEWALS, &[("result", "ok")]).await,
    );

    assert_eq!(failed, 0, "failed requests over {elapsed:?} ({ok} ok)");
    assert!(ok >= 1000, "only {ok} requests in {elapsed:?}");
    assert!(
        not_ready.is_empty(),
        "/ready was not 200 in {} of {samples} samples: {not_ready:?}",
        not_ready.len()
    );
    assert!(samples >= 400, "only {samples} /ready samples");
    for (sidecar, name, direction) in [
        (&checkout, "checkout", "outbound"),
        (&payment, "payment", "inbound"),
    ] {
        let renewed = sidecar.metric_or_zero(RENEWALS, &[("result", "ok")]).await - 1.0;
        assert!(
            renewed >= 20.0,
            "{name} renewed {renewed} times in {elapsed:?}"
        );
        assert_eq!(
            sidecar
                .metric_or_zero(RENEWALS, &[("result", "error")])
                .await,
            0.0,
            "{name} had a failed renewal: {}",
            sidecar.stderr()
        );
        // The token got the first certificate; every other came over mTLS with the one held
        // (a 3 s token tried again would have failed, and counted as an error above).
        assert_eq!(issued_via(sidecar, "bootstrap token"), 1, "{name}");
        assert!(
            issued_via(sidecar, "workload certificate") >= 20,
            "{name}: {}",
            sidecar.stderr()
        );
        let handshakes = [("direction", direction), ("result", "ok")];
        let made = sidecar.metric_or_zero(HANDSHAKES, &handshakes).await;
        assert!(
            made >= moving.moves as f64,
            "{name}: {made} {direction} handshakes for {} addresses",
            moving.moves
        );
        let refused = [("direction", direction), ("result", "error")];
        assert_eq!(
            sidecar.metric_or_zero(HANDSHAKES, &refused).await,
            0.0,
            "{name}"
        );
    }
}

/// `/v1/ca/status`, and the entry of sidecar `id` in it.
async fn ca_status(control: &Control, id: &str) -> (Value, Value) {
    let (status, body) = control.get("/v1/ca/status").await;
    assert_eq!(status, 200, "ca status: {body}");
    let me = body["sidecars"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["id"] == id))
        .cloned()
        .unwrap_or(Value::Null);
    (body, me)
}

/// How many unexpired leaves root `id` has signed.
async fn leaves_of(control: &Control, id: &str) -> u64 {
    let (_, roots) = control.get("/v1/ca/roots").await;
    roots
        .as_array()
        .and_then(|all| all.iter().find(|r| r["id"] == id))
        .and_then(|r| r["unexpired_leaves"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_cut_off_during_a_root_rotation_trusts_its_peers_when_it_returns() {
    // The cut must end before checkout's certificate does: once expired, only a bootstrap
    // token gets a sidecar back in, and its token is spent. Both sidecars hold their first
    // certificates, payment's issued a moment before checkout's: the cut starts at once and
    // lasts until payment's first renewal (0.7 of a lifetime), so checkout, due to renew about
    // then, does so when the path opens, with ~3 s of its 15 s certificate left at worst.
    let control = Control::start_with(&["--cert-lifetime", "15s"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    let payment = join(
        &control,
        &control.url(),
        "payment",
        Some(app.addr),
        &["--no-register"],
    )
    .await;
    // checkout reaches the control plane only through a relay the test can stall and cut.
    // The control plane's certificate names 127.0.0.1, so the relay's address verifies.
    let relay = Relay::start(control.addr).await;
    let checkout = join(
        &control,
        &format!("https://{}", relay.addr),
        "checkout",
        None,
        &["--sidecar-id", "checkout-cut"],
    )
    .await;
    let mut moving = MovingPayment::new(&control, &payment);
    moving.advance(&checkout).await;
    reaches_payment(&checkout).await;
    let load = SteadyLoad::start(checkout.outbound(), "payment");
    load.progress(20, Duration::from_secs(10), "traffic before the rotation")
        .await;

    let expires = checkout.metric_or_zero(EXPIRY, &[]).await;
    assert_eq!(
        checkout.metric_or_zero(RENEWALS, &[("result", "ok")]).await,
        1.0,
        "checkout still holds its first certificate"
    );

    // Stalled (connected, but nothing gets through): checkout cannot ACK the new bundle, and
    // the new root waits for it while payment, connected too, trusts it at once.
    relay.set(Path::Held);
    let (status, rotated) = control.send(Method::POST, "/v1/ca/roots", json!({})).await;
    assert_eq!(status, 201, "rotate: {rotated}");
    let (old, new) = (
        rotated["active"].as_str().expect("active root").to_string(),
        rotated["pending"]
            .as_str()
            .expect("a pending root")
            .to_string(),
    );
    assert_ne!(old, new);
    let (waiting, _) = eventually(
        Duration::from_secs(10),
        "payment to trust the new root, and the root to wait for checkout",
        || async {
            let (all, cut) = ca_status(&control, "checkout-cut").await;
            let payment_trusts = all["sidecars"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["service"] == "payment" && s["trusts_pending"] == true)
            });
            (payment_trusts && cut["connected"] == true).then_some((all, cut))
        },
    )
    .await;
    assert_eq!(waiting["pending"], new.as_str(), "{waiting}");
    assert_eq!(waiting["active"], old.as_str(), "{waiting}");
    assert_eq!(waiting["lagging"], json!(["checkout-cut"]), "{waiting}");

    // Cut off: the control plane stops waiting for a sidecar that is not connected.
    relay.set(Path::Cut);
    let switched = eventually(
        Duration::from_secs(15),
        "the new root to sign without checkout",
        || async {
            let (all, cut) = ca_status(&control, "checkout-cut").await;
            (all["pending"].is_null()).then_some((all, cut))
        },
    )
    .await;
    assert_eq!(switched.0["active"], new.as_str(), "{}", switched.0);
    assert_eq!(switched.1["connected"], false, "{}", switched.0);
    let cut_at = Instant::now();
    // payment renews onto the new root: a certificate checkout's bundle does not hold yet.
    eventually(
        Duration::from_secs(15),
        "payment to hold a certificate from the new root",
        || async { (leaves_of(&control, &new).await >= 1).then_some(()) },
    )
    .await;
    let (ok_before, failed_before) = load.stop().await;

    // Back: checkout renews over mTLS, and its stream brings the bundle with the new root.
    let outbound = |result| [("direction", "outbound"), ("result", result)];
    let handshakes_before = checkout.metric_or_zero(HANDSHAKES, &outbound("ok")).await;
    let refused_before = checkout
        .metric_or_zero(HANDSHAKES, &outbound("error"))
        .await;
    relay.set(Path::Open);
    eventually(
        Duration::from_secs(15),
        "checkout to renew with the path open",
        || async {
            (checkout.metric_or_zero(RENEWALS, &[("result", "ok")]).await > 1.0).then_some(())
        },
    )
    .await;
    let spare = expires - unix_now();
    let version = eventually(
        Duration::from_secs(15),
        "checkout to apply and ACK a snapshot holding the new root",
        || async {
            let (_, config) = checkout.admin_get("/config").await;
            let config: Value = serde_json::from_str(&config).ok()?;
            let bundle = config["snapshot"]["mtls"]["trust_bundle"].as_array()?.len();
            let version = config["version"].as_u64()?;
            let (_, me) = ca_status(&control, "checkout-cut").await;
            (bundle == 2 && me["connected"] == true && me["acked_version"] == version)
                .then_some(version)
        },
    )
    .await;
    let back_after = cut_at.elapsed();

    // From here on nothing fails, and checkout meets payment's new certificate in fresh
    // handshakes: the bundle with the new root is a new TLS setting (so a new connection), and
    // then payment moves to a new address (another, whatever the settings did).
    let load = SteadyLoad::start(checkout.outbound(), "payment");
    load.progress(50, Duration::from_secs(10), "traffic after the return")
        .await;
    moving.advance(&checkout).await;
    load.progress(
        50,
        Duration::from_secs(10),
        "traffic to payment's new address",
    )
    .await;
    let handshakes = checkout.metric_or_zero(HANDSHAKES, &outbound("ok")).await - handshakes_before;
    assert!(
        handshakes >= 2.0,
        "{handshakes} handshakes after the return"
    );
    assert_eq!(
        checkout
            .metric_or_zero(HANDSHAKES, &outbound("error"))
            .await,
        refused_before,
        "a handshake to payment failed after the return"
    );
    let (ok, failed) = load.stop().await;
    eprintln!(
        "rotation: {ok_before} ok / {failed_before} failed before and during the cut; checkout \
         renewed with {spare:.0} s left; back after {back_after:?} (version {version}); \
         {ok} ok / {failed} failed after"
    );
    assert_eq!(
        failed, 0,
        "failed requests after checkout came back ({ok} ok)"
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_rides_out_a_control_plane_restart_and_says_when_its_certificate_expired() {
    // The control plane is away from just after the first certificate (issued at start) until
    // a renewal (due at 0.7 of the lifetime) has failed, and back with ~3 s of 12 to spare.
    let mut control = Control::start_with(&["--cert-lifetime", "12s"]).await;
    assert_eq!(control.apply(MESH).await.0, 200);
    let checkout = join(&control, &control.url(), "checkout", None, &[]).await;
    let ready = ReadyWatch::start(vec![checkout.admin]);
    let first_expires = checkout.metric_or_zero(EXPIRY, &[]).await;
    control.kill();
    eventually(
        Duration::from_secs(12),
        "a renewal to fail with the control plane gone",
        || async {
            (checkout
                .metric_or_zero(RENEWALS, &[("result", "error")])
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    control.restart().await;
    eventually(
        Duration::from_secs(10),
        "checkout to renew on its own with the control plane back",
        || async {
            (checkout.metric_or_zero(RENEWALS, &[("result", "ok")]).await >= 2.0).then_some(())
        },
    )
    .await;
    eprintln!(
        "restart: checkout renewed with {:.1} s of its first certificate left",
        first_expires - unix_now()
    );
    let (samples, not_ready) = ready.stop().await;
    assert!(
        not_ready.is_empty(),
        "not ready in {} of {samples} samples while its certificate was valid: {not_ready:?}",
        not_ready.len()
    );

    // Gone for good: once the certificate expires, checkout is not ready and says why.
    let expires = checkout.metric_or_zero(EXPIRY, &[]).await;
    control.kill();
    let body = eventually(
        Duration::from_secs(20),
        "/ready to report the expired certificate",
        || async {
            let (status, body) = checkout.admin_get("/ready").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert!(
        unix_now() >= expires,
        "not ready before the certificate expired: {body}"
    );
    assert!(
        body.contains("workload certificate expired at ") && body.contains("renewal failing"),
        "{body}"
    );
    eventually(Duration::from_secs(5), "the expiry in the log", || async {
        checkout
            .stderr()
            .contains("the workload certificate has expired")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_sidecar_with_only_an_operator_token_holds_a_certificate_before_it_is_ready() {
    // A developer's mesh: plaintext control channel, the operator token and no bootstrap
    // tokens; sidecar to sidecar is still strict mTLS, so a sidecar without a certificate
    // would be ready and refused.
    let control = Control::start_dev_plaintext(&[]).await;
    assert!(control.url().starts_with("http://"));
    assert_eq!(control.apply(MESH).await.0, 200);
    let app = Upstream::start("payment-app").await;
    let dev = |service: &'static str, app: Option<SocketAddr>| {
        ProxyBuilder::control_plane_plaintext(
            &control.url(),
            &control.token_file,
            service,
            "v1",
            app,
        )
        .spawn()
        .ready()
    };
    let payment = dev("payment", Some(app.addr)).await;
    let checkout = dev("checkout", None).await;
    for (sidecar, name) in [(&payment, "payment"), (&checkout, "checkout")] {
        assert!(
            sidecar.metric_or_zero(EXPIRY, &[]).await > unix_now(),
            "{name} is ready without a valid certificate"
        );
        assert_eq!(
            issued_via(sidecar, "operator token"),
            1,
            "{name}: {}",
            sidecar.stderr()
        );
    }
    reaches_payment(&checkout).await;
    assert!(
        payment
            .metric_or_zero(
                "outrigger_inbound_requests_by_security_total",
                &[("security", "mtls")]
            )
            .await
            >= 1.0
    );
}
