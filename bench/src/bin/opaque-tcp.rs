//! Opaque TCP through the mesh, measured in pods (issue 14 point 8): throughput and sidecar CPU
//! per GiB sent directly, through one sidecar (passthrough to an address no service claims)
//! and through two (the service's virtual IP: mTLS between the sidecars), and the time
//! protocol detection adds per connection.
//!
//! Run as root, from the workspace, after `cargo build --release --bins`:
//!   OUTRIGGER_TEST_PROFILE=release target/release/opaque-tcp [GIB] [CONNECTIONS] [ROUNDS]
//! It makes its pods with the tests' harness (`outrigger_tests::netns`): a bridge of its own
//! and guard rails, all removed at the end. The subcommands `sink`, `echo`, `send` and `ping`
//! are what it runs inside the pods.

use anyhow::{bail, Context, Result};
use outrigger_tests::control::Control;
use outrigger_tests::netns::{stdout, Netns, PodNet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MESH: &str = "\
kind: Service
metadata: {name: client}
spec: {calls: [server]}
---
kind: Service
metadata: {name: server}
spec:
  virtual_ip: 10.96.0.30
  ports: [{port: 5201, opaque: true}, {port: 5202, opaque: true}, {port: 5203}]
";
const CHUNK: usize = 256 * 1024;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sink") => sink(args.get(1).context("sink PORT")?),
        Some("echo") => echo(args.get(1).context("echo PORT")?),
        Some("send") => send(
            args.get(1).context("send ADDR BYTES")?,
            args.get(2).context("send ADDR BYTES")?.parse()?,
        ),
        Some("ping") => ping(
            args.get(1).context("ping ADDR N")?,
            args.get(2).context("ping ADDR N")?.parse()?,
        ),
        _ => {
            let gib: f64 = args.first().map(|a| a.parse()).transpose()?.unwrap_or(1.0);
            let conns: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
            let rounds: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(3);
            tokio::runtime::Runtime::new()?.block_on(bench(gib, conns, rounds))
        }
    }
}

/// Reads every connection to its end.
fn sink(port: &str) -> Result<()> {
    let l = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    for s in l.incoming() {
        let mut s = s?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            let _ = s.write_all(b"done");
        });
    }
    Ok(())
}

/// Answers each connection's 4 bytes with 4 bytes.
fn echo(port: &str) -> Result<()> {
    let l = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    for s in l.incoming() {
        let mut s = s?;
        std::thread::spawn(move || {
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        });
    }
    Ok(())
}

/// Sends `bytes`, half-closes, waits for the sink's answer; prints the seconds it took.
fn send(addr: &str, bytes: u64) -> Result<()> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![0x5a_u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    if answer != b"done" {
        bail!("the sink answered {answer:?}");
    }
    println!("{:.4}", started.elapsed().as_secs_f64());
    Ok(())
}

/// `n` connections one after another, each 4 bytes there and back; prints the median
/// microseconds per connection.
fn ping(addr: &str, n: usize) -> Result<()> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"ping")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        took.push(started.elapsed());
    }
    took.sort();
    println!("{:.1}", took[n / 2].as_secs_f64() * 1e6);
    Ok(())
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn me() -> Result<std::path::PathBuf> {
    Ok(std::env::current_exe()?)
}

fn start_in(pod: &Netns, args: &[&str]) -> Result<Killed> {
    let mut child = pod
        .command(me()?)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    }
    if line.trim() != "ready" {
        bail!("{args:?} did not start");
    }
    Ok(Killed(child))
}

fn run_in(pod: &Netns, args: &[&str]) -> Result<f64> {
    let out = pod.command(me()?).args(args).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout(&out).parse()?)
}

