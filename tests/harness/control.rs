//! A running `outrigger-control` process, and calls to its REST API over HTTPS.
//!
//! The control plane is started as an operator would: TLS only (no `--insecure-dev-plaintext`),
//! an admin token ([`TOKEN`]) and a reader token ([`READER_TOKEN`]). Every call verifies its
//! certificate against the trust bundle it writes (`<data>/trust-bundle.pem`, re-read for each
//! call, so a rotated bundle is used at once), with the admin token unless said otherwise.

use crate::https;
use crate::pki::{self, Identity};
use crate::{bin, eventually, free_port};
use http::Method;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The smallest mesh: `checkout` may call `payment`.
pub const CHECKOUT_CALLS_PAYMENT: &str = "\
kind: Service
metadata: {name: checkout}
spec: {calls: [payment]}
---
kind: Service
metadata: {name: payment}
spec: {}
";

/// The admin token (`--token-file`): every call.
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// The reader token (`--reader-token-file`): reads only.
pub const READER_TOKEN: &str = "test-reader-token-0123456789abcdef";
/// The control plane's default trust domain.
pub const TRUST_DOMAIN: &str = "outrigger.local";

pub struct Control {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Holds [`TOKEN`].
    pub token_file: PathBuf,
    /// Holds [`READER_TOKEN`].
    pub reader_token_file: PathBuf,
    extra: Vec<String>,
    /// Started with `--insecure-dev-plaintext`: its URL is `http://`.
    plaintext: bool,
}

impl Control {
    /// Starts a control plane with a fresh data directory, and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`Control::start`], with extra flags (e.g. `--cert-lifetime 5s`).
    pub async fn start_with(extra: &[&str]) -> Self {
        Self::launch(extra, false).await
    }

    /// A developer's control plane: `--insecure-dev-plaintext` (plain HTTP, still with the
    /// tokens and the CA), and `extra` flags.
    pub async fn start_dev_plaintext(extra: &[&str]) -> Self {
        let mut flags = vec!["--insecure-dev-plaintext"];
        flags.extend_from_slice(extra);
        Self::launch(&flags, true).await
    }

    /// Like [`Control::start_with`], listening on `addr` (a pod bridge's address, say).
    pub async fn start_at(addr: SocketAddr, extra: &[&str]) -> Self {
        Self::launch_at(addr, extra, false).await
    }

