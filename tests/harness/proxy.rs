//! A running `outrigger-proxy` process.

use crate::{bin, eventually, free_port};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Proxy {
    pub child: Child,
    pub admin: SocketAddr,
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: Option<PathBuf>,
}

pub struct ProxyBuilder {
    args: Vec<String>,
    config: Option<String>,
    outbound: Option<SocketAddr>,
    inbound: Option<SocketAddr>,
    /// Where the admin listener binds (loopback unless a test needs it reachable from outside).
    admin_ip: std::net::IpAddr,
    /// stdout and stderr go to pipes nobody reads, which fill and then block every write.
    unread_output: bool,
    /// Environment variables for the process (the outrigger ones of the test's own
    /// environment are removed).
    env: Vec<(String, String)>,
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

impl ProxyBuilder {
    /// Control plane mode, as a sidecar joins a real mesh: a sidecar for `service` (fronting
    /// `app` when given) that trusts `control`'s bundle and holds a fresh single-use bootstrap
    /// token for its first certificate, and no operator token.
    pub async fn control_plane(
        control: &crate::control::Control,
        service: &str,
        version: &str,
        app: Option<SocketAddr>,
    ) -> Self {
        let token = control.bootstrap_token_file(service).await;
        Self::control_plane_at(
            &control.url(),
            &control.trust_anchors(),
            &token,
            service,
            version,
            app,
        )
    }

    /// Control plane mode with everything spelled out: the control plane's `https://` URL, the
    /// trust anchors file and the bootstrap token file.
    pub fn control_plane_at(
        url: &str,
        trust_anchors: &std::path::Path,
        bootstrap_token_file: &std::path::Path,
        service: &str,
        version: &str,
        app: Option<SocketAddr>,
    ) -> Self {
        Self::sidecar(
            url,
            &[
                "--trust-anchors".into(),
                trust_anchors.display().to_string(),
                "--bootstrap-token-file".into(),
                bootstrap_token_file.display().to_string(),
            ],
            service,
            version,
            app,
        )
    }

    /// Control plane mode over plain `http://` (`--insecure-dev-plaintext`), with an operator
    /// token: for scripted control planes that speak the protocol without TLS.
    pub fn control_plane_plaintext(
        url: &str,
        token_file: &std::path::Path,
        service: &str,
        version: &str,
        app: Option<SocketAddr>,
    ) -> Self {
        Self::sidecar(
            url,
            &[
                "--insecure-dev-plaintext".into(),
                "--token-file".into(),
                token_file.display().to_string(),
            ],
            service,
            version,
            app,
        )
    }

    fn sidecar(
        url: &str,
        credentials: &[String],
        service: &str,
        version: &str,
        app: Option<SocketAddr>,
    ) -> Self {
        let (outbound, inbound) = (addr(), addr());
        let mut args = vec![
            "--control-plane".into(),
            url.to_string(),
            "--service".into(),
            service.into(),
            "--service-version".into(),
            version.into(),
            "--outbound".into(),
            outbound.to_string(),
            "--inbound".into(),
            inbound.to_string(),
        ];
        args.extend_from_slice(credentials);
        if let Some(app) = app {
            args.extend(["--app".into(), app.to_string()]);
        }
        Self {
            args,
            config: None,
            outbound: Some(outbound),
            inbound: app.map(|_| inbound),
            admin_ip: [127, 0, 0, 1].into(),
            unread_output: false,
            env: Vec::new(),
        }
    }

    /// `--listen` / `--upstream` quick-start mode.
    pub fn quick(upstream: SocketAddr) -> Self {
        let listen = addr();
        Self {
            args: vec![
                "--listen".into(),
                listen.to_string(),
                "--upstream".into(),
                upstream.to_string(),
            ],
            config: None,
            outbound: Some(listen),
            inbound: None,
            admin_ip: [127, 0, 0, 1].into(),
            unread_output: false,
            env: Vec::new(),
        }
    }

