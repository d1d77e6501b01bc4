//! Running the control plane: open the store and the CA in it, start the state task, get the
//! serving certificate, bind, serve HTTPS until the shutdown signal, then end the push streams
//! so connections can close. Each TLS connection's verified workload identity is handed to
//! the API with every request on it.

use crate::access::OperatorTokens;
use crate::api::{self, AppState, Peer};
use crate::auth::Token;
use crate::ca::{Authority, CaError, CaOptions};
use crate::clock;
use crate::metrics::Metrics;
use crate::push::{Sidecars, KEEPALIVE};
use crate::state;
use crate::store::{Change, Loaded, Store, StoreError};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use outrigger_config::{MtlsMode, DEFAULT_TRUST_DOMAIN};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long shutdown waits for open connections after the push streams have ended.
const GRACE: Duration = Duration::from_secs(5);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// From accept (or the end of the previous response) to a complete request head; hyper's
/// default. Sidecars send their heads at once and reconnect quickly, so nothing legitimate
/// comes near it; Envoy's `request_headers_timeout` is off by default and Linkerd's
/// destination service (gRPC-Go) has none, which leaves a slowloris client a descriptor
/// forever.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once. Each sidecar holds about two (its push stream, and its pooled
/// registry and certificate calls), so 20,000 serves 10,000 sidecars, while a flood of
/// connections cannot take every descriptor. Envoy and Linkerd's control plane set no cap by
/// default (Envoy's overload manager example uses 50,000 for an edge proxy, which fronts far
/// more clients than a control plane).
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Largest request body on every route but `/v1/apply` (which takes up to 32 MiB,
/// `APPLY_BODY_LIMIT`). The largest other body is a certificate request or an instance
/// registration, a few KiB; 1 MiB is Envoy's default per-stream buffer limit, and Linkerd's
/// API takes no request bodies this large either.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The one route with a larger body limit of its own (see `api::resources`).
const APPLY_PATH: &str = "/v1/apply";
/// Of a leaf certificate, unless `--cert-lifetime` says otherwise.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The admin token: everything.
    pub token: Token,
    /// A reader token: GETs only.
    pub reader_token: Option<Token>,
    /// DNS names and IPs in the serving certificate (see [`crate::tls::default_names`]).
    pub server_names: Vec<String>,
    /// Plain HTTP, for development only: no server authentication, no workload identities.
    pub insecure_plaintext: bool,
    /// Where the trust bundle is written (default `<data_dir>/trust-bundle.pem`).
    pub bundle_file: Option<PathBuf>,
    /// Between keepalive lines on push streams.
    pub keepalive: Duration,
    /// Identities are `spiffe://<trust_domain>/service/<name>`.
    pub trust_domain: String,
    pub cert_lifetime: Duration,
    /// The mTLS mode pushed to the sidecars.
    pub mtls: MtlsMode,
    /// An operator's root CA: (certificate file, key file); else one is made under
    /// `<data_dir>/ca` on first start.
    pub ca_root: Option<(PathBuf, PathBuf)>,
    /// Connections open at once; a new one beyond this is closed at accept.
    pub max_connections: usize,
    /// A connection whose next request head is not complete by then is closed.
    pub header_read_timeout: Duration,
    /// Largest request body on every route but `/v1/apply`; a larger one gets 413.
    pub max_body_bytes: usize,
}

/// What [`serve`] holds each connection to, with the counters that tell when a bound bit.
struct Bounds {
    header_read_timeout: Duration,
    max_body_bytes: usize,
    header_timeouts: prometheus::IntCounter,
    too_large: prometheus::IntCounter,
}

