//! Scripted upstream servers (HTTP/1.1 and h2c on one port) that count their connections.
//!
//! Paths: `/` → `ok`; `/echo` → JSON of method, path, authority, version and headers;
//! `/inspect` → the same plus `body_bytes` and request `trailers` (reads the whole body);
//! `/status/N`; `/delay/MS`; `/download/BYTES` (streamed); `/upload` → byte count of the body;
//! `/hop` → `ok` with hop-by-hop response headers (`Connection: x-resp-secret`,
//! `X-Resp-Secret`, `Keep-Alive`, `Proxy-Connection`) and an end-to-end `x-resp-kept`;
//! `/ws` → WebSocket-style upgrade, then echoes bytes; `/reflect` → the request body, byte for
//! byte; `/trickle/N/MS` → headers at once, then `N` body chunks (`chunk 0\n`, ...) `MS`
//! milliseconds apart. Every response carries `x-upstream` with the server's name.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::client::{BoxError, TestBody};

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    behavior: Arc<Behavior>,
    /// The tasks serving its connections, so [`Upstream::stop`] can close them.
    served: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Runtime-switchable misbehaviour applied to every request before its path is handled.
#[derive(Default)]
struct Behavior {
    /// Answer every request with this status (after reading its body); 0 = behave.
    fail: AtomicU16,
    /// Answer every request with this status once its first body frame is in, without
    /// waiting for the rest (which is read and discarded in the background); 0 = behave.
    fail_early: AtomicU16,
    /// Delay every response by this many milliseconds.
    delay_ms: AtomicU64,
    /// `x-outrigger-attempt` of each request, in arrival order.
    attempts: Mutex<Vec<String>>,
    /// When each request arrived, in the same order.
    arrivals: Mutex<Vec<std::time::Instant>>,
    /// The request headers of each request, in the same order: what an attempt that was
    /// answered with a failure (and so never echoed) carried.
    headers: Mutex<Vec<http::HeaderMap>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`Upstream::start`], on a given address: e.g. the port of an upstream that was
    /// [`stop`](Upstream::stop)ped, to bring it back.
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let behavior = Arc::new(Behavior::default());
        let served = Arc::new(Mutex::new(Vec::new()));
        let (c, r, n, b, s) = (
            connections.clone(),
            requests.clone(),
            name.to_string(),
            behavior.clone(),
            served.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let (r, n, b) = (r.clone(), n.clone(), b.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        misbehave(n.clone(), b.clone(), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn.abort_handle());
            }
        });
        Self {
            addr,
            name: name.to_string(),
            connections,
            requests,
            behavior,
            served,
            task,
        }
    }

    /// Goes down as a crashed process would: stops listening (new connections are refused)
    /// and closes every connection it has open, idle keep-alive ones included. Unlike a plain
    /// drop, which only stops accepting.
    pub fn stop(&self) {
        self.task.abort();
        for conn in self.served.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            conn.abort();
        }
    }

    /// Whether, after [`Upstream::stop`], the listener and every connection are closed (so
    /// the port may be bound again and no pooled connection still reaches this server).
    pub fn is_stopped(&self) -> bool {
        self.task.is_finished()
            && self
                .served
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .all(|c| c.is_finished())
    }

    /// From now on answer every request with `status` (0 to stop).
    pub fn fail_with(&self, status: u16) {
        self.behavior.fail.store(status, Ordering::SeqCst);
    }

    /// From now on answer every request with `status` as soon as its first body frame (if
    /// any) has arrived, without waiting for the rest (0 to stop): an upstream that fails
    /// while a slow client is still sending. Like servers that keep the connection, it goes
    /// on reading (and discarding) the rest of the body after answering.
    pub fn fail_early_with(&self, status: u16) {
        self.behavior.fail_early.store(status, Ordering::SeqCst);
    }

    /// From now on delay every response by `ms` milliseconds.
    pub fn delay_ms(&self, ms: u64) {
        self.behavior.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The `x-outrigger-attempt` header of every request so far ("" when absent).
    pub fn attempts_seen(&self) -> Vec<String> {
        self.behavior
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The request headers of every request so far, in arrival order.
    pub fn headers_seen(&self) -> Vec<http::HeaderMap> {
        self.behavior
            .headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When each request so far arrived (its head was read), in order.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.behavior
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(name: &str, status: StatusCode, body: TestBody) -> Response<TestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert("x-upstream", name.parse().expect("header value"));
    r
}

async fn misbehave(
    name: String,
    b: Arc<Behavior>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, BoxError> {
    let attempt = req
        .headers()
        .get("x-outrigger-attempt")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    b.attempts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(attempt);
    b.arrivals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(std::time::Instant::now());
    b.headers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(req.headers().clone());
    let delay = b.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let early = b.fail_early.load(Ordering::SeqCst);
    if early != 0 {
        let mut body = req.into_body();
        let n = match body.frame().await {
            Some(Ok(f)) => f.data_ref().map_or(0, |d| d.len()),
            _ => 0,
        };
        tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
        let code = StatusCode::from_u16(early).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(respond(
            &name,
            code,
            crate::client::full(format!("failing early; read {n} bytes\n")),
        ));
    }
    let fail = b.fail.load(Ordering::SeqCst);
    if fail != 0 {
        let n = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes().len())
            .unwrap_or(0);
        let code = StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(respond(
            &name,
            code,
            crate::client::full(format!("failing; read {n} bytes\n")),
        ));
    }
    handle(name, req).await
}

async fn handle(name: String, mut req: Request<Incoming>) -> Result<Response<TestBody>, BoxError> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    Ok(match head {
        "" => respond(&name, StatusCode::OK, crate::client::full("ok\n")),
        "echo" => respond(
            &name,
            StatusCode::OK,
            crate::client::full(echo_json(&req).to_string()),
        ),
        "inspect" => {
            let mut v = echo_json(&req);
            let mut body = req.into_body();
            let mut n: u64 = 0;
            let mut trailers = serde_json::Map::new();
            while let Some(frame) = body.frame().await {
                let frame = frame?;
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    for (k, val) in t {
                        trailers.insert(
                            k.to_string(),
                            String::from_utf8_lossy(val.as_bytes()).into(),
                        );
                    }
                }
            }
            v["body_bytes"] = n.into();
            v["trailers"] = trailers.into();
            respond(&name, StatusCode::OK, crate::client::full(v.to_string()))
        }
        "hop" => {
            let mut r = respond(&name, StatusCode::OK, crate::client::full("hop\n"));
            let h = r.headers_mut();
            h.insert(header::CONNECTION, "x-resp-secret".parse().expect("hv"));
            h.insert("x-resp-secret", "1".parse().expect("hv"));
            h.insert("keep-alive", "timeout=5".parse().expect("hv"));
            h.insert("proxy-connection", "keep-alive".parse().expect("hv"));
            h.insert("x-resp-kept", "yes".parse().expect("hv"));
            r
        }
        "status" => {
            let code = arg
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            respond(&name, code, crate::client::full(format!("status {code}\n")))
        }
        "delay" => {
            let ms = arg.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            respond(&name, StatusCode::OK, crate::client::full("delayed\n"))
        }
        "download" => {
            let n = arg.parse().unwrap_or(0);
            respond(&name, StatusCode::OK, crate::client::generated(n))
        }
        "upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame?.into_data() {
                    n += d.len() as u64;
                }
            }
            respond(&name, StatusCode::OK, crate::client::full(n.to_string()))
        }
        "reflect" => {
            let body = req.into_body().collect().await?.to_bytes();
            respond(&name, StatusCode::OK, crate::client::full(body))
        }
        "trickle" => {
            let mut args = arg.splitn(2, '/');
            let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
            let ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
            let (tx, body) = crate::client::channel_body(1);
            tokio::spawn(async move {
                for i in 0..n {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if tx.send(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                        break;
                    }
                }
            });
            respond(&name, StatusCode::OK, body)
        }
        "ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = respond(
                &name,
                StatusCode::SWITCHING_PROTOCOLS,
                crate::client::empty(),
            );
            let h = r.headers_mut();
            h.insert(header::CONNECTION, "upgrade".parse().expect("hv"));
            h.insert(header::UPGRADE, "websocket".parse().expect("hv"));
            if let Some(k) = key {
                h.insert("sec-websocket-accept", k);
            }
            r
        }
        _ => respond(
            &name,
            StatusCode::NOT_FOUND,
            crate::client::full(Bytes::from_static(b"no such path\n")),
        ),
    })
}

/// What `/echo` answers: method, path, the request URI's authority (HTTP/2 `:authority`; null
/// for HTTP/1.1 origin-form), version and headers.
fn echo_json<B>(req: &Request<B>) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()),
        "authority": req.uri().authority().map(|a| a.as_str()),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    })
}

/// Accepts connections, reads the request head, and closes without answering.
pub async fn closing_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                drop(s);
            });
        }
    });
    (addr, task)
}