    /// Config-file mode. `snapshot` is the YAML body of the `snapshot:` key (indented by the
    /// caller or not: it is placed under the key as is). `proxy_extra` adds `proxy:` keys.
    pub fn file(snapshot: &str, proxy_extra: &str) -> Self {
        let (outbound, inbound) = (addr(), addr());
        let config = render(outbound, inbound, snapshot, proxy_extra);
        Self {
            args: vec![],
            config: Some(config),
            outbound: Some(outbound),
            inbound: Some(inbound),
            admin_ip: [127, 0, 0, 1].into(),
            unread_output: false,
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// Sets an environment variable for the proxy (e.g. `OUTRIGGER_TRUST_ANCHORS`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Binds the admin listener to `ip` (e.g. 0.0.0.0); the test still reaches it on loopback.
    pub fn admin_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.admin_ip = ip;
        self
    }

    /// Sends stdout and stderr to pipes that are never read, as a stuck log shipper would:
    /// once the pipe buffer (64 KiB) is full, every write to them blocks.
    /// [`Proxy::stdout`] and [`Proxy::stderr`] are empty then.
    pub fn unread_output(mut self) -> Self {
        self.unread_output = true;
        self
    }

    pub fn spawn(self) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = addr();
        let mut cmd = Command::new(bin("outrigger-proxy"));
        cmd.args(&self.args)
            .arg("--admin")
            .arg(SocketAddr::new(self.admin_ip, admin.port()).to_string())
            .arg("--threads")
            .arg("2");
        let mut config_path = None;
        if let Some(text) = &self.config {
            let p = dir.path().join("sidecar.yaml");
            std::fs::write(&p, text).expect("write config");
            cmd.arg("--config").arg(&p);
            config_path = Some(p);
        }
        if self.unread_output {
            // The Child keeps the read ends open (so writes block rather than fail) until the
            // Proxy is dropped.
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            let out = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file");
            let err = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        }
        for key in [
            "OUTRIGGER_TOKEN",
            "OUTRIGGER_BOOTSTRAP_TOKEN",
            "OUTRIGGER_TRUST_ANCHORS",
        ] {
            cmd.env_remove(key);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().expect("start outrigger-proxy");
        Proxy {
            child,
            admin,
            outbound: self.outbound,
            inbound: self.inbound,
            dir,
            config_path,
        }
    }
}

/// A sidecar file with the given listeners.
pub fn render(
    outbound: SocketAddr,
    inbound: SocketAddr,
    snapshot: &str,
    proxy_extra: &str,
) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("  {l}\n")).collect::<String>();
    format!(
        "proxy:\n  outbound: {outbound}\n  inbound: {inbound}\n{}snapshot:\n{}",
        indent(proxy_extra),
        indent(snapshot)
    )
}

impl Proxy {
    pub fn outbound(&self) -> SocketAddr {
        self.outbound.expect("outbound listener")
    }

    pub fn inbound(&self) -> SocketAddr {
        self.inbound.expect("inbound listener")
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/ready` answers 200.
    pub async fn ready(self) -> Self {
        let admin = self.admin;
        let stderr = self.dir.path().join("stderr.log");
        let mut me = self;
        eventually(Duration::from_secs(20), "the proxy to become ready", || {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!(
                    "outrigger-proxy exited early ({status}): {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            async move { (crate::client::admin_get(admin, "/ready").await.0 == 200).then_some(()) }
        })
        .await;
        me
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        crate::client::admin_get(self.admin, path).await
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.1
    }

    /// The value of one sample in `/metrics`, matched by name and every given label.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// As [`Proxy::metric`], with a series that does not exist (yet) read as 0: a counter
    /// before its first increment.
    pub async fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric(name, labels).await.unwrap_or(0.0)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Replaces the config file atomically (write + rename), as ConfigMap updates do.
    pub fn write_config(&self, text: &str) {
        let p = self.config_path.as_ref().expect("config-file mode");
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, p).expect("rename config");
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Resident set size and its peak, in KiB, from /proc.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let child = &mut self.child;
        let status = eventually(within, "the proxy to exit", || {
            let s = child.try_wait().ok().flatten();
            async move { s }
        })
        .await;
        status.code()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds a sample in Prometheus text by metric name and labels (all given must match).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let has = |k: &str, v: &str| {
            rest.contains(&format!("{{{k}=\"{v}\"")) || rest.contains(&format!(",{k}=\"{v}\""))
        };
        if labels.iter().all(|(k, v)| has(k, v)) {
            let v: f64 = value.parse().ok()?;
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}