impl Options {
    pub fn new(listen: SocketAddr, data_dir: PathBuf, token: Token) -> Self {
        Self {
            listen,
            data_dir,
            token,
            reader_token: None,
            server_names: crate::tls::default_names(listen.ip()),
            insecure_plaintext: false,
            bundle_file: None,
            keepalive: KEEPALIVE,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cert_lifetime: DEFAULT_CERT_LIFETIME,
            mtls: MtlsMode::Strict,
            ca_root: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    fn ca(&self) -> CaOptions {
        CaOptions {
            dir: self.data_dir.join("ca"),
            trust_domain: self.trust_domain.clone(),
            cert_lifetime: self.cert_lifetime,
            mode: self.mtls,
            operator_root: self.ca_root.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Opens the store and the CA from it; on first start (or with a new operator root) the CA's
/// root is stored before anything else happens. Blocking: key generation and disk writes.
pub fn open(data_dir: &Path, ca: CaOptions) -> Result<(Store, Loaded, Authority), ServeError> {
    let (store, mut loaded) = Store::open(data_dir)?;
    let (ca, changes) = Authority::open(ca, std::mem::take(&mut loaded.ca), clock::now())?;
    if !changes.is_empty() {
        let changes: Vec<Change> = changes.into_iter().map(Change::Ca).collect();
        store.commit(&changes, loaded.high_water)?;
    }
    Ok((store, loaded, ca))
}

/// Serves until `shutdown` completes.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Metrics::new()?;
    let data_dir = options.data_dir.clone();
    let ca_options = options.ca();
    let (store, loaded, ca) = tokio::task::spawn_blocking(move || open(&data_dir, ca_options))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    tracing::info!(
        data_dir = %options.data_dir.display(),
        resources = loaded.resources.len(),
        revision = loaded.high_water,
        "store open"
    );
    tracing::info!(
        trust_domain = %ca.trust_domain(),
        active_root = %ca.active_id(),
        roots = ca.trust_bundle().len(),
        mtls = ?options.mtls,
        cert_lifetime = %humantime::format_duration(options.cert_lifetime),
        "CA ready"
    );
    let trust_domain = ca.trust_domain().to_string();
    let state = state::start(store, loaded, ca, metrics.clone());
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_tx, stop_rx) = watch::channel(false);
    let names = if options.insecure_plaintext {
        tracing::warn!("INSECURE: --insecure-dev-plaintext serves the API in plain HTTP: tokens travel in the clear and no client can tell this control plane from an impostor; development only");
        None
    } else {
        Some(crate::tls::server_names(&options.server_names)?)
    };
    let bundle_file = options
        .bundle_file
        .clone()
        .unwrap_or_else(|| options.data_dir.join("trust-bundle.pem"));
    // Kept beside the CA so sidecars resume their sessions across restarts.
    let tickets = crate::tls::TicketSecret::load_or_create(&options.data_dir)
        .map_err(crate::tls::TlsError::from)?;
    let tls = crate::tls::start(
        state.clone(),
        names,
        bundle_file.clone(),
        tickets,
        stop_rx.clone(),
    )
    .await?;
    tracing::info!(file = %bundle_file.display(), "trust bundle written: hand it out as the trust anchors");
    let sidecars = Arc::new(Sidecars::new(metrics.clone()));
    tokio::spawn(crate::rollout::run(
        state.clone(),
        sidecars.clone(),
        stop_rx.clone(),
    ));
    let app = AppState {
        state,
        sidecars,
        lines: Arc::default(),
        metrics,
        tokens: Arc::new(OperatorTokens {
            admin: options.token,
            reader: options.reader_token,
        }),
        ready: ready.clone(),
        keepalive: options.keepalive,
        shutdown: stop_rx,
    };
    let listener = listen(options.listen).map_err(|source| ServeError::Bind {
        addr: options.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: options.listen,
        source,
    })?;
    tracing::info!(addr = %addr, tls = tls.is_some(), "listening");

    let limits = &app.metrics.connection_limits;
    let refused = limits.with_label_values(&["max_connections"]);
    let bounds = Arc::new(Bounds {
        header_read_timeout: options.header_read_timeout,
        max_body_bytes: options.max_body_bytes,
        header_timeouts: limits.with_label_values(&["header_read_timeout"]),
        too_large: limits.with_label_values(&["max_body_bytes"]),
    });
    let handshakes = [
        app.metrics.tls_handshakes.with_label_values(&["full"]),
        app.metrics.tls_handshakes.with_label_values(&["resumed"]),
    ];
    let connections = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let router = api::router(app);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, from) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Closed at once, so the client learns now and the backlog keeps draining.
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            refused.inc();
            tracing::debug!(peer = %from, "connection refused: max_connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let bounds = bounds.clone();
        let watcher = graceful.watcher();
        let tls = tls.as_ref().map(|t| t.current());
        let trust_domain = trust_domain.clone();
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve(watcher, stream, router, Peer { workload: None }, &bounds).await,
                Some(cfg) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %from, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let resumed =
                        tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    handshakes[usize::from(resumed)].inc();
                    let workload = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::tls::workload_service(c, &trust_domain));
                    let peer = Peer {
                        workload: workload.map(Arc::from),
                    };
                    serve(watcher, tls, router, peer, &bounds).await
                }
            }
        });
    }
    tracing::info!("shutting down");
    ready.store(false, Ordering::Relaxed);
    // Push streams never end by themselves; this ends them.
    let _ = stop_tx.send(true);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Pending connections the kernel queues before `accept`. When the control plane restarts,
/// every sidecar reconnects within the same second; at the usual 128 the kernel drops the
/// rest and each of them waits out a 1 s retry. 4096 holds a thousand sidecars' streams and
/// their ACK and registry calls (Linux caps it at `net.core.somaxconn`, 4096 by default).
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind does: a restart may bind while the last run's connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// One connection: HTTP/1.1, every request tagged with who the connection proved to be, its
/// head due within the header read timeout and its body held to the route's limit (a body
/// declared larger is refused before anything reads it; one that grows past it fails the
/// handler's read, which axum answers with 413).
async fn serve<I>(
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    router: axum::Router,
    peer: Peer,
    bounds: &Arc<Bounds>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower_service::Service;
    let limits = bounds.clone();
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let mut router = router.clone();
        let limit = if req.uri().path() == APPLY_PATH {
            // Its handler holds it to its own, larger limit and names it.
            usize::MAX
        } else {
            limits.max_body_bytes
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let refused = declared
            .is_some_and(|n| n > limit as u64)
            .then(|| too_large(&limits));
        let req = req.map(|b| http_body_util::Limited::new(b, limit));
        async move {
            match refused {
                Some(r) => Ok(r),
                None => router.call(req).await,
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        if e.is_timeout() {
            bounds.header_timeouts.inc();
        }
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn too_large(bounds: &Bounds) -> axum::response::Response {
    use axum::response::IntoResponse;
    bounds.too_large.inc();
    let reason = format!(
        "the body is larger than this route's limit of {} bytes (max_body_bytes)",
        bounds.max_body_bytes
    );
    crate::api::ApiError::TooLarge(reason).into_response()
}