    async fn launch(extra: &[&str], plaintext: bool) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::launch_at(addr, extra, plaintext).await
    }

    async fn launch_at(addr: SocketAddr, extra: &[&str], plaintext: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, TOKEN).expect("token file");
        let reader_token_file = dir.path().join("reader.token");
        std::fs::write(&reader_token_file, READER_TOKEN).expect("reader token file");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(addr, dir.path(), &extra);
        let me = Self {
            child,
            addr,
            dir,
            token_file,
            reader_token_file,
            extra,
            plaintext,
        };
        me.ready().await;
        me
    }

    pub fn url(&self) -> String {
        let scheme = if self.plaintext { "http" } else { "https" };
        format!("{scheme}://{}", self.addr)
    }

    /// The control plane's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The trust bundle the control plane writes: what its clients take as trust anchors.
    pub fn trust_anchors(&self) -> PathBuf {
        self.data_dir().join("trust-bundle.pem")
    }

    /// The trust bundle's PEM text as it is now.
    pub fn anchors_pem(&self) -> Vec<u8> {
        std::fs::read(self.trust_anchors()).expect("the control plane's trust bundle")
    }

    /// An HTTPS client trusting the current bundle, presenting no certificate.
    pub fn client(&self) -> https::Client {
        https::client(&self.anchors_pem())
    }

    /// The control plane's stderr so far (it logs JSON lines there), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control.log")).unwrap_or_default()
    }

    /// Waits until the trust bundle is written and `/readyz` answers 200 over HTTPS.
    async fn ready(&self) {
        let (anchors, url) = (self.trust_anchors(), self.url());
        eventually(
            Duration::from_secs(30),
            "the control plane's trust bundle and /readyz over HTTPS",
            || {
                let (anchors, url) = (anchors.clone(), url.clone());
                async move {
                    let pem = std::fs::read(&anchors).ok()?;
                    https::parse_certs(&pem).ok()?;
                    let client = https::client(&pem);
                    let (status, _) =
                        https::try_call(&client, Method::GET, &format!("{url}/readyz"), None, None)
                            .await
                            .ok()?;
                    (status == 200).then_some(())
                }
            },
        )
        .await;
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.child = spawn(self.addr, self.dir.path(), &self.extra);
        self.ready().await;
    }

    pub async fn apply(&self, yaml: &str) -> (u16, Value) {
        self.call_with(
            Some(TOKEN),
            Method::POST,
            "/v1/apply",
            Some(yaml.to_string()),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call_with(Some(TOKEN), Method::GET, path, None).await
    }

    /// One sample of the control plane's `/metrics`, or 0 when it has none yet.
    pub async fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        crate::proxy::metric_value(text.as_str().unwrap_or_default(), name, labels).unwrap_or(0.0)
    }

    pub async fn send(&self, method: Method, path: &str, json: Value) -> (u16, Value) {
        self.call_with(Some(TOKEN), method, path, Some(json.to_string()))
            .await
    }

    /// One call with another bearer token (the reader's, a bootstrap token) or none:
    /// (status, JSON body, or the text as a JSON string, or Null); (0, Null) for no answer.
    pub async fn call_with(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        https::call(
            &self.client(),
            method,
            &format!("{}{path}", self.url()),
            body.as_deref(),
            token,
        )
        .await
    }

    /// One call as a workload: TLS with `cert_pem` (leaf first) and `key_pem` as the client
    /// certificate, no token. (0, Null) when there is no answer (a refused handshake).
    pub async fn call_as_workload(
        &self,
        cert_pem: &str,
        key_pem: &str,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        self.try_call_as_workload(cert_pem, key_pem, method, path, body)
            .await
            .unwrap_or((0, Value::Null))
    }

    /// [`Control::call_as_workload`], with the transport error (and its causes) as Err.
    pub async fn try_call_as_workload(
        &self,
        cert_pem: &str,
        key_pem: &str,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Value), String> {
        let client = https::client_with_identity(
            &self.anchors_pem(),
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
        );
        https::try_call(
            &client,
            method,
            &format!("{}{path}", self.url()),
            body.as_deref(),
            None,
        )
        .await
    }

    /// A fresh single-use bootstrap token for `service` (10 minutes), minted with the admin token.
    pub async fn bootstrap_token(&self, service: &str) -> String {
        self.bootstrap_token_with(service, 600, 1).await
    }

    /// A bootstrap token for `service` that lives `ttl_secs` and is good for `uses` CSRs.
    pub async fn bootstrap_token_with(&self, service: &str, ttl_secs: u64, uses: u32) -> String {
        let (status, body) = self
            .send(
                Method::POST,
                "/v1/identity/tokens",
                serde_json::json!({"service": service, "ttl_secs": ttl_secs, "uses": uses}),
            )
            .await;
        assert_eq!(status, 201, "a bootstrap token for {service}: {body}");
        body["token"].as_str().expect("token").to_string()
    }

    /// [`Control::bootstrap_token`] in a file of its own (for `--bootstrap-token-file`).
    pub async fn bootstrap_token_file(&self, service: &str) -> PathBuf {
        self.bootstrap_token_file_with(service, 600, 1).await
    }

    /// [`Control::bootstrap_token_with`] in a file of its own.
    pub async fn bootstrap_token_file_with(
        &self,
        service: &str,
        ttl_secs: u64,
        uses: u32,
    ) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let token = self.bootstrap_token_with(service, ttl_secs, uses).await;
        let path = self.dir.path().join(format!(
            "{service}-{}.bootstrap",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, token).expect("write the bootstrap token");
        path
    }

    /// A certificate for `service` from the mesh CA, as a sidecar gets its first one: a fresh
    /// key, a CSR for the service's identity and a single-use bootstrap token.
    pub async fn identity(&self, service: &str) -> Identity {
        let token = self.bootstrap_token(service).await;
        let (key_pem, csr) = pki::csr(&pki::spiffe_id(service));
        let (status, signed) = self
            .call_with(
                Some(&token),
                Method::POST,
                "/v1/identity/certificates",
                Some(serde_json::json!({ "csr": csr }).to_string()),
            )
            .await;
        assert_eq!(status, 200, "a certificate for {service}: {signed}");
        Identity {
            cert_pem: signed["certificate_chain"]
                .as_str()
                .expect("certificate_chain")
                .to_string(),
            key_pem,
            not_after_unix: signed["not_after_unix"].as_u64(),
        }
    }

    /// Registers an instance whose callers reach it at `addr` (no sidecar in front).
    pub async fn register(&self, service: &str, version: &str, addr: SocketAddr) -> String {
        let (status, body) = self
            .send(
                Method::POST,
                "/v1/registry/instances",
                serde_json::json!({
                    "service": service, "version": version, "address": addr.ip().to_string(),
                    "ports": {"http": addr.port()}, "labels": {}, "ttl_secs": 3600
                }),
            )
            .await;
        assert_eq!(status, 201, "register: {body}");
        body["id"].as_str().expect("instance id").to_string()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(addr: SocketAddr, dir: &Path, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("control.log"))
        .expect("control plane log file");
    Command::new(bin("outrigger-control"))
        .args(extra)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--token-file")
        .arg(dir.join("admin.token"))
        .arg("--reader-token-file")
        .arg(dir.join("reader.token"))
        .env_remove("OUTRIGGER_TOKEN")
        .env_remove("OUTRIGGER_READER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start outrigger-control")
}
