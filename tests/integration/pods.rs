//! Issue 14, points 2, 4 and 6 (first cases): pods joined by a bridge the test makes, each
//! with its sidecar (uid 1337) fed by a real control plane on the bridge, apps unchanged.
//!
//! - A real Redis in the `redis` pod is reached from the `client` pod by name
//!   (`redis-cli -h redis`): the name is the service's virtual IP in the pod's hosts file, the
//!   pod's rules redirect the connect to its sidecar, which carries the opaque bytes over
//!   mTLS to the redis pod's sidecar, which hands them to Redis on loopback.
//! - Plain HTTP (`curl http://web:8080/`) is routed by the client's sidecar and crosses to the
//!   web pod over mTLS.
//! - Two real SMTP servers (server-first) in the `mail` pod: on the port the service marks
//!   opaque the greeting crosses both sidecars in a few milliseconds; on a declared port that
//!   is not opaque, after the detection timeout (300 ms), never Linkerd's 10 s.
//! - TLS the app does itself (`openssl s_client`) to a pod outside the mesh is passed through,
//!   its SNI logged.
//! - An identity the redis service does not allow is refused there.
//!
//! Guard rails (`outrigger_tests::netns::PodNet`): the pod subnet may leave by the bridge only,
//! checked with `ip route get` before anything is sent; all of it is removed on drop.

use outrigger_tests::bin;
use outrigger_tests::control::Control;
use outrigger_tests::netns::{stdout, Netns, PodNet, Running};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

const MESH: &str = "\
kind: Service
metadata: {name: client}
spec: {calls: [redis, mail, web]}
---
kind: Service
metadata: {name: redis}
spec:
  virtual_ip: 10.96.0.20
  ports: [{port: 6379, opaque: true}]
---
kind: Policy
metadata: {name: redis-callers}
spec: {service: redis, allow: [client]}
---
kind: Service
metadata: {name: mail}
spec:
  virtual_ip: 10.96.0.25
  ports: [{port: 2525, opaque: true}, {port: 2526}]
---
kind: Service
metadata: {name: web}
spec: {virtual_ip: 10.96.0.40}
";
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/intercept/peer.py");

