//! Message framing through the real proxy, byte for byte on raw sockets: what a malformed
//! request head gets (400, and nothing reaches the upstream), a chunk error in the middle of
//! a streamed body (400, the upstream's request cut off), the `Host` rules, and how an
//! upstream's response framing is relayed as RFC 9112 §6.3 says, against an upstream that
//! writes its bytes by hand.

use outrigger_tests::client::{self, head_header, read_head, TestBody};
use outrigger_tests::eventually;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// An upstream that answers each request head with the bytes `script` gives for its request
/// line, then closes the connection if told to. It reads a request's body only as far as its
/// Content-Length or the end of its chunks, and counts its connections, the ones that ended
/// before their request did, the requests that came on a connection after an answer whose
/// framing leaves it unusable, and every byte it received.
struct RawUpstream {
    addr: SocketAddr,
    counts: Arc<Counts>,
    received: Arc<Mutex<Vec<u8>>>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    cut_off: AtomicUsize,
    reused_after_bad: AtomicUsize,
}

/// What the raw upstream writes for a request line.
struct Answer {
    bytes: &'static [u8],
    close: bool,
    /// Its framing is broken or leaves bytes behind: the connection must not carry another
    /// request.
    bad: bool,
}

type Script = fn(&str) -> Answer;

const OK: Answer = Answer {
    bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n",
    close: false,
    bad: false,
};

impl RawUpstream {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counts = Arc::new(Counts::default());
        let received = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (counts.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                c.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(s, script, c.clone(), r.clone()));
            }
        });
        Self {
            addr,
            counts,
            received,
        }
    }

    fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    fn reused_after_bad(&self) -> usize {
        self.counts.reused_after_bad.load(Ordering::SeqCst)
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned()
    }
}

async fn serve_raw(
    mut s: TcpStream,
    script: Script,
    counts: Arc<Counts>,
    received: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut tainted = false;
    loop {
        // One request: its head, then its body as far as its framing says.
        let complete = |buf: &[u8]| -> Option<(String, usize)> {
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body = &buf[end..];
            if let Some(n) = head_header(&head, "content-length").and_then(|v| v.parse().ok()) {
                return (body.len() >= n).then_some((head, end + n));
            }
            if head_header(&head, "transfer-encoding").is_some() {
                let last = body.windows(5).position(|w| w == b"0\r\n\r\n")?;
                return Some((head, end + last + 5));
            }
            Some((head, end))
        };
        let (head, used) = loop {
            if let Some(done) = complete(&buf) {
                break done;
            }
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if !buf.is_empty() {
                        counts.cut_off.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                Ok(n) => n,
            };
            received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..used);
        if tainted {
            counts.reused_after_bad.fetch_add(1, Ordering::SeqCst);
        }
        let answer = script(head.lines().next().unwrap_or(""));
        tainted = answer.bad;
        if s.write_all(answer.bytes).await.is_err() || answer.close {
            return;
        }
    }
}

async fn proxy_to(upstream: SocketAddr) -> Proxy {
    ProxyBuilder::quick(upstream).spawn().ready().await
}

/// Reads one response from a raw stream, decoding its body by its own framing: none for HEAD,
/// 1xx, 204 and 304, Content-Length, chunked, or up to the close.
async fn read_one(s: &mut TcpStream, head_request: bool) -> (String, Vec<u8>) {
    let (head, mut rest) = read_head(s, WAIT).await;
    let status: u16 = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    if head_request || status < 200 || status == 204 || status == 304 {
        assert!(rest.is_empty(), "bytes after a bodiless response: {rest:?}");
        return (head, Vec::new());
    }
    if let Some(n) = head_header(&head, "content-length").and_then(|v| v.parse().ok()) {
        fill(s, &mut rest, n).await;
        return (head, rest);
    }
    if head_header(&head, "transfer-encoding") == Some("chunked") {
        let mut body = Vec::new();
        loop {
            while !rest.windows(2).any(|w| w == b"\r\n") {
                let need = rest.len() + 1;
                fill(s, &mut rest, need).await;
            }
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
            let size = usize::from_str_radix(&String::from_utf8_lossy(&rest[..eol]), 16)
                .expect("chunk size");
            fill(s, &mut rest, eol + 2 + size + 2).await;
            body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest.drain(..eol + 2 + size + 2);
            if size == 0 {
                return (head, body);
            }
        }
    }
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    (head, rest)
}

