//! Protocols through the real proxy binary: HTTP/1.1 and h2c on both sides, gRPC with its
//! status trailers (real grpcio client and server), WebSocket upgrade tunnels, 1 GiB up and
//! down in bounded memory, content-length and chunked bodies, hop-by-hop header removal
//! (RFC 9110 §7.6.1) in both directions, and `x-forwarded-for`.

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use outrigger_tests::client::{self, head_header, read_head, read_response, TestBody};
use outrigger_tests::eventually;
use outrigger_tests::proxy::{Proxy, ProxyBuilder};
use outrigger_tests::upstream::Upstream;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

const GIB: u64 = 1 << 30;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Two destinations in front of the same upstream (which speaks HTTP/1.1 and h2c on one
/// port): `h1app` over HTTP/1.1 and `h2app` over h2c. Routes allow two minutes for the
/// response head, so a 1 GiB upload (answered only once fully read) never races the default.
fn snapshot(app: SocketAddr) -> String {
    let dest = |name: &str, protocol: &str| {
        format!(
            "  - name: {name}\n    hosts: [{name}]\n    protocol: {protocol}\n    endpoints: [{{address: {app}}}]\n    routes:\n      - {{name: all, match: {{path_prefix: /}}, timeout: 120s}}\n"
        )
    };
    format!(
        "service: protocols\ndestinations:\n{}{}",
        dest("h1app", "http1"),
        dest("h2app", "http2")
    )
}

async fn proxy_for(app: &Upstream) -> Proxy {
    ProxyBuilder::file(&snapshot(app.addr), "")
        .spawn()
        .ready()
        .await
}

/// Sends one request through the proxy as an app would: HTTP/1.1 with `Host: authority`, or
/// h2c (prior knowledge) with `:authority` = `authority`. Returns the response with its body.
async fn via(
    proxy: SocketAddr,
    version: Version,
    authority: &str,
    req: http::request::Builder,
    body: TestBody,
) -> Response<Bytes> {
    let path = req
        .uri_ref()
        .and_then(|u| u.path_and_query())
        .map_or("/", |p| p.as_str())
        .to_string();
    if version == Version::HTTP_2 {
        let req = req
            .uri(format!("http://{authority}{path}"))
            .version(Version::HTTP_2)
            .body(body)
            .expect("request");
        let mut conn = client::h2_conn(proxy).await;
        let res = tokio::time::timeout(IO_TIMEOUT, conn.send_request(req))
            .await
            .expect("response within 30s")
            .expect("h2 request succeeds at the HTTP level");
        client::collect(res).await
    } else {
        let req = req
            .uri(format!("http://{proxy}{path}"))
            .header("host", authority)
            .body(body)
            .expect("request");
        client::send(&client::h1(), req).await
    }
}

fn json(res: &Response<Bytes>) -> Value {
    serde_json::from_slice(res.body()).unwrap_or_else(|e| {
        panic!(
            "JSON from the upstream ({e}): {}",
            String::from_utf8_lossy(res.body())
        )
    })
}

const COMBINATIONS: [(Version, &str, &str); 4] = [
    (Version::HTTP_11, "h1app", "HTTP/1.1"),
    (Version::HTTP_2, "h1app", "HTTP/1.1"),
    (Version::HTTP_11, "h2app", "HTTP/2.0"),
    (Version::HTTP_2, "h2app", "HTTP/2.0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_work_on_both_sides() {
    let app = Upstream::start("app").await;
    let proxy = proxy_for(&app).await;
    for (client_version, dest, upstream_version) in COMBINATIONS {
        let what = format!("{client_version:?} client -> {dest}");
        let authority = format!("{dest}:8080");
        let res = via(
            proxy.outbound(),
            client_version,
            &authority,
            client::request("GET", "/echo?q=1"),
            client::empty(),
        )
        .await;
        assert_eq!(res.status(), 200, "{what}: {:?}", res.body());
        assert_eq!(
            res.version(),
            client_version,
            "{what}: answered in the client's version"
        );
        assert_eq!(
            res.headers()["x-upstream"],
            "app",
            "{what}: the answer came from the upstream"
        );
        let v = json(&res);
        assert_eq!(
            v["version"], upstream_version,
            "{what}: version the upstream saw: {v}"
        );
        assert_eq!(v["method"], "GET", "{what}: {v}");
        assert_eq!(v["path"], "/echo?q=1", "{what}: {v}");
        if upstream_version == "HTTP/1.1" {
            assert_eq!(
                v["headers"]["host"],
                authority.as_str(),
                "{what}: the app's Host arrives as is: {v}"
            );
        }
    }
}

/// RFC 9113 §8.3.1: an intermediary forwarding over HTTP/2 builds `:authority` from the
/// original request's authority. The upstream must see the name the app called, not the
/// endpoint's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_see_the_apps_authority() {
    let app = Upstream::start("app").await;
    let proxy = proxy_for(&app).await;
    for client_version in [Version::HTTP_11, Version::HTTP_2] {
        let res = via(
            proxy.outbound(),
            client_version,
            "h2app:8080",
            client::request("GET", "/echo"),
            client::empty(),
        )
        .await;
        assert_eq!(res.status(), 200, "{:?}", res.body());
        let v = json(&res);
        assert_eq!(v["version"], "HTTP/2.0");
        assert_eq!(
            v["authority"], "h2app:8080",
            "{client_version:?} client: :authority at the h2 upstream: {v}"
        );
        if let Some(host) = v["headers"].get("host") {
            assert_eq!(
                host, "h2app:8080",
                "{client_version:?} client: a Host header, if sent, agrees: {v}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_speaks_http1_or_http2_upstream() {
    let app = Upstream::start("app").await;
    for (flag, upstream_version) in [(None, "HTTP/1.1"), (Some("http2"), "HTTP/2.0")] {
        let mut b = ProxyBuilder::quick(app.addr);
        if let Some(p) = flag {
            b = b.arg("--upstream-protocol").arg(p);
        }
        let proxy = b.spawn().ready().await;
        for client_version in [Version::HTTP_11, Version::HTTP_2] {
            let what = format!("--upstream-protocol {flag:?}, {client_version:?} client");
            let res = via(
                proxy.outbound(),
                client_version,
                "anything.example",
                client::request("GET", "/echo"),
                client::empty(),
            )
            .await;
            assert_eq!(res.status(), 200, "{what}: {:?}", res.body());
            let v = json(&res);
            assert_eq!(v["version"], upstream_version, "{what}: {v}");
            if upstream_version == "HTTP/1.1" {
                assert_eq!(v["headers"]["host"], "anything.example", "{what}: {v}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_and_chunked_bodies_arrive_whole() {
    let app = Upstream::start("app").await;
    let proxy = proxy_for(&app).await;
    let n: usize = 300_007;
    for (client_version, dest, upstream_version) in COMBINATIONS {
        let what = format!("{client_version:?} client -> {dest}");
        // Known length: /upload counts it, /inspect shows it came with its content-length.
        let res = via(
            proxy.outbound(),
            client_version,
            dest,
            client::request("POST", "/upload"),
            client::full(vec![b'a'; n]),
        )
        .await;
        assert_eq!(res.status(), 200, "{what}");
        assert_eq!(
            res.body(),
            n.to_string().as_bytes(),
            "{what}: bytes the upstream got (content-length body)"
        );
        let res = via(
            proxy.outbound(),
            client_version,
            dest,
            client::request("POST", "/inspect"),
            client::full(vec![b'a'; n]),
        )
        .await;
        let v = json(&res);
        assert_eq!(v["body_bytes"], n, "{what}: {v}");
        assert_eq!(
            v["headers"]["content-length"],
            n.to_string(),
            "{what}: content-length kept: {v}"
        );
        assert!(
            v["headers"].get("transfer-encoding").is_none(),
            "{what}: no transfer-encoding with a length: {v}"
        );

        // Unknown length: chunked over HTTP/1.1, plain DATA frames over h2.
        let res = via(
            proxy.outbound(),
            client_version,
            dest,
            client::request("POST", "/upload"),
            client::generated(n as u64),
        )
        .await;
        assert_eq!(res.status(), 200, "{what}");
        assert_eq!(
            res.body(),
            n.to_string().as_bytes(),
            "{what}: bytes the upstream got (streamed body)"
        );
        let res = via(
            proxy.outbound(),
            client_version,
            dest,
            client::request("POST", "/inspect"),
            client::generated(n as u64),
        )
        .await;
        let v = json(&res);
        assert_eq!(v["body_bytes"], n, "{what}: {v}");
        assert!(
            v["headers"].get("content-length").is_none(),
            "{what}: no invented content-length: {v}"
        );
        let te = v["headers"].get("transfer-encoding");
        if upstream_version == "HTTP/1.1" {
            assert_eq!(
                te.and_then(Value::as_str),
                Some("chunked"),
                "{what}: framed exactly once as chunked: {v}"
            );
        } else {
            assert!(
                te.is_none(),
                "{what}: HTTP/2 carries no transfer-encoding: {v}"
            );
        }
    }
}

/// A raw HTTP/1.1 request, so that exactly these header lines are on the wire.
async fn raw_request(proxy: SocketAddr, text: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    s.write_all(text.as_bytes()).await.expect("write request");
    read_response(&mut s, IO_TIMEOUT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let app = Upstream::start("app").await;
    let proxy = proxy_for(&app).await;
    let hop_by_hop = [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ];

    for dest in ["h1app", "h2app"] {
        let (head, body) = raw_request(
            proxy.outbound(),
            &format!(
                "GET /echo HTTP/1.1\r\nHost: {dest}\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\n\
                 Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-End-To-End: kept\r\n\r\n"
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{dest}: {head}");
        let v: Value = serde_json::from_slice(&body).expect("echo JSON");
        for h in hop_by_hop {
            assert!(
                v["headers"].get(h).is_none(),
                "{dest}: hop-by-hop `{h}` reached the upstream: {v}"
            );
        }
        assert_eq!(
            v["headers"]["x-end-to-end"], "kept",
            "{dest}: end-to-end headers pass: {v}"
        );
    }

    // `te: trailers` means something end to end (gRPC needs it at an h2 upstream).
    let (_, body) = raw_request(
        proxy.outbound(),
        "GET /echo HTTP/1.1\r\nHost: h2app\r\nTE: trailers\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    let v: Value = serde_json::from_slice(&body).expect("echo JSON");
    assert_eq!(
        v["headers"]["te"], "trailers",
        "HTTP/1.1 client, h2 upstream: {v}"
    );
    let res = via(
        proxy.outbound(),
        Version::HTTP_2,
        "h2app",
        client::request("GET", "/echo").header("te", "trailers"),
        client::empty(),
    )
    .await;
    let v = json(&res);
    assert_eq!(
        v["headers"]["te"], "trailers",
        "h2 client, h2 upstream: {v}"
    );

    // Responses: the upstream's hop-by-hop headers stop at the proxy.
    for client_version in [Version::HTTP_11, Version::HTTP_2] {
        let res = via(
            proxy.outbound(),
            client_version,
            "h1app",
            client::request("GET", "/hop"),
            client::empty(),
        )
        .await;
        assert_eq!(res.status(), 200, "{client_version:?}");
        let h = res.headers();
        for name in ["x-resp-secret", "keep-alive", "proxy-connection"] {
            assert!(
                !h.contains_key(name),
                "{client_version:?} client got hop-by-hop `{name}`: {h:?}"
            );
        }
        for v in h.get_all("connection") {
            assert!(
                !v.to_str().unwrap_or("").contains("x-resp-secret"),
                "{client_version:?}: {h:?}"
            );
        }
        assert_eq!(
            h["x-resp-kept"], "yes",
            "{client_version:?}: end-to-end response header: {h:?}"
        );
    }
    let mut s = TcpStream::connect(proxy.outbound()).await.expect("connect");
    s.write_all(b"GET /hop HTTP/1.1\r\nHost: h1app\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut s, IO_TIMEOUT).await;
    for name in ["x-resp-secret", "keep-alive", "proxy-connection"] {
        assert!(
            head_header(&head, name).is_none(),
            "raw client got hop-by-hop `{name}`: {head}"
        );
    }
    assert!(
        head_header(&head, "connection").is_none_or(|c| !c.contains("x-resp-secret")),
        "{head}"
    );
}

/// RFC 9110 §10.1.4: an HTTP/1.1 client that sends TE must also list it in Connection. The
/// `trailers` value still has to reach an HTTP/2 (gRPC) upstream, as it does without the
/// Connection token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_survives_when_connection_lists_te() {
    let app = Upstream::start("app").await;
    let proxy = proxy_for(&app).await;
    let (_, body) = raw_request(
        proxy.outbound(),
        "GET /echo HTTP/1.1\r\nHost: h2app\r\nTE: trailers\r\nConnection: TE\r\n\r\n",
    )
    .await;
    let v: Value = serde_json::from_slice(&body).expect("echo JSON");
    assert_eq!(v["headers"]["te"], "trailers", "{v}");
    assert!(v["headers"].get("connection").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_appended() {
    let app = Upstream::start("app").await;
    let proxy = proxy_for(&app).await;
    for (client_version, dest, _) in COMBINATIONS {
        let what = format!("{client_version:?} client -> {dest}");
        let req = client::request("GET", "/echo").header("x-forwarded-for", "203.0.113.9");
        let v = json(&via(proxy.outbound(), client_version, dest, req, client::empty()).await);
        assert_eq!(
            v["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1",
            "{what}: {v}"
        );
        let v = json(
            &via(
                proxy.outbound(),
                client_version,
                dest,
                client::request("GET", "/echo"),
                client::empty(),
            )
            .await,
        );
        assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1", "{what}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled() {
    let app = Upstream::start("app").await;
    let proxy = proxy_for(&app).await;
    let mut s = TcpStream::connect(proxy.outbound()).await.expect("connect");
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: h1app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write upgrade request");
    let (head, early) = read_head(&mut s, IO_TIMEOUT).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        head_header(&head, "upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert!(
        head_header(&head, "connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
        "{head}"
    );
    assert_eq!(
        head_header(&head, "sec-websocket-accept"),
        Some(key),
        "{head}"
    );
    assert_eq!(head_header(&head, "x-upstream"), Some("app"), "{head}");
    assert!(
        early.is_empty(),
        "no bytes before the client spoke: {early:?}"
    );

    // Round trips of various sizes, each pattern distinct, both directions every time.
    for (round, size) in [1usize, 13, 4096, 200_000, 2].into_iter().enumerate() {
        let msg: Vec<u8> = (0..size)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(round as u8))
            .collect();
        let mut back = vec![0u8; size];
        let exchange = async {
            let (mut r, mut w) = s.split();
            // Write and read concurrently: a large message would otherwise fill both directions.
            let (wrote, read) = tokio::join!(w.write_all(&msg), r.read_exact(&mut back));
            wrote.expect("write through the tunnel");
            read.expect("read the echo back");
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("round {round} ({size} bytes) timed out"));
        assert!(back == msg, "round {round}: echoed {size} bytes differ");
    }

    // Half-close travels through: the upstream sees EOF, closes, and the client sees EOF.
    s.shutdown().await.expect("shutdown write half");
    let mut rest = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes after the client's EOF")
        .expect("clean close");
    assert!(rest.is_empty(), "nothing after EOF: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy stage: run with --ignored"]
async fn gigabyte_bodies_stream_in_bounded_memory() {
    let app = Upstream::start("app").await;
    let proxy = proxy_for(&app).await;
    let h1 = client::h1();
    let url = |path: &str| format!("http://{}{path}", proxy.outbound());
    let request = |method: &str, path: &str, body: TestBody| -> Request<TestBody> {
        client::request(method, &url(path))
            .header("host", "h1app")
            .body(body)
            .expect("request")
    };

    // Warm-up: connections, pools and buffers exist before the baseline is taken.
    let res = client::send(&h1, request("POST", "/upload", client::generated(1 << 20))).await;
    assert_eq!(res.body(), (1u64 << 20).to_string().as_bytes());
    let res = client::send(&h1, request("GET", "/download/1048576", client::empty())).await;
    assert_eq!(res.body().len(), 1 << 20);
    let (baseline, _) = proxy.rss_kib();
    assert!(baseline > 0, "read the proxy's RSS");

    let started = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(120),
        h1.request(request("POST", "/upload", client::generated(GIB))),
    )
    .await
    .expect("1 GiB upload answered within 120s")
    .expect("upload succeeds at the HTTP level");
    assert_eq!(res.status(), 200);
    let res = client::collect(res).await;
    assert_eq!(
        res.body(),
        GIB.to_string().as_bytes(),
        "bytes the upstream received"
    );
    let upload = started.elapsed();

    let started = Instant::now();
    let res = tokio::time::timeout(
        IO_TIMEOUT,
        h1.request(request("GET", &format!("/download/{GIB}"), client::empty())),
    )
    .await
    .expect("download head within 30s")
    .expect("download succeeds at the HTTP level");
    assert_eq!(res.status(), 200);
    let mut body: Incoming = res.into_body();
    let mut received: u64 = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .expect("download within 120s")
    {
        if let Ok(data) = frame.expect("download body frame").into_data() {
            assert!(
                data.first().is_none_or(|b| *b == b'x'),
                "body content at {received}"
            );
            received += data.len() as u64;
        }
    }
    assert_eq!(received, GIB, "bytes the client received");
    let download = started.elapsed();

    let (rss, peak) = proxy.rss_kib();
    eprintln!(
        "1 GiB upload {upload:?}, download {download:?}; proxy RSS baseline {baseline} KiB, now {rss} KiB, peak {peak} KiB"
    );
    assert!(
        peak.saturating_sub(baseline) < 32 * 1024,
        "proxy memory grew by {} KiB moving 1 GiB each way (baseline {baseline} KiB, peak {peak} KiB)",
        peak.saturating_sub(baseline)
    );
}

/// The grpcio peer script: a server that announces `READY <port>`, and a checking client.
const GRPC_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc/grpc_peer.py");
const PIP_HINT: &str = "needs python3 with grpcio: python3 -m pip install grpcio";

struct GrpcServer {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

async fn grpc_server(dir: &std::path::Path) -> GrpcServer {
    let stderr_path = dir.join("grpc_server.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = tokio::process::Command::new("python3")
        .args([GRPC_PEER, "server", "--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start python3 ({e}); {PIP_HINT}"));
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let port = tokio::time::timeout(IO_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.ok().flatten() {
            if let Some(p) = line.strip_prefix("READY ") {
                return p.trim().parse::<u16>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let Some(port) = port else {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        panic!(
            "the gRPC server did not print READY within {IO_TIMEOUT:?} ({PIP_HINT}); stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    };
    GrpcServer {
        _child: child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_and_trailers_pass_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = grpc_server(dir.path()).await;
    let snapshot = format!(
        "service: protocols\ndestinations:\n  - name: grpc-echo\n    hosts: [grpc-echo]\n    protocol: http2\n    endpoints: [{{address: {}}}]\n",
        server.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;

    let target = proxy.outbound().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("python3")
            .args([
                GRPC_PEER,
                "client",
                "--target",
                &target,
                "--authority",
                "grpc-echo",
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the gRPC client finishes within 90s")
    .unwrap_or_else(|e| panic!("run python3 ({e}); {PIP_HINT}"));
    let report = format!(
        "stdout:\n{}\nstderr:\n{}\nproxy stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proxy.stderr()
    );
    assert!(
        out.status.success(),
        "gRPC checks through the proxy failed ({}):\n{report}",
        out.status
    );
    // The three calls went through the proxy (its access log is written asynchronously).
    let calls = |log: &str| log.lines().filter(|l| l.contains("/svc.Echo/")).count();
    eventually(
        Duration::from_secs(10),
        "three gRPC calls in the proxy's access log",
        || {
            let seen = calls(&proxy.stdout());
            async move { (seen >= 3).then_some(()) }
        },
    )
    .await;
}

/// Issue 3's gRPC retry condition, with the real grpcio peers: UNAVAILABLE is retried whether
/// it arrives in the response headers (a trailers-only reply) or in the trailers after a
/// message (read ahead within the replay cap), and the client sees only the good attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_statuses_in_headers_or_trailers_are_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = grpc_server(dir.path()).await;
    let snapshot = format!(
        "service: protocols\n\
         destinations:\n\
         \x20 - name: grpc-retry\n    protocol: http2\n    endpoints: [{{address: {a}}}]\n    routes:\n      - name: all\n        retries: {{attempts: 3, grpc_statuses: [unavailable], backoff: {{base: 5ms, max: 10ms}}}}\n\
         \x20 - name: grpc-plain\n    protocol: http2\n    endpoints: [{{address: {a}}}]\n",
        a = server.addr
    );
    let proxy = ProxyBuilder::file(&snapshot, "").spawn().ready().await;
    let target = proxy.outbound().to_string();
    for (authority, expect) in [("grpc-retry", "yes"), ("grpc-plain", "no")] {
        let out = tokio::time::timeout(
            Duration::from_secs(90),
            tokio::process::Command::new("python3")
                .args([
                    GRPC_PEER,
                    "retry-client",
                    "--target",
                    &target,
                    "--authority",
                    authority,
                    "--expect-retry",
                    expect,
                ])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the gRPC client finishes within 90s")
        .unwrap_or_else(|e| panic!("run python3 ({e}); {PIP_HINT}"));
        assert!(
            out.status.success(),
            "{authority}: {}\n{}\nproxy stderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            proxy.stderr()
        );
    }
    assert_eq!(
        proxy
            .metric(
                "outrigger_retries_total",
                &[("dst_service", "grpc-retry"), ("outcome", "retried")]
            )
            .await,
        Some(2.0),
        "one retry for the unary call, one for the stream"
    );
}