/// A sidecar in `pod` for `service`, as uid 1337, from files that uid can read in `dir`.
async fn sidecar(
    pod: &Netns,
    control: &Control,
    dir: &Path,
    service: &str,
    app: Option<&str>,
) -> Running {
    let token = dir.join(format!("{service}.token"));
    std::fs::write(&token, control.bootstrap_token(service).await)
        .unwrap_or_else(|e| panic!("{e}"));
    let anchors = dir.join("anchors.pem");
    std::fs::write(&anchors, control.anchors_pem()).unwrap_or_else(|e| panic!("{e}"));
    let log =
        std::fs::File::create(dir.join(format!("{service}.log"))).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = pod.command("setpriv");
    cmd.args(["--reuid=1337", "--regid=1337", "--clear-groups", "--"])
        .arg(bin("outrigger-proxy"))
        .args(["--control-plane", &control.url(), "--service", service])
        .arg("--trust-anchors")
        .arg(&anchors)
        .arg("--bootstrap-token-file")
        .arg(&token)
        .args([
            "--outbound",
            "127.0.0.1:15001",
            "--inbound",
            "0.0.0.0:15006",
        ]);
    if let Some(app) = app {
        cmd.args(["--app", app]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("outrigger-proxy: {e}"));
    let killed = Running::new(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = pod.exec(
            "curl",
            &["-sf", "-o", "/dev/null", "http://127.0.0.1:15000/ready"],
        );
        if ready.status.success() {
            return killed;
        }
        if Instant::now() > deadline {
            let log =
                std::fs::read_to_string(dir.join(format!("{service}.log"))).unwrap_or_default();
            panic!("the {service} sidecar never became ready; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn greet_ms(pod: &Netns, host: &str, port: &str) -> f64 {
    let out = pod.exec("python3", &[PEER, "greet", host, port]);
    assert!(
        out.status.success(),
        "greet {host}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
        .parse()
        .unwrap_or_else(|e| panic!("greet {host}:{port}: {e}: {}", stdout(&out)))
}

fn redis_cli(pod: &Netns, args: &[&str]) -> String {
    redis_cli_at(pod, "redis", args)
}

fn redis_cli_at(pod: &Netns, host: &str, args: &[&str]) -> String {
    let mut all = vec!["-h", host, "--no-raw"];
    all.extend_from_slice(args);
    let out = pod.exec("redis-cli", &all);
    format!(
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_in_pods_reach_redis_smtp_and_tls_unchanged_through_their_sidecars() {
    let mut net = PodNet::create("10.204.7");
    let hosts = "10.96.0.20 redis redis.shop.svc.cluster.local\n10.96.0.25 mail\n10.96.0.40 web\n10.204.7.6 outside.example\n";
    let (client_pod, _) = net.pod("orr-client", "10.96.0.0/16", hosts);
    let (redis_pod, redis_ip) = net.pod("orr-redis", "10.96.0.0/16", hosts);
    let (intruder_pod, _) = net.pod("orr-intruder", "10.96.0.0/16", hosts);
    let (mail_pod, _) = net.pod("orr-mail", "10.96.0.0/16", hosts);
    // Outside the mesh: no sidecar, not a service.
    let (outside_pod, outside_ip) = net.pod("orr-outside", "10.96.0.0/16", hosts);
    assert_eq!(outside_ip, "10.204.7.6");
    let (web_pod, _) = net.pod("orr-web", "10.96.0.0/16", hosts);
    for pod in [&client_pod, &intruder_pod] {
        pod.init(&[]);
    }

    let control_addr: SocketAddr = format!("{}:15010", net.host())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let control = Control::start_at(control_addr, &[]).await;
    let (status, body) = control.apply(MESH).await;
    assert_eq!(status, 200, "{body}");
    // intruder is a service of the mesh too, but not one redis allows.
    let (status, body) = control
        .apply("kind: Service\nmetadata: {name: intruder}\nspec: {calls: [redis]}\n")
        .await;
    assert_eq!(status, 200, "{body}");

    let _redis = Running::new(
        redis_pod
            .command("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}")),
    );
    let dir = tempfile::Builder::new()
        .prefix("orr-pods")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let _redis_sidecar = sidecar(
        &redis_pod,
        &control,
        dir.path(),
        "redis",
        Some("127.0.0.1:6379"),
    )
    .await;
    let _client_sidecar = sidecar(&client_pod, &control, dir.path(), "client", None).await;
    let _intruder_sidecar = sidecar(&intruder_pod, &control, dir.path(), "intruder", None).await;
    // Two real SMTP servers (Python's smtpd), which speak first.
    let _smtp: Vec<Running> = ["127.0.0.1:2525", "127.0.0.1:2526"]
        .iter()
        .map(|addr| {
            Running::new(
                mail_pod
                    .command("python3")
                    .args([
                        "-W",
                        "ignore",
                        "-m",
                        "smtpd",
                        "-n",
                        "-c",
                        "DebuggingServer",
                        addr,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("smtpd: {e}")),
            )
        })
        .collect();
    let _mail_sidecar = sidecar(
        &mail_pod,
        &control,
        dir.path(),
        "mail",
        Some("127.0.0.1:2525"),
    )
    .await;
    let _web = Running::new(
        web_pod
            .command("python3")
            .args(["-m", "http.server", "8080", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("http.server: {e}")),
    );
    let web_sidecar = sidecar(
        &web_pod,
        &control,
        dir.path(),
        "web",
        Some("127.0.0.1:8080"),
    )
    .await;
    // A TLS server outside the mesh.
    let (cert, key) = (
        dir.path().join("outside.pem"),
        dir.path().join("outside.key"),
    );
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-subj", "/CN=outside.example", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("openssl req: {e}"));
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let _tls_server = Running::new(
        outside_pod
            .command("openssl")
            .args(["s_server", "-quiet", "-accept", "8443", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("openssl s_server: {e}")),
    );

    // The client's sidecar learns redis's endpoint from the control plane.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answer = String::new();
    while Instant::now() < deadline {
        answer = redis_cli(&client_pod, &["SET", "greeting", "through two sidecars"]);
        if answer == "OK" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, "OK", "redis-cli SET from the client pod");
    assert_eq!(
        redis_cli(&client_pod, &["GET", "greeting"]),
        "\"through two sidecars\""
    );
    assert!(
        client_pod.metric(
            "outrigger_tcp_connections_total",
            "destination=\"redis\",direction=\"outbound\""
        ) >= 2.0,
        "the client's sidecar carried the connections"
    );
    assert!(
        redis_pod.metric(
            "outrigger_tcp_connections_total",
            "destination=\"redis\",direction=\"inbound\""
        ) >= 2.0,
        "the redis sidecar received them over mTLS"
    );
    assert!(
        redis_pod.metric(
            "outrigger_tls_handshakes_total",
            "direction=\"inbound\",result=\"ok\""
        ) >= 2.0,
        "inbound mTLS handshakes"
    );

    // The instance's own address (an endpoint, not the virtual IP) reaches that instance,
    // through both sidecars over mTLS all the same.
    let inbound_before = redis_pod.metric(
        "outrigger_tcp_connections_total",
        "destination=\"redis\",direction=\"inbound\"",
    );
    assert_eq!(
        redis_cli_at(&client_pod, &redis_ip, &["GET", "greeting"]),
        "\"through two sidecars\"",
        "redis-cli -h {redis_ip} (the redis pod's address)"
    );
    assert_eq!(
        redis_pod.metric(
            "outrigger_tcp_connections_total",
            "destination=\"redis\",direction=\"inbound\""
        ),
        inbound_before + 1.0,
        "dialling the endpoint went through the redis sidecar"
    );

    eprintln!(
        "opaque TCP: client sidecar {} outbound, redis sidecar {} inbound connections",
        client_pod.metric(
            "outrigger_tcp_connections_total",
            "destination=\"redis\",direction=\"outbound\""
        ),
        redis_pod.metric(
            "outrigger_tcp_connections_total",
            "destination=\"redis\",direction=\"inbound\""
        )
    );

    // HTTP between pods: the app's plain `curl http://web:8080/` is intercepted, routed by
    // Host and carried over mTLS to the web pod's sidecar.
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let out = client_pod.exec(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://web:8080/",
            ],
        );
        let code = stdout(&out);
        if code == "200" || Instant::now() > deadline {
            break code;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(page, "200", "curl http://web:8080/ from the client pod");
    assert!(
        web_pod.metric(
            "outrigger_inbound_requests_by_security_total",
            "security=\"mtls\""
        ) >= 1.0,
        "the web pod's sidecar took the request over mTLS"
    );
    assert!(
        client_pod.metric(
            "outrigger_intercepted_connections_total",
            "outcome=\"routed\",protocol=\"http1\""
        ) >= 1.0
    );
    drop(web_sidecar);

    // A server-first protocol through both sidecars: on its opaque port the greeting comes
    // at once; on a port the service declares but not as opaque, after detection gives up.
    let opaque = greet_ms(&client_pod, "mail", "2525");
    let detected = greet_ms(&client_pod, "mail", "2526");
    eprintln!(
        "SMTP greeting through two sidecars: opaque port {opaque} ms, detected port {detected} ms"
    );
    assert!(
        opaque < 150.0,
        "the opaque port's greeting took {opaque} ms"
    );
    assert!(
        (300.0..1300.0).contains(&detected),
        "the detected port's greeting took {detected} ms"
    );

    // TLS the app does itself, to a host outside the mesh: passed through, its SNI logged.
    let deadline = Instant::now() + Duration::from_secs(10);
    let handshake = loop {
        let out = client_pod.exec(
            "sh",
            &["-c", "echo | openssl s_client -connect outside.example:8443 -servername outside.example 2>&1"],
        );
        let text = stdout(&out);
        if text.contains("CN = outside.example") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(handshake.contains("CN = outside.example"), "{handshake}");
    assert!(
        client_pod.metric(
            "outrigger_intercepted_connections_total",
            "outcome=\"passthrough\",protocol=\"tls\""
        ) >= 1.0
    );
    let log = std::fs::read_to_string(dir.path().join("client.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("sni") && l.contains("outside.example")),
        "the client sidecar's log names the SNI:\n{log}"
    );

    // The attacker: a sidecar of the mesh whose service redis does not allow.
    let refused = redis_cli(&intruder_pod, &["GET", "greeting"]);
    assert!(
        !refused.contains("through two sidecars"),
        "the intruder read redis: {refused}"
    );
    assert!(
        redis_pod.metric("outrigger_authz_denied_total", "service=\"redis\"") >= 1.0,
        "the redis sidecar refused the intruder's identity"
    );
}