/// Reads into `rest` until it holds `need` bytes.
async fn fill(s: &mut TcpStream, rest: &mut Vec<u8>, need: usize) {
    let mut more = vec![0u8; need.saturating_sub(rest.len())];
    tokio::time::timeout(WAIT, s.read_exact(&mut more))
        .await
        .expect("body in time")
        .expect("read body");
    rest.extend_from_slice(&more);
}

/// Whether the peer has closed `s` (reads EOF) within the wait.
async fn closes(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn connect(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(proxy.outbound()).await.expect("connect")
}

/// One request on a fresh connection: the response head and body.
async fn exchange(proxy: &Proxy, request: &str) -> (String, Vec<u8>) {
    let mut s = connect(proxy).await;
    s.write_all(request.as_bytes()).await.expect("write");
    read_one(&mut s, request.starts_with("HEAD ")).await
}

fn status(head: &str) -> &str {
    head.get(..12).unwrap_or(head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_heads_get_400_and_never_reach_the_upstream() {
    let up = Upstream::start("app").await;
    let proxy = proxy_to(up.addr).await;
    // (request, what hyper's parser or the proxy refuses it for, the proxy's reason if its own)
    let cases: [(&str, &str, Option<&str>); 10] = [
        (
            "POST / HTTP/1.1\r\nhost: app\r\ncontent-length: abc\r\n\r\n",
            "invalid Content-Length",
            None,
        ),
        (
            "POST / HTTP/1.1\r\nhost: app\r\ncontent-length: +5\r\n\r\nhello",
            "signed Content-Length",
            None,
        ),
        (
            "POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            "differing Content-Lengths",
            None,
        ),
        (
            "POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 5, 6\r\n\r\nhello",
            "a Content-Length list that differs",
            None,
        ),
        (
            "POST / HTTP/1.1\r\nhost: app\r\ntransfer-encoding: gzip\r\n\r\nhello",
            "Transfer-Encoding not ending in chunked",
            None,
        ),
        (
            "POST / HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked, gzip\r\n\r\nhello",
            "chunked not the final coding",
            None,
        ),
        (
            "POST / HTTP/1.0\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "Transfer-Encoding in HTTP/1.0",
            None,
        ),
        (
            "POST / HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "a chunk size that is not hex, sent with the head",
            Some("malformed-body"),
        ),
        (
            "GET / HTTP/1.1\r\nhost: app\r\nhost: other\r\n\r\n",
            "two Host headers",
            Some("duplicate-host"),
        ),
        (
            "GET / HTTP/1.1\r\nhost: user@app\r\n\r\n",
            "a Host with userinfo",
            Some("invalid-host"),
        ),
    ];
    for (request, what, reason) in cases {
        let mut s = connect(&proxy).await;
        s.write_all(request.as_bytes()).await.expect("write");
        let (head, _) = read_head(&mut s, WAIT).await;
        assert_eq!(status(&head), "HTTP/1.1 400", "{what}: {head}");
        if let Some(reason) = reason {
            assert_eq!(
                head_header(&head, "x-outrigger-error"),
                Some(reason),
                "{what}"
            );
        }
    }
    assert_eq!(
        up.connections(),
        0,
        "a malformed request reached the upstream"
    );
    assert_eq!(up.requests(), 0);
    // A well-formed request does get through.
    let (head, body) = exchange(&proxy, "GET / HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert_eq!(status(&head), "HTTP/1.1 200");
    assert_eq!(body, b"ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_read_as_chunked_and_the_connection_closes() {
    // RFC 9112 §6.1 lets a server process such a request by its Transfer-Encoding alone, as
    // long as it closes the connection after responding; hyper's parser does, and drops the
    // Content-Length, so the upstream never sees the two disagree.
    let up = Upstream::start("app").await;
    let proxy = proxy_to(up.addr).await;
    let mut s = connect(&proxy).await;
    s.write_all(
        b"POST /inspect HTTP/1.1\r\nhost: app\r\ncontent-length: 3\r\n\
          transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let (head, body) = read_one(&mut s, false).await;
    assert_eq!(status(&head), "HTTP/1.1 200", "{head}");
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["body_bytes"], 5, "{seen}");
    assert!(seen["headers"].get("content-length").is_none(), "{seen}");
    assert!(
        closes(&mut s).await,
        "the connection stays open after CL+TE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_chunk_mid_body_gets_400_and_the_upstream_request_is_cut_off() {
    let up = RawUpstream::start(|_| OK).await;
    let proxy = proxy_to(up.addr).await;
    let mut s = connect(&proxy).await;
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .expect("write");
    // The head and the first chunk are streamed on before the body is over.
    eventually(WAIT, "the first chunk upstream", || {
        let got = up.received().contains("hello");
        async move { got.then_some(()) }
    })
    .await;
    s.write_all(b"zz\r\nnot a chunk\r\n").await.expect("write");
    let (head, body) = read_one(&mut s, false).await;
    assert_eq!(status(&head), "HTTP/1.1 400", "{head}");
    assert_eq!(
        head_header(&head, "x-outrigger-error"),
        Some("malformed-body")
    );
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(v["reason"], "malformed-body");
    assert!(closes(&mut s).await, "the client's connection is ended");
    eventually(WAIT, "the upstream's request to be cut off", || {
        let n = up.counts.cut_off.load(Ordering::SeqCst);
        async move { (n == 1).then_some(()) }
    })
    .await;
    let errors = proxy
        .metric_or_zero(
            "outrigger_proxy_errors_total",
            &[("reason", "malformed-body")],
        )
        .await;
    assert_eq!(errors, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_host_must_agree_with_authority() {
    let up = Upstream::start("app").await;
    let proxy = proxy_to(up.addr).await;
    let mut h2 = client::h2_conn(proxy.outbound()).await;
    let mut send = |host: Option<&str>| {
        let mut req = client::request("GET", "http://app/echo");
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let req: http::Request<TestBody> = req.body(client::empty()).expect("request");
        h2.send_request(req)
    };
    let res = client::collect(send(Some("other")).await.expect("response")).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-outrigger-error"], "host-mismatch");
    assert_eq!(up.requests(), 0, "a mismatched Host reached the upstream");
    let res = client::collect(send(Some("app")).await.expect("response")).await;
    assert_eq!(res.status(), 200);
    let res = client::collect(send(None).await.expect("response")).await;
    assert_eq!(res.status(), 200);
}

/// The raw upstream's answers, by request path.
fn scripted(line: &str) -> Answer {
    let path = line.split(' ').nth(1).unwrap_or("/");
    let answer = |bytes: &'static [u8], close: bool, bad: bool| Answer { bytes, close, bad };
    match path {
        "/te-and-cl" => answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
            false,
            false,
        ),
        "/cl-differ" => answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nhello",
            false,
            true,
        ),
        "/cl-invalid" => answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello",
            false,
            true,
        ),
        "/gzip" => answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n\x1f\x8b\x08\x00",
            true,
            true,
        ),
        "/cl-twice" => answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
            false,
            false,
        ),
        // The body a HEAD response describes is never sent.
        "/head" => answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            false,
            false,
        ),
        // Bytes after a bodiless response, shaped like a response of their own.
        "/no-content" => answer(
            b"HTTP/1.1 204 No Content\r\ncontent-length: 40\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsmuggle",
            false,
            true,
        ),
        "/not-modified" => answer(
            b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsmuggle",
            false,
            true,
        ),
        "/continue" => answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
            false,
            false,
        ),
        "/until-close" => answer(b"HTTP/1.1 200 OK\r\n\r\nhello, until close", true, false),
        "/http10" => answer(
            b"HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nold ok",
            true,
            false,
        ),
        "/http10-until-close" => answer(b"HTTP/1.0 200 OK\r\n\r\nold, until close", true, false),
        _ => OK,
    }
}

/// One request on an open connection: the response head and body.
async fn ask(s: &mut TcpStream, request: String) -> (String, Vec<u8>) {
    s.write_all(request.as_bytes()).await.expect("write");
    read_one(s, request.starts_with("HEAD ")).await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: app\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_upstream_framing_is_a_502_and_its_connection_is_not_reused() {
    let up = RawUpstream::start(scripted).await;
    let proxy = proxy_to(up.addr).await;
    for (path, reason) in [
        ("/cl-differ", "upstream-reset"),
        ("/cl-invalid", "upstream-reset"),
        ("/gzip", "upstream-framing"),
    ] {
        let (head, _) = exchange(&proxy, &get(path)).await;
        assert_eq!(status(&head), "HTTP/1.1 502", "{path}: {head}");
        assert_eq!(
            head_header(&head, "x-outrigger-error"),
            Some(reason),
            "{path}"
        );
        // Requests after it get well-framed answers, never over its connection.
        for _ in 0..3 {
            let (head, body) = exchange(&proxy, &get("/")).await;
            assert_eq!(status(&head), "HTTP/1.1 200", "after {path}: {head}");
            assert_eq!(body, b"ok\n");
        }
    }
    assert_eq!(
        up.reused_after_bad(),
        0,
        "a connection was reused after bad framing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framing_is_relayed_as_rfc_9112_says() {
    let up = RawUpstream::start(scripted).await;
    let proxy = proxy_to(up.addr).await;
    let mut s = connect(&proxy).await;
    // Transfer-Encoding wins over Content-Length, which does not go on.
    let (head, body) = ask(&mut s, get("/te-and-cl")).await;
    assert_eq!(status(&head), "HTTP/1.1 200", "{head}");
    assert_eq!(body, b"hello");
    assert_ne!(head_header(&head, "content-length"), Some("3"), "{head}");

    // One Content-Length repeated with one value is one Content-Length.
    let (head, body) = ask(&mut s, get("/cl-twice")).await;
    assert_eq!(body, b"hello");
    assert_eq!(head.matches("content-length").count(), 1, "{head}");

    // A HEAD response keeps the length of the body it does not carry.
    let (head, body) = ask(&mut s, "HEAD /head HTTP/1.1\r\nhost: app\r\n\r\n".into()).await;
    assert_eq!(status(&head), "HTTP/1.1 200", "{head}");
    assert_eq!(head_header(&head, "content-length"), Some("5"), "{head}");
    assert!(body.is_empty());

    // A 1xx is skipped for the final response.
    let (head, body) = ask(&mut s, get("/continue")).await;
    assert_eq!(status(&head), "HTTP/1.1 200", "{head}");
    assert_eq!(body, b"final");

    // 204 and 304 end at their head; what followed is never anyone's response.
    for (path, code) in [("/no-content", "204"), ("/not-modified", "304")] {
        let (head, _) = ask(&mut s, get(path)).await;
        assert_eq!(status(&head), format!("HTTP/1.1 {code}"), "{head}");
        assert_eq!(head_header(&head, "transfer-encoding"), None, "{head}");
        for _ in 0..3 {
            let (head, body) = ask(&mut s, get("/")).await;
            assert_eq!(status(&head), "HTTP/1.1 200", "after {path}: {head}");
            assert_eq!(body, b"ok\n", "after {path}");
        }
    }
    assert_eq!(
        up.reused_after_bad(),
        0,
        "a connection was reused after a 204/304"
    );

    // A body that runs until the upstream closes goes on chunked, on a connection that lasts.
    let (head, body) = ask(&mut s, get("/until-close")).await;
    assert_eq!(status(&head), "HTTP/1.1 200", "{head}");
    assert_eq!(
        head_header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    assert_eq!(body, b"hello, until close");
    let (head, _) = ask(&mut s, get("/")).await;
    assert_eq!(status(&head), "HTTP/1.1 200", "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upstream_does_not_downgrade_an_http11_client() {
    let up = RawUpstream::start(scripted).await;
    let proxy = proxy_to(up.addr).await;
    let mut s = connect(&proxy).await;
    for (path, want) in [
        ("/http10", &b"old ok"[..]),
        ("/http10", b"old ok"),
        ("/http10-until-close", b"old, until close"),
        ("/http10", b"old ok"),
    ] {
        s.write_all(get(path).as_bytes()).await.expect("write");
        let (head, body) = read_one(&mut s, false).await;
        assert_eq!(status(&head), "HTTP/1.1 200", "{path}: {head}");
        assert_ne!(head_header(&head, "connection"), Some("close"), "{head}");
        assert_eq!(body, want, "{path}");
    }
    // All four on the one client connection, while each took an upstream connection.
    assert_eq!(up.connections(), 4);
    // An HTTP/1.0 client is still answered in HTTP/1.0.
    let (head, body) = exchange(&proxy, "GET /http10 HTTP/1.0\r\nhost: app\r\n\r\n").await;
    assert_eq!(status(&head), "HTTP/1.0 200", "{head}");
    assert_eq!(body, b"old ok");
}
