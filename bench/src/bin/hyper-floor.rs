//! The floor under any proxy built on hyper and tokio: a proxy that does nothing but forward.
//!
//! No routing, retries, metrics, headers or TLS: the hyper server (HTTP/1.1 and h2c, the
//! same `auto` builder the sidecar uses) hands each request to a hyper client and streams the
//! answer back. Whatever this costs per request, Outrigger cannot cost less while it stays on
//! hyper; `bench/ab.sh` measures it beside the sidecar and nginx (issue 11, RESULTS.md).
//!
//! `FLOOR_CLIENT` picks the client:
//! - `legacy` (the default): hyper_util's pooled client, as the sidecar uses;
//! - `conn`: a bare `hyper::client::conn::http1` connection per downstream connection, no
//!   pool, no task hop for checkout — the cheapest client hyper offers.
//!
//! It takes the sidecar's flags that `ab.sh` passes and ignores those it has no use for.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

struct Args {
    listen: String,
    upstream: String,
    threads: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        listen: "127.0.0.1:18290".into(),
        upstream: "127.0.0.1:18280".into(),
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--listen" => out.listen = it.next().context("--listen needs a value")?,
            "--upstream" => out.upstream = it.next().context("--upstream needs a value")?,
            "--threads" => out.threads = it.next().context("--threads needs a value")?.parse()?,
            // The sidecar's flags that ab.sh passes and the floor has no use for.
            "--admin" | "--log" => {
                it.next();
            }
            "--no-access-log" => {}
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(out)
}

/// The upstream client: hyper_util's pool, or one bare HTTP/1.1 connection per downstream
/// connection (more for h2c, whose streams run at once; kept on a small free list).
#[derive(Clone)]
enum Upstream {
    Legacy(Box<Client<HttpConnector, Incoming>>),
    Conn(Arc<Mutex<Vec<SendRequest<Incoming>>>>),
}

async fn forward(up: Upstream, addr: Arc<str>, mut req: Request<Incoming>) -> Response<Body> {
    // An h2c request goes upstream as HTTP/1.1, with its `:authority` as Host (as the proxy
    // does): hyper's HTTP/1 client refuses an HTTP/2 request, and nginx a Host-less one.
    if req.version() == hyper::Version::HTTP_2 {
        *req.version_mut() = hyper::Version::HTTP_11;
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| hyper::header::HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(hyper::header::HOST, host);
        }
    }
    let result = match up {
        Upstream::Legacy(client) => {
            let uri = format!("http://{addr}{}", req.uri().path());
            match uri.parse::<Uri>() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return status(StatusCode::BAD_REQUEST),
            }
            client.request(req).await.map_err(|_| ())
        }
        Upstream::Conn(free) => {
            let idle = free.lock().ok().and_then(|mut v| v.pop());
            let mut sender = match idle {
                Some(s) if s.is_ready() => s,
                _ => match dial(&addr).await {
                    Ok(s) => s,
                    Err(_) => return status(StatusCode::BAD_GATEWAY),
                },
            };
            // HTTP/1 clients send origin-form; h2c requests arrive with an absolute URI.
            if req.uri().authority().is_some() {
                if let Ok(uri) = req.uri().path().parse::<Uri>() {
                    *req.uri_mut() = uri;
                }
            }
            let res = sender.send_request(req).await.map_err(|_| ());
            if let Ok(mut v) = free.lock() {
                v.push(sender);
            }
            res
        }
    };
    match result {
        Ok(res) => res.map(|b| b.boxed_unsync()),
        Err(()) => status(StatusCode::BAD_GATEWAY),
    }
}

/// A new HTTP/1.1 connection to the upstream; any failure is a 502 to the caller.
async fn dial(addr: &str) -> Result<SendRequest<Incoming>, ()> {
    let stream = TcpStream::connect(addr).await.map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    tokio::spawn(conn);
    Ok(sender)
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(
        http_body_util::Empty::new()
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *res.status_mut() = code;
    res
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen).await?;
    let addr: Arc<str> = args.upstream.into();
    let conn_mode = std::env::var("FLOOR_CLIENT").as_deref() == Ok("conn");
    let legacy = {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let mut b = Client::builder(TokioExecutor::new());
        b.timer(TokioTimer::new()).pool_timer(TokioTimer::new());
        b.build(http)
    };
    let mut server = auto::Builder::new(TokioExecutor::new());
    server.http1().timer(TokioTimer::new());
    server.http2().timer(TokioTimer::new());
    let server = Arc::new(server);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let up = if conn_mode {
            Upstream::Conn(Arc::default())
        } else {
            Upstream::Legacy(Box::new(legacy.clone()))
        };
        let addr = addr.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (up, addr) = (up.clone(), addr.clone());
                async move { Ok::<_, Infallible>(forward(up, addr, req).await) }
            });
            let _ = server.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args))
}
