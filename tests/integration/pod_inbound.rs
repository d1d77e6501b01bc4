//! Issue 14 point 2, inbound: a plaintext caller outside the mesh dials one of a pod's app
//! ports. The pod's rules redirect it to the sidecar's inbound listener, which reads
//! `SO_ORIGINAL_DST` to learn the port: HTTP to the app's own port is served as HTTP (and
//! counted as an inbound request), anything else reaches that port of the app as TCP. Before,
//! every redirected connection was served as HTTP to the one app address, so a second port
//! got a 400 in place of its protocol.
//!
//! Two pods on a bridge the test makes (guard rails in `PodNet`): `web` with the app, its
//! init rules and its sidecar (a static config, mTLS off, as uid 1337), and `caller` with no
//! sidecar.

use outrigger_tests::bin;
use outrigger_tests::netns::{readable_tempdir, stdout, Netns, PodNet, Running};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/intercept/peer.py");

fn sidecar(pod: &Netns, dir: &Path) -> Running {
    let config = dir.join("web.yaml");
    std::fs::write(
        &config,
        "proxy:\n  outbound: 127.0.0.1:15001\n  inbound: 0.0.0.0:15006\n  admin: 127.0.0.1:15000\n  \
         interception: {detect_timeout: 1s, opaque_ports: [7001]}\n\
         snapshot:\n  service: web\n  inbound: {app: \"127.0.0.1:8080\"}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::File::create(dir.join("web.log")).unwrap_or_else(|e| panic!("{e}"));
    let child = pod
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_callers_reach_the_app_port_they_dialled() {
    let mut net = PodNet::create("10.204.9");
    let (web, web_ip) = net.pod("orr-inweb", "10.96.0.0/16", "");
    let (caller, _) = net.pod("orr-incall", "10.96.0.0/16", "");
    web.init(&[]);

    let mut serve = web.command("python3");
    serve.args([PEER, "serve-app"]);
    let _app = Running::until_ready(serve);

    let dir = readable_tempdir("orr-pod-inbound");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _sidecar = sidecar(&web, dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !web
        .exec(
            "curl",
            &["-sf", "-o", "/dev/null", "http://127.0.0.1:15000/ready"],
        )
        .status
        .success()
    {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("web.log")).unwrap_or_default();
            panic!("the sidecar never became ready; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // HTTP to the app's port: served by the sidecar as an inbound request.
    let url = format!("http://{web_ip}:8080/hello");
    let out = caller.exec("curl", &["-s", "-i", &url]);
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("web-app saw Host"), "{text}");
    let inbound_ok = "direction=\"inbound\",dst_service=\"web\",dst_version=\"\",route=\"inbound\",service=\"web\",status_code=\"200\"";
    let text = stdout(&web.exec("curl", &["-s", "http://127.0.0.1:15000/metrics"]));
    assert!(
        text.lines()
            .any(|l| l.starts_with("outrigger_requests_total{")
                && l.contains("direction=\"inbound\"")
                && l.contains("status_code=\"200\"")
                && l.ends_with(" 1")),
        "one inbound request counted ({inbound_ok}):\n{text}"
    );

    // Another port of the app, not HTTP: reached as TCP, bytes and half-close intact.
    let out = caller.exec("python3", &[PEER, "echo", &web_ip, "7000"]);
    assert_eq!(
        stdout(&out),
        "opaque bytes \u{0}\u{1}\u{2}",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        web.metric(
            "outrigger_tcp_connections_total",
            "destination=\"web\",direction=\"inbound\""
        ),
        1.0
    );

    // A server-first protocol on a port marked opaque: the greeting comes through the sidecar
    // at once, with no detection wait.
    let out = caller.exec("python3", &[PEER, "greet", &web_ip, "7001"]);
    let ms: f64 = stdout(&out)
        .parse()
        .unwrap_or_else(|e| panic!("greet: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        ms < 500.0,
        "an opaque inbound port waited {ms} ms (detection waits 1 s)"
    );
    assert_eq!(
        web.metric(
            "outrigger_tcp_connections_total",
            "destination=\"web\",direction=\"inbound\""
        ),
        2.0,
        "the greeting went through the sidecar"
    );
}
