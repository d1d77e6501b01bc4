//! One multiplexed HTTP/2 connection per endpoint and TLS setting, opened on first use and
//! replaced when it closes. Owning the connection (rather than a pool keyed by URI) lets each
//! request carry the app's own `:authority` while it travels to the endpoint's address.
//!
//! A slot belongs to one TLS setting (off, or mTLS expecting one peer identity under one set
//! of roots) and connects only with it. A snapshot that changes the setting gets a new slot
//! (`EndpointState::h2_slot`), so no request ever rides a connection that was verified under
//! other rules; the old slot, and with it its connection, goes when the last snapshot using it
//! does, after the requests in flight on it finish.
//!
//! Only one connect runs per slot at a time. Requests that find no connection wait for the
//! one being made instead of each opening their own: a burst after an idle period (or after
//! the connection dropped) would otherwise open up to `max_connections` TCP and TLS
//! handshakes to one endpoint, all but one thrown away. If that connect fails, the requests
//! that waited on it fail with it (as connect failures, so the retry policy treats them as
//! such), rather than each trying again in turn behind the gate.

use super::{LimitedConnector, UpstreamError};
use crate::body::RequestBody;
use crate::tls::config::{ClientTls, PeerTrust};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tower_service::Service;

/// The connect that a request waited on failed; the request was not sent.
#[derive(Debug, thiserror::Error)]
#[error("the connection this request waited for could not be opened")]
pub struct WaitedConnectFailed;

/// The endpoint's connection under one TLS setting, if one is open. The lock is only held to
/// copy or swap the handle, never across an await.
pub struct H2Slot {
    conn: Mutex<Option<SendRequest<RequestBody>>>,
    /// The single-connect gate. It is an async lock held across the connect on purpose: that
    /// is the wait. Requests only reach it when no connection is open, never on the hot path.
    connecting: tokio::sync::Mutex<()>,
    /// Connects that failed, so a request that waited at the gate can tell its connect failed.
    failed_connects: AtomicU64,
    tls: Option<ClientTls>,
}

impl H2Slot {
    pub fn new(tls: Option<ClientTls>) -> Self {
        Self {
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            failed_connects: AtomicU64::new(0),
            tls,
        }
    }

