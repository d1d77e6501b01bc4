//! A real Prometheus server (Debian's `prometheus` package, which `.ci/run` installs) scraping
//! the processes under test, and the parts of its HTTP API the tests read: targets and
//! instant queries.

use crate::{eventually, free_port};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prometheus {
    /// Starts `prometheus` with `config` (its relative paths, such as file_sd files, resolve
    /// against the config's directory), keeping its data and log under `dir`, and waits until
    /// it is ready.
    pub async fn start(config: &Path, dir: &Path) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("prometheus log file");
        let err = out.try_clone().expect("prometheus log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `prometheus` ({e}): this system test needs it on PATH \
                     (`apt-get install prometheus`; .ci/run installs it)"
                )
            });
        let mut me = Self {
            child,
            addr,
            log,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        eventually(Duration::from_secs(60), "Prometheus to be ready", || {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", me.log());
            }
            let client = me.client.clone();
            async move {
                get(&client, addr, "/-/ready")
                    .await
                    .filter(|(s, _)| *s == 200)
                    .map(|_| ())
            }
        })
        .await;
        me
    }

    /// Prometheus's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path_and_query: &str) -> Option<(u16, Bytes)> {
        get(&self.client, self.addr, path_and_query).await
    }

    /// `/api/v1/targets`: the active targets, each with `labels`, `health`, `lastError`...
    pub async fn active_targets(&self) -> Vec<Value> {
        let (_, body) = self
            .get("/api/v1/targets?state=active")
            .await
            .expect("Prometheus answers /api/v1/targets");
        let v: Value = serde_json::from_slice(&body).expect("targets JSON");
        v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// An instant query (`/api/v1/query`): the result vector, or Prometheus's error (a parse
    /// or evaluation error, named as Prometheus names it).
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .finish();
        let (status, body) = self
            .get(&format!("/api/v1/query?{q}"))
            .await
            .ok_or_else(|| "Prometheus did not answer".to_string())?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body:?}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        match &v["data"]["result"] {
            Value::Array(a) => Ok(a.clone()),
            // Scalars and strings: one value.
            other => Ok(vec![other.clone()]),
        }
    }

    /// The value of a query that yields one sample (e.g. `sum(...)`), if it yields one.
    pub async fn scalar(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr).await.ok()?;
        value(r.first()?)
    }
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path_and_query: &str,
) -> Option<(u16, Bytes)> {
    let uri = format!("http://{addr}{path_and_query}").parse().ok()?;
    let res = tokio::time::timeout(Duration::from_secs(30), client.get(uri))
        .await
        .ok()?
        .ok()?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// The number in one instant-vector sample (`{"metric":…, "value":[t, "v"]}`).
pub fn value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
