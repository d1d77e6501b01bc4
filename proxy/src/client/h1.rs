//! Idle HTTP/1.1 keep-alive connections to one endpoint, owned by the endpoint's state.
//!
//! This replaces hyper_util's pooled client on the request path. That pool keys connections
//! by URI in a shared map under one lock, hands each request to the connection's task through
//! an extra channel hop, and wraps every response in its own put-back bookkeeping: about a
//! fifth of the proxy's user-space CPU per request in issue 11's profile. Here the endpoint is
//! already chosen, so its pool is at hand without a lookup. A request takes the most recently
//! used idle connection (the warmest, and it lets the least used ones idle out), sends on it
//! with hyper's bare `client::conn::http1`, and puts it back as soon as the response head
//! arrives. A connection whose response body is still streaming is not ready, so nobody else
//! takes it; it becomes ready by itself when the body ends.
//!
//! The lock is only held to pop or push a handle, never across an await. Connections idle
//! for longer than [`IDLE_TIMEOUT`] are dropped when next seen, as are closed ones.

use super::{LimitedConnector, UpstreamError};
use crate::body::RequestBody;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

/// How long an unused keep-alive connection is kept, as hyper_util's pool did (90 s): longer
/// than the usual server keep-alive timeout would only keep sockets the server has closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// One endpoint's idle HTTP/1.1 connections, most recently used last.
#[derive(Default)]
pub struct H1Pool {
    idle: Mutex<Vec<Idle>>,
}

impl H1Pool {
    /// The most recently used connection that can take a request now. Closed and expired
    /// ones are dropped on the way; busy ones (a response body still streaming) stay.
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
        let at = idle.iter().rposition(|c| c.sender.is_ready())?;
        Some(idle.swap_remove(at).sender)
    }

    fn put_back(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(idle);
    }

    /// Connections held (idle or with a response body streaming), for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

async fn connect(
    connector: &LimitedConnector,
    endpoint: &http::Uri,
) -> Result<SendRequest<RequestBody>, UpstreamError> {
    let io = connector
        .clone()
        .call(endpoint.clone())
        .await
        .map_err(UpstreamError::Connect)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    tokio::spawn(async move {
        // with_upgrades: a 101 answer (WebSocket) hands the connection to the tunnel.
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}

/// Sends `req` to the endpoint at `endpoint` over one of `pool`'s connections or a new one.
/// The request goes out in origin form (the proxy has already set `Host`).
pub async fn send(
    pool: &H1Pool,
    connector: &LimitedConnector,
    endpoint: &http::Uri,
    mut req: http::Request<RequestBody>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    if req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = pq.into();
    }
    // A pooled connection the server closed meanwhile gives the request back unsent; it then
    // goes on a new connection, once.
    if let Some(mut sender) = pool.checkout() {
        match sender.try_send_request(req).await {
            Ok(res) => {
                pool.put_back(sender);
                return Ok(res);
            }
            Err(mut e) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(UpstreamError::Http(e.into_error())),
            },
        }
    }
    let mut sender = connect(connector, endpoint).await?;
    // A new connection that fails before sending is a connect failure: nothing reached the app.
    sender
        .ready()
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(UpstreamError::Http)?;
    pool.put_back(sender);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// A keep-alive HTTP/1.1 server on loopback that answers with the request's path (and,
    /// for `/big`, 4 MiB after it: more than socket buffers hold) and counts the connections
    /// it accepts.
    async fn server() -> (http::Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri = format!("http://{}", listener.local_addr().expect("addr"))
            .parse()
            .expect("uri");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(tcp),
                    hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                        let mut path = req.uri().to_string().into_bytes();
                        if req.uri().path() == "/big" {
                            path.resize(4 << 20, b'.');
                        }
                        let path = Bytes::from(path);
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(path)))
                    }),
                ));
            }
        });
        (uri, accepted)
    }

    fn request(path: &str) -> http::Request<RequestBody> {
        http::Request::builder()
            .uri(format!("http://app.test{path}"))
            .header(http::header::HOST, "app.test")
            .body(RequestBody::Empty)
            .expect("valid request")
    }

    async fn body(res: http::Response<Incoming>) -> Bytes {
        res.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection_in_origin_form() {
        let (uri, accepted) = server().await;
        let pool = H1Pool::default();
        let connector = LimitedConnector::new(HttpConnector::new(), 10, Duration::from_secs(3));
        for i in 0..5 {
            let res = send(&pool, &connector, &uri, request(&format!("/n/{i}?q=1")))
                .await
                .expect("answered");
            assert_eq!(body(res).await, format!("/n/{i}?q=1"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.held(), 1);
    }

    #[tokio::test]
    async fn a_connection_whose_body_is_unread_is_not_handed_out() {
        let (uri, accepted) = server().await;
        let pool = H1Pool::default();
        let connector = LimitedConnector::new(HttpConnector::new(), 10, Duration::from_secs(3));
        let first = send(&pool, &connector, &uri, request("/big"))
            .await
            .expect("answered");
        // The first response's body is still unread, and too large to have been read off the
        // wire: its connection is busy.
        let second = send(&pool, &connector, &uri, request("/b"))
            .await
            .expect("answered");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(body(second).await, "/b");
        assert_eq!(body(first).await.len(), 4 << 20);
        // Both are back and ready: the next two requests open nothing new.
        for p in ["/c", "/d"] {
            let res = send(&pool, &connector, &uri, request(p))
                .await
                .expect("answered");
            assert_eq!(body(res).await, p);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_failure() {
        let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri: http::Uri = format!("http://{}", dead.local_addr().expect("addr"))
            .parse()
            .expect("uri");
        drop(dead);
        let pool = H1Pool::default();
        let connector = LimitedConnector::new(HttpConnector::new(), 10, Duration::from_secs(3));
        let err = send(&pool, &connector, &uri, request("/"))
            .await
            .expect_err("refused");
        assert!(matches!(err, UpstreamError::Connect(_)), "got {err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire() {
        let (uri, accepted) = server().await;
        let pool = H1Pool::default();
        let connector = LimitedConnector::new(HttpConnector::new(), 10, Duration::from_secs(3));
        let res = send(&pool, &connector, &uri, request("/"))
            .await
            .expect("ok");
        body(res).await;
        tokio::time::advance(IDLE_TIMEOUT).await;
        let res = send(&pool, &connector, &uri, request("/"))
            .await
            .expect("ok");
        body(res).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the expired one was not reused"
        );
        assert_eq!(pool.held(), 1);
    }
}