    /// The open connection, or the one this request opens (or waits for) now.
    async fn open(
        &self,
        connector: &LimitedConnector,
        endpoint: &http::Uri,
        counters: &TlsCounters<'_>,
    ) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let failed_before = self.failed_connects.load(Ordering::Acquire);
        let _turn = self.connecting.lock().await;
        if let Some(live) = self.current() {
            return Ok(live);
        }
        if self.failed_connects.load(Ordering::Acquire) != failed_before {
            return Err(UpstreamError::Connect(Box::new(WaitedConnectFailed)));
        }
        match connect(connector, endpoint.clone(), self.tls.as_ref(), counters).await {
            Ok(new) => Ok(self.install(new)),
            Err(e) => {
                self.failed_connects.fetch_add(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Whether this slot's connections are made under `trust` (`None`: plaintext h2c).
    pub fn made_for(&self, trust: Option<&PeerTrust>) -> bool {
        self.tls.as_ref().map(|t| &t.trust) == trust
    }

    fn current(&self) -> Option<SendRequest<RequestBody>> {
        let s = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        s.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Keeps `new` unless a live connection is there already; returns the one to use.
    fn install(&self, new: SendRequest<RequestBody>) -> SendRequest<RequestBody> {
        let mut s = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        match s.as_ref().filter(|s| !s.is_closed()) {
            Some(live) => live.clone(),
            None => {
                *s = Some(new.clone());
                new
            }
        }
    }

    fn clear(&self) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Where a destination counts its mTLS handshakes.
pub struct TlsCounters<'a> {
    pub handshakes: &'a prometheus::IntCounter,
    pub failures: &'a prometheus::IntCounter,
}

async fn connect(
    connector: &LimitedConnector,
    endpoint: http::Uri,
    tls: Option<&ClientTls>,
    counters: &TlsCounters<'_>,
) -> Result<SendRequest<RequestBody>, UpstreamError> {
    match tls {
        None => {
            let io = connector
                .clone()
                .call(endpoint)
                .await
                .map_err(UpstreamError::Connect)?;
            handshake(io).await
        }
        Some(t) => match connector.connect_tls(endpoint, t.config.clone()).await {
            Ok(io) => {
                counters.handshakes.inc();
                handshake(io).await
            }
            Err(e) => {
                counters.failures.inc();
                Err(UpstreamError::Connect(e))
            }
        },
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<RequestBody>, UpstreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// Sends `req` (whose URI carries the app's authority) to the endpoint at `endpoint`, over
/// the slot's connection or a new one made under the slot's TLS setting.
pub async fn send(
    slot: &H2Slot,
    connector: &LimitedConnector,
    endpoint: &http::Uri,
    counters: &TlsCounters<'_>,
    req: http::Request<RequestBody>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    let mut req = req;
    // One fresh connection is tried if the cached one turns out to be closing.
    for _ in 0..2 {
        let mut sender = match slot.current() {
            Some(s) => s,
            None => slot.open(connector, endpoint, counters).await?,
        };
        if sender.ready().await.is_err() {
            slot.clear();
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(res) => return Ok(res),
            Err(mut e) => match e.take_message() {
                // Never written to the connection: safe to send on a new one.
                Some(back) => {
                    slot.clear();
                    req = back;
                }
                None => return Err(UpstreamError::Http(e.into_error())),
            },
        }
    }
    let mut sender = slot.open(connector, endpoint, counters).await?;
    sender.ready().await?;
    Ok(sender.send_request(req).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    fn counters() -> (prometheus::IntCounter, prometheus::IntCounter) {
        let c = || prometheus::IntCounter::new("c", "c").expect("valid metric");
        (c(), c())
    }

    fn request() -> http::Request<RequestBody> {
        http::Request::builder()
            .uri("http://app.test/")
            .body(RequestBody::Empty)
            .expect("valid request")
    }

    /// An h2c server on loopback that answers 200 and counts the connections it accepts.
    async fn h2c_server() -> (http::Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri = format!("http://{}", listener.local_addr().expect("addr"))
            .parse()
            .expect("uri");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(
                            TokioIo::new(tcp),
                            hyper::service::service_fn(|_req| async {
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Empty::<bytes::Bytes>::new(),
                                ))
                            }),
                        ),
                );
            }
        });
        (uri, accepted)
    }

    #[tokio::test]
    async fn a_burst_on_a_cold_slot_opens_one_connection() {
        let (uri, accepted) = h2c_server().await;
        let slot = Arc::new(H2Slot::new(None));
        let connector = LimitedConnector::new(HttpConnector::new(), 100, Duration::from_secs(3));
        let (ok, failed) = counters();
        let burst = (0..50).map(|_| {
            let (slot, connector, uri) = (slot.clone(), connector.clone(), uri.clone());
            let (ok, failed) = (ok.clone(), failed.clone());
            tokio::spawn(async move {
                let c = TlsCounters {
                    handshakes: &ok,
                    failures: &failed,
                };
                send(&slot, &connector, &uri, &c, request())
                    .await
                    .map(|r| r.status())
            })
        });
        for r in futures_join(burst).await {
            assert_eq!(r.expect("task").expect("answered"), http::StatusCode::OK);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connect for the burst"
        );
    }

    #[tokio::test]
    async fn requests_that_waited_on_a_failed_connect_fail_without_connecting_again() {
        // A port with nothing listening: every connect is refused at once.
        let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri: http::Uri = format!("http://{}", dead.local_addr().expect("addr"))
            .parse()
            .expect("uri");
        drop(dead);
        let slot = H2Slot::new(None);
        let connector = LimitedConnector::new(HttpConnector::new(), 100, Duration::from_secs(3));
        let (ok, failed) = counters();
        let c = TlsCounters {
            handshakes: &ok,
            failures: &failed,
        };
        // Hold the gate so both requests queue behind one connect.
        let gate = slot.connecting.lock().await;
        let first = send(&slot, &connector, &uri, &c, request());
        let second = send(&slot, &connector, &uri, &c, request());
        let released = async {
            tokio::task::yield_now().await;
            drop(gate);
        };
        let (a, b, ()) = tokio::join!(first, second, released);
        let errors = [a.expect_err("refused"), b.expect_err("refused")];
        assert!(errors
            .iter()
            .all(|e| matches!(e, UpstreamError::Connect(_))));
        let waited = errors
            .iter()
            .filter(|e| matches!(e, UpstreamError::Connect(c) if c.is::<WaitedConnectFailed>()))
            .count();
        assert_eq!(
            waited, 1,
            "the second request shared the first one's failure"
        );
        assert_eq!(slot.failed_connects.load(Ordering::SeqCst), 1);
    }

    async fn futures_join<T>(
        tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<Result<T, tokio::task::JoinError>> {
        let mut out = Vec::new();
        for t in tasks.collect::<Vec<_>>() {
            out.push(t.await);
        }
        out
    }
}
