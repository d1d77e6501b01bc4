//! Real `outrigger-control` processes on ephemeral loopback ports, and real HTTPS clients that
//! trust the bundle the control plane writes: as an operator (admin or reader token), as a
//! sidecar (its workload certificate), or as nobody.

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use outrigger_tests::https;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "control-test-token-5f2a";
pub const READER: &str = "control-test-reader-7c1e";
/// Generous: a loaded 2-core machine may start a debug binary slowly.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub const SHOP: &str = include_str!("../../../config/examples/shop.yaml");

pub struct Control {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub trust_domain: String,
}

impl Control {
    /// A control plane on a fresh data directory, once it logged its address.
    pub fn start() -> Control {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, addr, logs) = spawn(&dir.path().join("data"), &[]);
        Control {
            child,
            addr,
            dir,
            logs,
            trust_domain: "outrigger.local".into(),
        }
    }

    /// Same, with extra flags.
    pub fn start_with(args: &[&str]) -> Control {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, addr, logs) = spawn(&dir.path().join("data"), args);
        let trust_domain = args
            .iter()
            .position(|a| *a == "--trust-domain")
            .and_then(|i| args.get(i + 1))
            .unwrap_or(&"outrigger.local")
            .to_string();
        Control {
            child,
            addr,
            dir,
            logs,
            trust_domain,
        }
    }

    /// SIGKILL, then a new process on the same data directory (on a new port).
    pub fn kill9_and_restart(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
        let (child, addr, logs) = spawn(&self.dir.path().join("data"), &[]);
        self.child = child;
        self.addr = addr;
        self.logs = logs;
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "the control plane did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the control plane writes its trust bundle: the trust anchors.
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("data").join("trust-bundle.pem")
    }

    /// As the admin.
    pub async fn call(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
        call(self, method, path, body, Some(TOKEN)).await
    }

    /// As a reader.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        call(self, Method::GET, path, None, Some(READER)).await
    }

    /// As the sidecar holding `who`'s certificate.
    pub async fn call_as(
        &self,
        who: &Workload,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        request(self, method, path, body, As::Workload(who)).await
    }

    /// A workload certificate for `service`, got as a new sidecar gets its first: a
    /// single-use bootstrap token, then a CSR.
    pub async fn workload(&self, service: &str) -> Workload {
        let (status, minted) = self
            .call(
                Method::POST,
                "/v1/identity/tokens",
                Some(&serde_json::json!({"service": service, "uses": 1}).to_string()),
            )
            .await;
        assert_eq!(status, 201, "{minted}");
        let token = minted["token"].as_str().expect("token").to_string();
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{}/service/{service}", self.trust_domain)
                .as_str()
                .try_into()
                .expect("uri"),
        )];
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let (status, signed) = call(
            self,
            Method::POST,
            "/v1/identity/certificates",
            Some(&serde_json::json!({ "csr": csr }).to_string()),
            Some(&token),
        )
        .await;
        assert_eq!(status, 200, "{signed}");
        Workload {
            cert_pem: signed["certificate_chain"]
                .as_str()
                .expect("chain")
                .to_string(),
            key_pem: key.serialize_pem(),
        }
    }

    pub async fn apply(&self, yaml: &str) -> (u16, Value) {
        self.call(Method::POST, "/v1/apply", Some(yaml)).await
    }

    pub async fn register(&self, service: &str, version: &str, port: u16, ttl: u64) -> String {
        let body = serde_json::json!({
            "service": service, "version": version, "address": "127.0.0.1",
            "ports": {"inbound": port, "app": 8080}, "ttl_secs": ttl,
        });
        let (status, reply) = self
            .call(
                Method::POST,
                "/v1/registry/instances",
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, 201, "{reply}");
        reply["id"].as_str().expect("id").to_string()
    }

    /// A push stream opened by a sidecar of `service`, with a certificate of its own.
    pub async fn stream(&self, service: &str, sidecar: &str) -> Stream {
        let who = self.workload(service).await;
        Stream::open(self, &who, service, sidecar).await
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(data: &Path, args: &[&str]) -> (Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let token_file = data.with_file_name("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let reader_file = data.with_file_name("reader-token");
    std::fs::write(&reader_file, format!("{READER}\n")).expect("reader token file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outrigger-control"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--reader-token-file")
        .arg(&reader_file)
        .args(args)
        .env_remove("OUTRIGGER_TOKEN")
        .env_remove("OUTRIGGER_READER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start outrigger-control");
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let kept = logs.clone();
    // Keeps reading so the process never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "listening" {
                    if let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok()) {
                        let _ = tx.send(addr);
                    }
                }
            }
            kept.lock().expect("logs").push(line);
        }
    });
    let addr = match rx.recv_timeout(START_TIMEOUT) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("no listening line: {:?}", logs.lock().expect("logs"));
        }
    };
    (child, addr, logs)
}

