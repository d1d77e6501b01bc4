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
use outrigger_tests::netns::{stdout, Netns, PodNet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/intercept/peer.py");

/// A process in a pod, killed when dropped; its stdin, when kept, stays open until then.
struct Running {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    Running {
        child,
        _stdin: None,
    }
}

fn metric(pod: &Netns, name: &str, labels: &str) -> f64 {
    let text = stdout(&pod.exec("curl", &["-s", "http://127.0.0.1:15000/metrics"]));
    let needle = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_callers_reach_the_app_port_they_dialled() {
    let mut net = PodNet::create("10.204.9");
    let (web, web_ip) = net.pod("orr-inweb", "10.96.0.0/16", "");
    let (caller, _) = net.pod("orr-incall", "10.96.0.0/16", "");
    web.init(&[]);

    let mut app = web
        .command("python3")
        .args([PEER, "serve-app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("peer.py serve-app: {e}"));
    let stdin = app.stdin.take();
    let mut ready = String::new();
    if let Some(out) = app.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut ready);
    }
    let _app = Running {
        child: app,
        _stdin: stdin,
    };
    assert_eq!(ready.trim(), "ready", "the app did not start");

    let dir = tempfile::Builder::new()
        .prefix("orr-pod-inbound")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
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
        metric(
            &web,
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
        metric(
            &web,
            "outrigger_tcp_connections_total",
            "destination=\"web\",direction=\"inbound\""
        ),
        2.0,
        "the greeting went through the sidecar"
    );
}
