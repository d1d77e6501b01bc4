//! Rollouts lose nothing (issue 12, point 1): a draining sidecar leaves the registry for good.
//! Its heartbeat loop ends before it deregisters, so the heartbeat's 404 ("register again") can
//! never put an instance that is shutting down back in front of its callers. And a rolling
//! restart of the whole shop under `outrigger up`'s load fails no order and no browse request,
//! with callers no longer picking an instance 1 s after it left.

use outrigger_tests::client;
use outrigger_tests::control::{Control, CHECKOUT_CALLS_PAYMENT};
use outrigger_tests::proxy::{metric_value, ProxyBuilder};
use outrigger_tests::up::Up;
use outrigger_tests::up_procs::{kill, running, shop_of, spawn_logged, Instance, Killed};
use outrigger_tests::upstream::Upstream;
use outrigger_tests::{bin, eventually, free_port};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// The endpoints the registry lists for `service`.
async fn registered(control: &Control, service: &str) -> Vec<SocketAddr> {
    let (status, body) = control
        .get(&format!("/v1/registry/instances?service={service}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| i["endpoint"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A sidecar that drains for longer than two heartbeat periods (a request in flight keeps it
/// there) must not reappear in the registry. Before the fix the first heartbeat after
/// deregistration got 404 and registered the instance again within about 3.3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_sidecar_never_registers_again() {
    let control = Control::start_with(&["--mtls", "off"]).await;
    assert_eq!(control.apply(CHECKOUT_CALLS_PAYMENT).await.0, 200);
    let app = Upstream::start("payment").await;
    let mut proxy = ProxyBuilder::control_plane(&control, "payment", "v1", Some(app.addr))
        .await
        .arg("--drain-timeout")
        .arg("30s")
        .spawn()
        .ready()
        .await;
    let inbound = proxy.inbound();
    eventually(
        Duration::from_secs(10),
        "the sidecar to register",
        || async { (registered(&control, "payment").await == [inbound]).then_some(()) },
    )
    .await;

    // The heartbeat comes every ttl/3 = 3.3 s: hold the drain open well past two of them.
    let hold = Duration::from_secs(9);
    let url = format!("http://{inbound}/delay/{}", hold.as_millis());
    let in_flight = tokio::spawn(async move { client::get(&client::h1(), &url).await });
    eventually(
        Duration::from_secs(5),
        "the slow request to reach the app",
        || async { (app.requests() == 1).then_some(()) },
    )
    .await;

    let signalled = Instant::now();
    proxy.signal("TERM");
    eventually(Duration::from_secs(5), "/ready to turn 503", || async {
        (proxy.admin_get("/ready").await.0 == 503).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the instance to leave", || async {
        registered(&control, "payment")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    // Watch the registry while the sidecar is still draining, for two heartbeat periods and
    // more: a heartbeat loop still running would have registered it again by then.
    let watch_until = signalled + Duration::from_secs(7);
    while Instant::now() < watch_until {
        let now = registered(&control, "payment").await;
        assert!(
            now.is_empty(),
            "the draining sidecar registered again {:?} after SIGTERM: {now:?}\n{}",
            signalled.elapsed(),
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(proxy.child.try_wait(), Ok(None)),
        "the sidecar must still be draining for the watch to mean anything"
    );
    let res = in_flight.await.expect("task");
    assert_eq!(res.status(), 200, "the request in flight finishes");
    assert_eq!(proxy.exit_code(Duration::from_secs(20)).await, Some(0));
    assert!(
        !proxy.stderr().contains("registering again"),
        "{}",
        proxy.stderr()
    );
}

// A rolling restart of the whole shop under `outrigger up`'s storefront load.

/// How long one instance of `up` may take to leave: its sidecar's drain is bounded by the
/// default 30 s drain timeout, the app's by its own 10 s grace.
const LEAVE_WITHIN: Duration = Duration::from_secs(45);
/// Fewer orders than this and zero failures would prove little: at 20 orders/s over the
/// ~8 s the roll takes, the run places about 150.
const MIN_ORDERS: u64 = 100;
/// The bound: callers stop picking an instance within 1 s of its leaving.
const CALLERS_STOP_WITHIN_MS: i64 = 1000;

/// `up`'s control plane, called as its operator (with the admin token `up` keeps).
struct Operator {
    client: outrigger_tests::https::Client,
    url: String,
    token: String,
}

impl Operator {
    fn of(up: &Up) -> Self {
        let anchors = std::fs::read(&up.trust_anchors).expect("up's trust bundle");
        Self {
            client: outrigger_tests::https::client(&anchors),
            url: up.control_url.clone(),
            token: up.admin_token(),
        }
    }

    async fn call(&self, method: http::Method, path: &str, body: Option<&str>) -> (u16, Value) {
        outrigger_tests::https::call(
            &self.client,
            method,
            &format!("{}{path}", self.url),
            body,
            Some(&self.token),
        )
        .await
    }

    /// A single-use bootstrap token for `service`, minted as `up` mints its sidecars' ones.
    async fn bootstrap_token(&self, service: &str) -> String {
        let body = serde_json::json!({"service": service, "ttl_secs": 600, "uses": 1});
        let (status, body) = self
            .call(
                http::Method::POST,
                "/v1/identity/tokens",
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, 201, "a bootstrap token for {service}: {body}");
        body["token"].as_str().expect("token").to_string()
    }

    async fn registered(&self, service: &str) -> Vec<SocketAddr> {
        let path = format!("/v1/registry/instances?service={service}");
        let (status, body) = self.call(http::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|i| i["endpoint"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A new instance the test starts beside an old one: the same command lines on fresh ports,
/// a new sidecar id and its own bootstrap token. Killed when dropped.
struct Replacement {
    id: String,
    inbound: SocketAddr,
    admin: SocketAddr,
    sidecar_log: PathBuf,
    // Dropped sidecar first.
    _sidecar: Killed,
    _app: Killed,
}

/// Polls the admin-style `path` on `addr` until it answers 200; panics if `child` exits.
async fn until_ok(child: &mut Killed, addr: SocketAddr, path: &str, what: &str, log: &Path) {
    eventually(Duration::from_secs(30), what, || {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "{what}: it exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        async move { (client::admin_get(addr, path).await.0 == 200).then_some(()) }
    })
    .await;
}

impl Replacement {
    async fn start(old: &Instance, operator: &Operator, dir: &Path) -> Self {
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (app, outbound, inbound, admin) = (port(), port(), port(), port());
        let id = format!("{}-next", old.id);

        let mut app_changes = vec![("--listen", app.to_string())];
        if old.app.flag("--mesh").is_some() {
            app_changes.push(("--mesh", format!("http://{outbound}")));
        }
        let app_log = dir.join(format!("{id}.log"));
        let mut app_child = spawn_logged(&bin("shop"), &old.app.args_with(&app_changes), &app_log);
        // The app answers before its sidecar can register: a caller sent to the new instance
        // never finds it missing.
        until_ok(
            &mut app_child,
            app,
            "/healthz",
            "the new app to answer",
            &app_log,
        )
        .await;

        let token = dir.join(format!("{id}.bootstrap"));
        std::fs::write(&token, operator.bootstrap_token(&old.service).await).expect("token file");
        let sidecar_log = dir.join(format!("{id}-sidecar.log"));
        let args = old.sidecar.args_with(&[
            ("--sidecar-id", id.clone()),
            ("--bootstrap-token-file", token.display().to_string()),
            ("--app", app.to_string()),
            ("--outbound", outbound.to_string()),
            ("--inbound", inbound.to_string()),
            ("--admin", admin.to_string()),
        ]);
        let mut sidecar = spawn_logged(&bin("outrigger-proxy"), &args, &sidecar_log);
        until_ok(
            &mut sidecar,
            admin,
            "/ready",
            "the new sidecar to be ready",
            &sidecar_log,
        )
        .await;
        Self {
            id,
            inbound,
            admin,
            sidecar_log,
            _sidecar: sidecar,
            _app: app_child,
        }
    }
}

/// The admin addresses of the sidecars that send requests to `service`: the edge calls user,
/// catalog and order; order calls catalog, inventory and payment.
fn callers_of(service: &str, edge: SocketAddr, order: SocketAddr) -> Vec<SocketAddr> {
    match service {
        "user" | "order" => vec![edge],
        "catalog" => vec![edge, order],
        _ => vec![order],
    }
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the sidecars log it
/// (`2026-12-05T07:16:26.123Z`, or with microseconds).
fn unix_millis(ts: &str) -> Option<i64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let millis: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm): March-based years, 400-year eras.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((((days * 24 + h) * 60 + min) * 60 + s) * 1000 + millis)
}

#[test]
fn log_times_parse_to_unix_millis() {
    assert_eq!(unix_millis("1970-01-01T00:00:01.5Z"), Some(1500));
    assert_eq!(unix_millis("2000-03-01T00:00:00Z"), Some(951_868_800_000));
    assert_eq!(
        unix_millis("2026-12-05T07:16:26.123456Z"),
        Some(1_796_454_986_123)
    );
    assert_eq!(unix_millis("yesterday"), None);
}

/// Every JSON line of the log files in `files`.
fn json_lines(files: &[PathBuf]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An instance that left: where callers reached it, and its sidecar's log.
struct Left {
    id: String,
    inbound: SocketAddr,
    log: PathBuf,
}

/// Issue 12, point 1: a rolling restart of every shop service under `up`'s storefront load
/// loses nothing. For each of the seven instances in turn, as a rollout with surge does it: a
/// new instance starts on fresh ports and registers; once its callers have it, the old one
/// gets SIGTERM and leaves (readiness drops, it deregisters for good, serves while callers
/// learn, drains); then the next. The sidecar gets SIGTERM first and the app only once the
/// sidecar has drained, so the app serves every request its sidecar accepted (the shop's app
/// stops accepting at once on SIGTERM; a pod whose app gets SIGTERM together with its sidecar
/// needs a preStop hook for the same order). Then: no order and no browse request failed, the
/// replacements took the load, every old sidecar drained cleanly, and callers' access logs
/// show none of them picked an old instance later than 1 s after it deregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_shop_service_under_load_fails_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary_json = dir.path().join("summary.json");
    // No canary failures: a failed order must be the rollout's.
    let mut up = Up::start(&[
        "--orders-per-sec",
        "20",
        "--canary-error-rate",
        "0",
        "--summary-json",
        summary_json.to_str().expect("utf-8 temp path"),
    ])
    .await;
    let operator = Operator::of(&up);
    let (instances, edge) = shop_of(&up);
    let services: Vec<&str> = instances.iter().map(|i| i.service.as_str()).collect();
    assert_eq!(
        services,
        [
            "user",
            "catalog",
            "inventory",
            "payment",
            "payment",
            "payment",
            "order"
        ],
        "up's shop instances"
    );
    let mut order_admin = instances
        .iter()
        .find(|i| i.service == "order")
        .map(|i| i.sidecar.addr("--admin"))
        .expect("an order instance");

    let rollout = Instant::now();
    let mut replacements = Vec::new();
    let mut left = Vec::new();
    for old in &instances {
        let new = Replacement::start(old, &operator, dir.path()).await;
        eventually(
            Duration::from_secs(20),
            &format!("{} to register", new.id),
            || async {
                operator
                    .registered(&old.service)
                    .await
                    .contains(&new.inbound)
                    .then_some(())
            },
        )
        .await;
        // Only then may the old one go: otherwise a caller left with no endpoint answers 503.
        let endpoint = format!("\"{}\"", new.inbound);
        for caller in callers_of(&old.service, edge, order_admin) {
            eventually(
                Duration::from_secs(20),
                &format!("the sidecar with admin {caller} to have {}", new.id),
                || async {
                    client::admin_get(caller, "/config")
                        .await
                        .1
                        .contains(&endpoint)
                        .then_some(())
                },
            )
            .await;
        }

        kill(old.sidecar.pid, "TERM");
        eventually(
            LEAVE_WITHIN,
            &format!("{}'s sidecar to drain and exit", old.id),
            || async { (!running(old.sidecar.pid)).then_some(()) },
        )
        .await;
        kill(old.app.pid, "TERM");
        eventually(
            LEAVE_WITHIN,
            &format!("{}'s app to exit", old.id),
            || async { (!running(old.app.pid)).then_some(()) },
        )
        .await;
        up.assert_running();
        if old.service == "order" {
            order_admin = new.admin;
        }
        left.push(Left {
            id: old.id.clone(),
            inbound: old.sidecar.addr("--inbound"),
            log: up.logs().join(format!("{}-sidecar.log", old.id)),
        });
        replacements.push(new);
    }
    let rolled = rollout.elapsed();

    // The load moved to the new instances (none left idle by the rollout).
    for new in &replacements {
        eventually(
            Duration::from_secs(30),
            &format!("{} to serve requests", new.id),
            || async {
                let text = client::admin_get(new.admin, "/metrics").await.1;
                metric_value(
                    &text,
                    "outrigger_requests_total",
                    &[("direction", "inbound")],
                )
                .is_some_and(|n| n > 0.0)
                .then_some(())
            },
        )
        .await;
    }
    // What the callers absorbed on the way (retries, and connections a new sidecar refused
    // before its first snapshot), for the record: the summary below is what must hold.
    for (who, admin) in [("edge", edge), ("order", order_admin)] {
        let text = client::admin_get(admin, "/metrics").await.1;
        eprintln!(
            "{who} sidecar: retries {:?}, errors it answered itself {:?}",
            metric_value(&text, "outrigger_retries_total", &[]),
            metric_value(&text, "outrigger_proxy_errors_total", &[])
        );
    }
    for new in &replacements {
        let text = client::admin_get(new.admin, "/metrics").await.1;
        let refused = &[("direction", "inbound"), ("result", "error")];
        eprintln!(
            "{}: inbound handshakes refused {:?}",
            new.id,
            metric_value(&text, "outrigger_tls_handshakes_total", refused)
        );
    }
    let status = up.stop(Duration::from_secs(60)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "up stopped with {status:?}\n{}",
        up.log()
    );

    let summary: Value = serde_json::from_slice(&std::fs::read(&summary_json).expect("summary"))
        .expect("summary json");
    let (orders, browsing) = (&summary["orders"], &summary["browsing"]);
    eprintln!(
        "rolled 7 instances in {rolled:?}; orders {orders}; browsing {browsing}; logins {}",
        summary["logins"]
    );
    assert_eq!(orders["failed"], 0, "failed orders: {orders}\n{}", up.log());
    assert_eq!(
        browsing["failed"],
        0,
        "failed browse requests: {browsing}\n{}",
        up.log()
    );
    let placed = orders["succeeded"].as_u64().unwrap_or(0);
    assert!(placed >= MIN_ORDERS, "only {placed} orders: {orders}");

    // Every caller's outbound access log, old sidecars' and new ones' alike.
    let mut caller_logs: Vec<PathBuf> = std::fs::read_dir(up.logs())
        .expect("up's logs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-sidecar.log"))
        .collect();
    caller_logs.extend(replacements.iter().map(|r| r.sidecar_log.clone()));
    let picks = json_lines(&caller_logs);
    for gone in &left {
        let own = std::fs::read_to_string(&gone.log).unwrap_or_default();
        assert!(
            own.contains("drained; exiting"),
            "{} did not drain cleanly:\n{own}",
            gone.id
        );
        let deregistered = json_lines(std::slice::from_ref(&gone.log))
            .iter()
            .filter(|l| l["message"] == "deregistered from the control plane")
            .find_map(|l| unix_millis(l["timestamp"].as_str()?))
            .unwrap_or_else(|| panic!("{} never deregistered:\n{own}", gone.id));
        let upstream = gone.inbound.to_string();
        let last_pick = picks
            .iter()
            .filter(|l| l["direction"] == "outbound" && l["upstream"] == upstream.as_str())
            .filter_map(|l| unix_millis(l["timestamp"].as_str()?))
            .max()
            .unwrap_or_else(|| panic!("no caller ever picked {} ({upstream})", gone.id));
        let after = last_pick - deregistered;
        eprintln!("{}: last picked {after} ms after it deregistered", gone.id);
        assert!(
            after <= CALLERS_STOP_WITHIN_MS,
            "callers still picked {} {after} ms after it deregistered",
            gone.id
        );
    }
}
