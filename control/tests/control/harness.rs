//! Real `outrigger-control` processes on ephemeral loopback ports, and real HTTP clients.

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "control-test-token-5f2a";
/// Generous: a loaded 2-core machine may start a debug binary slowly.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub const SHOP: &str = include_str!("../../../config/examples/shop.yaml");

pub struct Control {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub logs: Arc<Mutex<Vec<String>>>,
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
        }
    }

    /// Same, with extra flags.
    pub fn start_with(args: &[&str]) -> Control {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, addr, logs) = spawn(&dir.path().join("data"), args);
        Control {
            child,
            addr,
            dir,
            logs,
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

    pub async fn call(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
        call(self.addr, method, path, body, Some(TOKEN)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        call(self.addr, Method::GET, path, None, None).await
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

    pub async fn stream(&self, service: &str, sidecar: &str) -> Stream {
        Stream::open(self.addr, service, sidecar).await
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_outrigger-control"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--token-file")
        .arg(&token_file)
        .args(args)
        .env_remove("OUTRIGGER_TOKEN")
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

/// One request: (status, JSON body, or the text as a JSON string, or Null when empty).
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .expect("request");
    let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answer in time")
        .expect("request failed");
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}

/// The workspace tests' poller: `check` until it returns `Some`, or fail after a timeout.
pub use outrigger_tests::eventually;

/// A sidecar's side of a push stream.
pub struct Stream {
    pub content_type: String,
    body: Incoming,
    buf: Vec<u8>,
    // Keeps the connection's client alive as long as the stream.
    _client: Client<HttpConnector, Full<Bytes>>,
}

impl Stream {
    pub async fn open(addr: SocketAddr, service: &str, sidecar: &str) -> Stream {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = Request::builder()
            .uri(format!(
                "http://{addr}/v1/stream?service={service}&sidecar={sidecar}"
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
pub fn cli(control: &Control, token: bool, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outrigger"));
    cmd.args(args)
        .env(
            "OUTRIGGER_CONTROL_PLANE",
            format!("http://{}", control.addr),
        )
        .env_remove("OUTRIGGER_TOKEN")
        .stdin(Stdio::null());
    if token {
        cmd.env("OUTRIGGER_TOKEN", TOKEN);
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
