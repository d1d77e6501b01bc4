//! One multiplexed HTTP/2 connection per endpoint and TLS setting, opened on first use and
//! replaced when it closes. Owning the connection (rather than a pool keyed by URI) lets each
//! request carry the app's own `:authority` while it travels to the endpoint's address.
//!
//! A slot belongs to one TLS setting (off, or mTLS expecting one peer identity under one set
//! of roots) and connects only with it. A snapshot that changes the setting gets a new slot
//! (`EndpointState::h2_slot`), so no request ever rides a connection that was verified under
//! other rules; the old slot, and with it its connection, goes when the last snapshot using it
//! does, after the requests in flight on it finish.

use super::LimitedConnector;
use crate::body::RequestBody;
use crate::tls::config::{ClientTls, PeerTrust};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tower_service::Service;

use crate::error::BoxError;

#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error("connect: {0}")]
    Connect(BoxError),
    #[error("http/2: {0}")]
    Http(#[from] hyper::Error),
}

/// The endpoint's connection under one TLS setting, if one is open. The lock is only held to
/// copy or swap the handle, never across an await.
pub struct H2Slot {
    conn: Mutex<Option<SendRequest<RequestBody>>>,
    tls: Option<ClientTls>,
}

impl H2Slot {
    pub fn new(tls: Option<ClientTls>) -> Self {
        Self {
            conn: Mutex::new(None),
            tls,
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

    /// Keeps `new` unless another task opened a live connection meanwhile; returns the one
    /// to use. (Two tasks racing at a cold start may open two; the loser's closes when its
    /// request is done.)
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
) -> Result<SendRequest<RequestBody>, H2Error> {
    match tls {
        None => {
            let io = connector
                .clone()
                .call(endpoint)
                .await
                .map_err(H2Error::Connect)?;
            handshake(io).await
        }
        Some(t) => match connector.connect_tls(endpoint, t.config.clone()).await {
            Ok(io) => {
                counters.handshakes.inc();
                handshake(io).await
            }
            Err(e) => {
                counters.failures.inc();
                Err(H2Error::Connect(e))
            }
        },
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<RequestBody>, H2Error>
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
) -> Result<http::Response<Incoming>, H2Error> {
    let tls = slot.tls.as_ref();
    let mut req = req;
    // One fresh connection is tried if the cached one turns out to be closing.
    for _ in 0..2 {
        let mut sender = match slot.current() {
            Some(s) => s,
            None => slot.install(connect(connector, endpoint.clone(), tls, counters).await?),
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
                None => return Err(H2Error::Http(e.into_error())),
            },
        }
    }
    let sender = slot.install(connect(connector, endpoint.clone(), tls, counters).await?);
    let mut sender = sender;
    sender.ready().await?;
    Ok(sender.send_request(req).await?)
}
