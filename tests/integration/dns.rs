//! DNS names wherever an address goes: endpoints in the sidecar file, `--upstream`, `--app` and
//! the control plane's URL. Names are resolved in the background and again every 5 s, and each
//! address is an endpoint of its own.
//!
//! Every name here is in an /etc/hosts, so no lookup leaves the machine: `localhost` is in
//! everyone's, and the test of a name with two addresses gives the proxy an /etc/hosts of its
//! own, bind-mounted in a mount namespace of its own (`unshare`, as root), leaving the
//! machine's untouched.

use outrigger_tests::client;
use outrigger_tests::control::{Control, CHECKOUT_CALLS_PAYMENT};
use outrigger_tests::proxy::{render, Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use outrigger_tests::{bin, eventually, free_port};
use std::collections::HashSet;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Starts `outrigger-proxy` with `args` and an admin listener. With `hosts`, the proxy runs in
/// a mount namespace of its own in which that file is /etc/hosts: the system resolver reads it
/// on every lookup, so rewriting it in place changes what the name resolves to.
fn spawn(
    args: &[String],
    hosts: Option<&Path>,
    listeners: (Option<SocketAddr>, Option<SocketAddr>),
    config_path: Option<PathBuf>,
    dir: tempfile::TempDir,
) -> Proxy {
    let admin = loopback();
    let proxy = bin("outrigger-proxy");
    let mut cmd = match hosts {
        None => Command::new(&proxy),
        Some(hosts) => {
            // unshare makes the new namespace's mounts private, so the bind mount never
            // reaches the machine's; `exec` leaves one process, the proxy, under the pid held.
            let mut c = Command::new("unshare");
            c.args([
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$0" /etc/hosts && exec "$@""#,
            ]);
            c.arg(hosts).arg(&proxy);
            c
        }
    };
    cmd.args(args)
        .args(["--admin", &admin.to_string(), "--threads", "2"]);
    let out = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file");
    let err = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
    cmd.stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .stdin(Stdio::null());
    for key in [
        "OUTRIGGER_TOKEN",
        "OUTRIGGER_BOOTSTRAP_TOKEN",
        "OUTRIGGER_TRUST_ANCHORS",
    ] {
        cmd.env_remove(key);
    }
    let child = cmd.spawn().expect("start outrigger-proxy");
    Proxy {
        child,
        admin,
        outbound: listeners.0,
        inbound: listeners.1,
        dir,
        config_path,
    }
}

/// One GET through `listener` with `host`: the status and which upstream answered.
async fn served_by(listener: SocketAddr, host: &str) -> (u16, String) {
    let req = client::request("GET", &format!("http://{listener}/"))
        .header("host", host)
        .body(client::empty())
        .expect("request");
    let res = client::send(&client::h1(), req).await;
    let who = res
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (res.status().as_u16(), who)
}

fn snapshot(address: &str, extra: &str) -> String {
    format!(
        "service: order\ndestinations:\n  - name: payment\n    endpoints:\n      - address: {address}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_and_endpoint_addresses_may_be_host_names() {
    let app = Upstream::start("app").await;
    let named = format!("localhost:{}", app.addr.port());

    // Quick start: `--upstream NAME:PORT`.
    let listen = loopback();
    let args = [
        "--listen".to_string(),
        listen.to_string(),
        "--upstream".into(),
        named.clone(),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let quick = spawn(&args, None, (Some(listen), None), None, dir)
        .ready()
        .await;
    // Ready only once the name has its first answer: the first request finds the app.
    assert_eq!(
        served_by(listen, "anything").await,
        (200, "app".to_string())
    );
    let changed = quick
        .metric("outrigger_dns_resolutions_total", &[("result", "changed")])
        .await;
    assert_eq!(changed, Some(1.0), "{}", quick.metrics().await);

    // The sidecar file: an endpoint `address: NAME:PORT`.
    let file = ProxyBuilder::file(&snapshot(&named, ""), "")
        .spawn()
        .ready()
        .await;
    let out = file.outbound();
    assert_eq!(served_by(out, "payment").await, (200, "app".to_string()));

    // A host that is no DNS name is refused with its place and reason, and the last good
    // config serves on.
    file.write_config(&render(
        out,
        file.inbound(),
        &snapshot("pay_ment:80", ""),
        "",
    ));
    eventually(
        Duration::from_secs(10),
        "the bad name to be rejected",
        || async {
            let rejected = file
                .metric("outrigger_config_rejected_total", &[("source", "file")])
                .await;
            (rejected == Some(1.0)).then_some(())
        },
    )
    .await;
    let wanted = "snapshot.destinations[0].endpoints[0].address (line 9, column 20)";
    eventually(Duration::from_secs(5), "the reason in the log", || async {
        let log = file.stderr();
        (log.contains(wanted) && log.contains("is not a DNS name")).then_some(())
    })
    .await;
    assert_eq!(served_by(out, "payment").await, (200, "app".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_of_a_name_is_an_endpoint_and_changes_are_followed() {
    // Two upstreams on one port, told apart by address: 127.0.0.1 and 127.0.0.2.
    let one = Upstream::start("one").await;
    let port = one.addr.port();
    let two = Upstream::start_on("two", SocketAddr::from(([127, 0, 0, 2], port))).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    let first = "127.0.0.1 twins.outrigger.test\n";
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{first}127.0.0.2 twins.outrigger.test\n"),
    )
    .expect("hosts file");
    let (outbound, inbound) = (loopback(), loopback());
    // Round robin, so that two endpoints show in any two requests in a row.
    let config = render(
        outbound,
        inbound,
        &snapshot(
            &format!("twins.outrigger.test:{port}"),
            "    load_balancer: round-robin\n",
        ),
        "",
    );
    let config_path = dir.path().join("sidecar.yaml");
    std::fs::write(&config_path, config).expect("config");
    let args = ["--config".to_string(), config_path.display().to_string()];
    let proxy = spawn(
        &args,
        Some(&hosts),
        (Some(outbound), Some(inbound)),
        Some(config_path),
        dir,
    )
    .ready()
    .await;

    let seen = eventually(
        Duration::from_secs(10),
        "both addresses to answer",
        || async {
            let mut seen = HashSet::new();
            for _ in 0..4 {
                let (status, who) = served_by(outbound, "payment").await;
                if status == 200 {
                    seen.insert(who);
                }
            }
            (seen.len() == 2).then_some(seen)
        },
    )
    .await;
    assert_eq!(seen, HashSet::from(["one".to_string(), "two".to_string()]));

    // 127.0.0.1 leaves the name. One byte, written in place: the bind mount holds the file's
    // inode, and the name never leaves the file, so no lookup falls through to DNS.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&hosts)
        .expect("open hosts");
    f.seek(SeekFrom::Start("127.0.0.1 localhost\n".len() as u64))
        .expect("seek");
    f.write_all(b"#").expect("comment the line out");
    drop(f);
    let before = two.requests();
    eventually(
        Duration::from_secs(20),
        "every request to go to 127.0.0.2 (a refresh is 5 s)",
        || async {
            for _ in 0..6 {
                let (status, who) = served_by(outbound, "payment").await;
                assert_eq!(status, 200, "the change costs no request");
                if who != "two" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    assert!(two.requests() >= before + 6);
    let changed = proxy
        .metric("outrigger_dns_resolutions_total", &[("result", "changed")])
        .await;
    assert_eq!(changed, Some(2.0), "{}", proxy.metrics().await);
    // The config itself still names the name.
    let (_, config) = proxy.admin_get("/config").await;
    assert!(
        config.contains(&format!("twins.outrigger.test:{port}")),
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_url_and_the_app_may_be_host_names() {
    let control = Control::start().await;
    assert_eq!(control.apply(CHECKOUT_CALLS_PAYMENT).await.0, 200);
    let app = Upstream::start("payment-app").await;

    // `https://localhost:PORT`: resolved on connect, and `localhost` is the name the control
    // plane's certificate must carry (it does by default).
    let url = control.url().replace("127.0.0.1", "localhost");
    assert!(url.starts_with("https://localhost:"), "{url}");
    let token = control.bootstrap_token_file("payment").await;
    let (outbound, inbound) = (loopback(), loopback());
    let args: Vec<String> = vec![
        "--control-plane".into(),
        url,
        "--trust-anchors".into(),
        control.trust_anchors().display().to_string(),
        "--bootstrap-token-file".into(),
        token.display().to_string(),
        "--service".into(),
        "payment".into(),
        "--outbound".into(),
        outbound.to_string(),
        "--inbound".into(),
        inbound.to_string(),
        "--app".into(),
        format!("localhost:{}", app.addr.port()),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let payment = spawn(&args, None, (Some(outbound), Some(inbound)), None, dir)
        .ready()
        .await;

    // A caller reaches the app through payment's sidecar, which found it by name.
    let checkout = ProxyBuilder::control_plane(&control, "checkout", "v1", None)
        .await
        .spawn()
        .ready()
        .await;
    eventually(
        Duration::from_secs(20),
        "checkout to reach payment's app through its sidecar",
        || async {
            (served_by(checkout.outbound(), "payment").await == (200, "payment-app".to_string()))
                .then_some(())
        },
    )
    .await;

    // What other sidecars dial stays an IP: the inbound listener, with the app's port beside.
    let (_, instances) = control.get("/v1/registry/instances?service=payment").await;
    let instance = &instances[0];
    assert_eq!(instance["endpoint"], inbound.to_string(), "{instances}");
    assert_eq!(instance["ports"]["app"], app.addr.port(), "{instances}");
    drop(payment); // held to here: the caller's requests go through it
}