/// A sidecar's credentials: its workload certificate and key (PEM).
#[derive(Clone)]
pub struct Workload {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Who a request comes from.
pub enum As<'a> {
    Nobody,
    Bearer(&'a str),
    Workload(&'a Workload),
}

/// The workspace's HTTPS client, trusting `bundle` and presenting `who`'s certificate.
pub fn client(bundle: &Path, who: Option<&Workload>) -> https::Client {
    let pem = std::fs::read(bundle).expect("the trust bundle file");
    match who {
        None => https::client(&pem),
        Some(w) => https::client_with_identity(&pem, w.cert_pem.as_bytes(), w.key_pem.as_bytes()),
    }
}

/// One request with a bearer token (or none): (status, JSON body, or the text as a JSON
/// string, or Null when empty).
pub async fn call(
    c: &Control,
    method: Method,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let who = token.map_or(As::Nobody, As::Bearer);
    request(c, method, path, body, who).await
}

pub async fn request(
    c: &Control,
    method: Method,
    path: &str,
    body: Option<&str>,
    who: As<'_>,
) -> (u16, Value) {
    let client = client(
        &c.bundle(),
        match &who {
            As::Workload(w) => Some(*w),
            _ => None,
        },
    );
    let token = match who {
        As::Bearer(t) => Some(t),
        _ => None,
    };
    let url = format!("https://{}{path}", c.addr);
    https::try_call(&client, method, &url, body, token)
        .await
        .expect("an answer")
}

/// The workspace tests' poller: `check` until it returns `Some`, or fail after a timeout.
pub use outrigger_tests::eventually;

/// A sidecar's side of a push stream.
pub struct Stream {
    pub content_type: String,
    body: Incoming,
    buf: Vec<u8>,
    // Keeps the connection's client alive as long as the stream.
    _client: https::Client,
}

impl Stream {
    pub async fn open(c: &Control, who: &Workload, service: &str, sidecar: &str) -> Stream {
        let client = client(&c.bundle(), Some(who));
        let req = Request::builder()
            .uri(format!(
                "https://{}/v1/stream?service={service}&sidecar={sidecar}",
                c.addr
            ))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
            .await
            .expect("stream opened in time")
            .expect("stream request");
        assert_eq!(res.status(), 200);
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Stream {
            content_type,
            body: res.into_body(),
            buf: Vec::new(),
            _client: client,
        }
    }

    /// The next line, or None if none came within `timeout` or the stream ended.
    pub async fn line(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("each line is JSON"));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next snapshot line (keepalives skipped); panics after `timeout`.
    pub async fn snapshot(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .line(left)
                .await
                .unwrap_or_else(|| panic!("no snapshot within {timeout:?}"));
            if line["type"] == "snapshot" {
                return line;
            }
        }
    }
}

/// Destination names of a snapshot line.
pub fn destinations(line: &Value) -> Vec<String> {
    line["snapshot"]["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_string())
        .collect()
}

/// Endpoint addresses of destination `name` in a snapshot line.
pub fn endpoints(line: &Value, name: &str) -> Vec<String> {
    line["snapshot"]["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["name"] == name)
        .and_then(|d| d["endpoints"].as_array())
        .map(|e| {
            e.iter()
                .map(|x| x["address"].as_str().expect("address").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the `outrigger` CLI against `control`: (exit code, stdout, stderr).
pub fn cli(control: &Control, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outrigger"));
    cmd.args(args)
        .env(
            "OUTRIGGER_CONTROL_PLANE",
            format!("https://{}", control.addr),
        )
        .env("OUTRIGGER_TRUST_ANCHORS", control.bundle())
        .env_remove("OUTRIGGER_TOKEN")
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("OUTRIGGER_TOKEN", t);
    }
    let out = cmd.output().expect("run outrigger");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A file in `dir` holding `text`.
pub fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}