async fn sidecar(
    pod: &Netns,
    control: &Control,
    dir: &Path,
    service: &str,
    app: Option<&str>,
) -> Result<Killed> {
    let token = dir.join(format!("{service}.token"));
    std::fs::write(&token, control.bootstrap_token(service).await)?;
    let anchors = dir.join("anchors.pem");
    std::fs::write(&anchors, control.anchors_pem())?;
    let mut cmd = pod.command("setpriv");
    cmd.args(["--reuid=1337", "--regid=1337", "--clear-groups", "--"])
        .arg(outrigger_tests::bin("outrigger-proxy"))
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
        ])
        .env("RUST_LOG", "warn");
    if let Some(app) = app {
        cmd.args(["--app", app]);
    }
    let child = Killed(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !pod
        .exec(
            "curl",
            &["-sf", "-o", "/dev/null", "http://127.0.0.1:15000/ready"],
        )
        .status
        .success()
    {
        if tokio::time::Instant::now() > deadline {
            bail!("the {service} sidecar never became ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(child)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn bench(gib: f64, conns: usize, rounds: usize) -> Result<()> {
    let bytes = (gib * 1024.0 * 1024.0 * 1024.0) as u64;
    let mut net = PodNet::create("10.204.9");
    let hosts = "10.96.0.30 server\n";
    let (client, _) = net.pod("orb-client", "10.96.0.0/16", hosts);
    let (direct, _) = net.pod("orb-direct", "10.96.0.0/16", hosts);
    let (server, server_ip) = net.pod("orb-server", "10.96.0.0/16", hosts);
    client.init(&[]);
    let control = Control::start_at(format!("{}:15010", net.host()).parse()?, &[]).await;
    let (status, body) = control.apply(MESH).await;
    if status != 200 {
        bail!("apply: {body}");
    }
    let dir = tempfile_dir()?;
    let _sink = start_in(&server, &["sink", "5201"])?;
    let _echo = start_in(&server, &["echo", "5202"])?;
    let _echo2 = start_in(&server, &["echo", "5203"])?;
    let server_sidecar = sidecar(&server, &control, &dir, "server", Some("127.0.0.1:5201")).await?;
    let client_sidecar = sidecar(&client, &control, &dir, "client", None).await?;
    // Wait for the client's sidecar to know the server's endpoint.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while run_in(&client, &["ping", "10.96.0.30:5202", "1"]).is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!("the client sidecar never reached the server");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pids = [client_sidecar.0.id(), server_sidecar.0.id()];
    let direct_addr = format!("{server_ip}:5201");
    let modes: [(&str, &Netns, &str); 3] = [
        ("direct", &direct, direct_addr.as_str()),
        ("one sidecar (passthrough)", &client, direct_addr.as_str()),
        ("two sidecars (mTLS)", &client, "10.96.0.30:5201"),
    ];
    println!("# opaque TCP, {gib} GiB per run, {rounds} rounds, medians");
    println!("| path | GiB/s | sidecar CPU s per GiB |");
    println!("|---|---|---|");
    for (name, pod, addr) in modes {
        let (mut rates, mut cpus) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
            let secs = run_in(pod, &["send", addr, &bytes.to_string()])?;
            let after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
            rates.push(gib / secs);
            cpus.push((after - before) / gib);
        }
        println!("| {name} | {:.2} | {:.2} |", median(rates), median(cpus));
    }
    println!();
    println!(
        "# new connections, {conns} one after another, 4 bytes each way; median µs per connection"
    );
    println!("| path | µs |");
    println!("|---|---|");
    let direct_echo = format!("{server_ip}:5202");
    for (name, pod, addr) in [
        ("direct", &direct, direct_echo.as_str()),
        (
            "two sidecars, opaque port (no detection)",
            &client,
            "10.96.0.30:5202",
        ),
        (
            "two sidecars, detected (client-first bytes)",
            &client,
            "10.96.0.30:5203",
        ),
    ] {
        let mut us = Vec::new();
        for _ in 0..rounds {
            us.push(run_in(pod, &["ping", addr, &conns.to_string()])?);
        }
        println!("| {name} | {:.1} |", median(us));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A directory uid 1337 can read (the sidecars' token and anchors).
fn tempfile_dir() -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("opaque-tcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}
