//! Issue 14, points 2 and 3 (first part): connections an app makes without knowing of the
//! sidecar, redirected to it by nat rules, go where the app meant, told apart by protocol.
//!
//! One network namespace the test makes, with only `lo`, which also carries the destinations'
//! addresses: no veth, no route out, so nothing in it can reach past this
//! machine. In it run the servers, the sidecar as uid 1337, and the apps (curl, python),
//! unchanged: `http://payment/` resolves through the namespace's hosts file. The init step
//! (`outrigger-proxy init`) redirects every TCP connect but the proxy uid's and loopback's.

use outrigger_tests::bin;
use outrigger_tests::netns::{readable_tempdir, stdout, Netns, Running};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/intercept/peer.py");
const DETECT_TIMEOUT_MS: f64 = 300.0;

/// The sidecar, as uid 1337, from a config file that uid can read.
fn start_proxy(ns: &Netns, dir: &Path, policy: &str) -> Running {
    let config = dir.join(format!("sidecar-{policy}.yaml"));
    std::fs::write(
        &config,
        format!(
            "proxy:\n  outbound: 127.0.0.1:15001\n  inbound: null\n  admin: 127.0.0.1:15000\n  \
             interception: {{detect_timeout: {DETECT_TIMEOUT_MS}ms, opaque_ports: [3306], outbound_policy: {policy}}}\n\
             snapshot:\n  service: shop\n  destinations:\n    - name: payment\n      \
             hosts: [payment, payment.shop.svc.cluster.local]\n      \
             endpoints: [{{address: \"10.203.1.10:80\"}}]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::File::create(dir.join(format!("proxy-{policy}.log")))
        .unwrap_or_else(|e| panic!("{e}"));
    let child = ns
        .command("setpriv")
        .args(["--reuid=1337", "--regid=1337", "--clear-groups", "--"])
        .arg(bin("outrigger-proxy"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("outrigger-proxy: {e}"));
    Running::new(child)
}

async fn wait_ready(ns: &Netns, dir: &Path, policy: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns.exec(
            "curl",
            &["-sf", "-o", "/dev/null", "http://127.0.0.1:15000/ready"],
        );
        if out.status.success() {
            return;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join(format!("proxy-{policy}.log")))
                .unwrap_or_default();
            panic!("the sidecar never became ready; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn greet_ms(ns: &Netns, port: &str) -> f64 {
    let out = ns.exec("python3", &[PEER, "greet", "10.203.1.20", port]);
    assert!(
        out.status.success(),
        "greet {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
        .parse()
        .unwrap_or_else(|e| panic!("greet {port}: {e}: {}", stdout(&out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_connections_reach_what_the_app_dialled_by_protocol() {
    let ns = Netns::create(
        &format!("orr-ic-{}", std::process::id()),
        "10.203.1.10 payment payment.shop.svc.cluster.local\n10.203.1.20 outside.example\n",
    );
    // The destinations live on `lo` (this kernel has no dummy interfaces): reachable inside
    // the namespace, routed nowhere else.
    for a in ["10.203.1.10/32", "10.203.1.20/32"] {
        ns.ip(&["addr", "add", a, "dev", "lo"]);
    }
    ns.init(&[]);

    let mut serve = ns.command("python3");
    serve.args([PEER, "serve"]);
    let _servers = Running::until_ready(serve);

    let dir = readable_tempdir("orr-intercept");
    let proxy = start_proxy(&ns, dir.path(), "allow-any");
    wait_ready(&ns, dir.path(), "allow-any").await;

    // The app calls the service by name, unchanged: the mesh serves it (it counts the request) and the proxy's own connect to the endpoint is not redirected back to it.
    let out = ns.exec("curl", &["-s", "-i", "http://payment/charge"]);
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("payment-app saw Host payment"), "{text}");

    assert_eq!(
        ns.metric(
            "outrigger_intercepted_connections_total",
            "outcome=\"routed\",protocol=\"http1\""
        ),
        1.0
    );
    assert_eq!(
        ns.metric("outrigger_requests_total", "direction=\"outbound\",dst_service=\"payment\",dst_version=\"\",route=\"default\",service=\"shop\",status_code=\"200\"")
            .max(ns.metric("outrigger_requests_total", "direction=\"outbound\",dst_service=\"payment\",dst_version=\"v1\",route=\"default\",service=\"shop\",status_code=\"200\"")),
        1.0,
        "one request, not a loop"
    );

    // HTTP to a host outside the mesh passes through untouched.
    let out = ns.exec("curl", &["-s", "-i", "http://outside.example:8080/"]);
    let text = stdout(&out);
    assert!(
        text.contains("outside saw Host outside.example:8080"),
        "{text}"
    );
    assert_eq!(
        ns.metric(
            "outrigger_intercepted_connections_total",
            "outcome=\"passthrough\",protocol=\"http1\""
        ),
        1.0
    );

    // Opaque bytes to an unknown destination, with a half-close, come back whole.
    let out = ns.exec("python3", &[PEER, "echo", "10.203.1.20", "7000"]);
    assert_eq!(
        stdout(&out),
        "opaque bytes \u{0}\u{1}\u{2}",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ns.metric(
            "outrigger_intercepted_connections_total",
            "outcome=\"passthrough\",protocol=\"opaque\""
        ),
        1.0
    );
    assert!(
        ns.metric(
            "outrigger_tcp_bytes_total",
            "destination=\"passthrough\",direction=\"outbound\",flow=\"sent\""
        ) >= 16.0
    );

    // A server-first protocol: on a port marked opaque, no delay; elsewhere, only the
    // detection timeout, never Linkerd's 10 s.
    let opaque = greet_ms(&ns, "3306");
    let detected = greet_ms(&ns, "7001");
    eprintln!("server-first greeting: opaque port {opaque} ms, detected port {detected} ms");
    assert!(
        opaque < DETECT_TIMEOUT_MS / 2.0,
        "an opaque port waited {opaque} ms for detection"
    );
    assert!(
        (DETECT_TIMEOUT_MS..DETECT_TIMEOUT_MS + 1000.0).contains(&detected),
        "a server-first protocol on an undeclared port waited {detected} ms"
    );

    // Registry-only: what no service claims is refused, what the mesh routes still works.
    drop(proxy);
    let _proxy = start_proxy(&ns, dir.path(), "registry-only");
    wait_ready(&ns, dir.path(), "registry-only").await;
    let out = ns.exec("python3", &[PEER, "echo", "10.203.1.20", "7000"]);
    assert!(
        stdout(&out).is_empty() || !out.status.success(),
        "passed through under registry-only: {}",
        stdout(&out)
    );
    assert_eq!(
        ns.metric(
            "outrigger_intercepted_connections_total",
            "outcome=\"refused\",protocol=\"opaque\""
        ),
        1.0
    );
    let out = ns.exec("curl", &["-s", "http://payment/"]);
    assert!(stdout(&out).contains("payment-app"), "{}", stdout(&out));
    let _ = std::io::stderr().flush();
}
