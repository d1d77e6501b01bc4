//! A running `outrigger-control` process, and calls to its REST API.

use crate::{bin, eventually, free_port};
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
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

pub const TOKEN: &str = "test-token-0123456789abcdef";

pub struct Control {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub token_file: PathBuf,
    extra: Vec<String>,
}

impl Control {
    /// Starts a control plane with a fresh data directory, and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`Control::start`], with extra flags (e.g. `--cert-lifetime 5s`).
    pub async fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).expect("token file");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(addr, dir.path(), &token_file, &extra);
        let me = Self {
            child,
            addr,
            dir,
            token_file,
            extra,
        };
        me.ready().await;
        me
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn ready(&self) {
        let addr = self.addr;
        eventually(Duration::from_secs(20), "the control plane to be ready", || async move {
            (call(addr, Method::GET, "/readyz", None).await.0 == 200).then_some(())
        })
        .await;
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.child = spawn(self.addr, self.dir.path(), &self.token_file, &self.extra);
        self.ready().await;
    }

    pub async fn apply(&self, yaml: &str) -> (u16, serde_json::Value) {
        call(self.addr, Method::POST, "/v1/apply", Some(yaml.to_string())).await
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        call(self.addr, Method::GET, path, None).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        json: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        call(self.addr, method, path, Some(json.to_string())).await
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

fn spawn(addr: SocketAddr, data: &Path, token_file: &Path, extra: &[String]) -> Child {
    Command::new(bin("outrigger-control"))
        .args(extra)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data.join("data"))
        .arg("--token-file")
        .arg(token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start outrigger-control")
}

/// One API call with the token: (status, JSON body or Null).
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> (u16, serde_json::Value) {
    call_with(addr, method, path, body, TOKEN).await
}

/// One API call with another bearer token (a bootstrap token, say).
pub async fn call_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
    token: &str,
) -> (u16, serde_json::Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("request");
    let Ok(Ok(res)) = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await
    else {
        return (0, serde_json::Value::Null);
    };
    let status = res.status().as_u16();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}
