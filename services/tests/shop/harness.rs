//! Test harness: starts the real `shop` binary on ephemeral loopback ports, talks HTTP to
//! it, and offers a tiny Host-routing forwarder that stands in for the mesh (so the order
//! tests need no proxy) and records what it forwarded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long anything in these tests may take to happen before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running `shop` subcommand, killed when dropped. Its stdout (the JSON log) is collected.
pub struct Shop {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Shop {
    /// Starts `shop <service> --listen 127.0.0.1:0 <args>` and waits for its startup line,
    /// which names the port it got.
    pub fn start(service: &str, args: &[&str]) -> Shop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
            .arg(service)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start shop");
        let stdout = child.stdout.take().expect("stdout is piped");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lines, changed) = &*sink;
                lines.lock().expect("log lock").push(line);
                changed.notify_all();
            }
        });
        let mut shop = Shop {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let line = shop.wait_for_line(|line| message(line).starts_with("listening on "));
        shop.addr = message(&line)
            .split_whitespace()
            .nth(2)
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in startup line {line}"));
        shop
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().expect("log lock").clone()
    }

    /// Blocks until a stdout line satisfies `pred` (or the deadline fails the test).
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool) -> String {
        let (lines, changed) = &*self.log;
        let end = Instant::now() + DEADLINE;
        let mut guard = lines.lock().expect("log lock");
        loop {
            if let Some(line) = guard.iter().find(|line| pred(line)) {
                return line.clone();
            }
            let left = end
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no such log line within {DEADLINE:?}: {guard:#?}"));
            guard = changed.wait_timeout(guard, left).expect("log lock").0;
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for shop") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "shop did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `message` field of a JSON log line ("" if it is not one).
pub fn message(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub elapsed: Duration,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn str(&self, field: &str) -> String {
        self.json[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field:?} in {}", self.json))
            .to_owned()
    }
}

/// A plain HTTP/1.1 client for the tests.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    pub async fn get(&self, url: &str) -> Resp {
        self.send(Method::GET, url, &[], None).await
    }

    pub async fn post(&self, url: &str, body: &str) -> Resp {
        self.send(Method::POST, url, &[], Some(body)).await
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut request = axum::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = Full::new(Bytes::from(body.unwrap_or_default().to_owned()));
        let request = request.body(body).expect("build request");
        let start = Instant::now();
        let response = tokio::time::timeout(DEADLINE, self.client.request(request))
            .await
            .expect("response within deadline")
            .expect("response");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("read body").to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Resp {
            status: parts.status,
            headers: parts.headers,
            json,
            elapsed: start.elapsed(),
        }
    }
}

/// One request the forwarder passed on.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: String,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

/// The mesh stand-in: routes each request by its `Host` to a service's address.
pub struct Forwarder {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[derive(Clone)]
struct ForwardState {
    routes: Arc<HashMap<String, SocketAddr>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    http: Http,
}

impl Forwarder {
    /// Starts a forwarder on an ephemeral port, on the current tokio runtime.
    pub async fn start(routes: &[(&str, &Shop)]) -> Forwarder {
        let state = ForwardState {
            routes: Arc::new(
                routes
                    .iter()
                    .map(|(host, shop)| ((*host).to_owned(), shop.addr))
                    .collect(),
            ),
            seen: Arc::default(),
            http: Http::default(),
        };
        let seen = Arc::clone(&state.seen);
        let app = Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forwarder");
        let addr = listener.local_addr().expect("forwarder address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Forwarder {
            url: format!("http://{addr}"),
            seen,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// The requests forwarded to `host`, in order.
    pub fn seen_by(&self, host: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.host == host).collect()
    }
}

async fn forward(State(state): State<ForwardState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    state.seen.lock().expect("seen lock").push(Seen {
        host: host.clone(),
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
    });
    let Some(addr) = state.routes.get(&host) else {
        return (StatusCode::BAD_GATEWAY, "no such host").into_response();
    };
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let uri: Uri = format!("http://{addr}{path}")
        .parse()
        .expect("upstream uri");
    let mut upstream = axum::http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(Full::new(body))
        .expect("upstream request");
    *upstream.headers_mut() = parts.headers;
    match state.http.client.request(upstream).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
