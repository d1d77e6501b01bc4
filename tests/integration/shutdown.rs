//! Graceful shutdown: on SIGTERM readiness drops at once, requests in flight complete, HTTP/2
//! clients get GOAWAY, and the process exits 0 within the drain timeout.

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrigger_tests::client::{self, get};
use outrigger_tests::eventually;
use outrigger_tests::proxy::ProxyBuilder;
use outrigger_tests::upstream::Upstream;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = Upstream::start("a").await;
    let mut proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let url = format!("http://{}/delay/2000", proxy.outbound());
    let in_flight = tokio::spawn(async move { get(&client::h1(), &url).await });
    eventually(
        Duration::from_secs(5),
        "the slow request to reach the upstream",
        || async { (up.requests() == 1).then_some(()) },
    )
    .await;

    let signalled = Instant::now();
    proxy.signal("TERM");
    eventually(
        Duration::from_millis(1500),
        "/ready to turn 503",
        || async { (proxy.admin_get("/ready").await.0 == 503).then_some(()) },
    )
    .await;
    assert!(signalled.elapsed() < Duration::from_millis(1500));

    let res = in_flight.await.expect("task");
    assert_eq!(res.status(), 200);
    assert_eq!(&res.body()[..], b"delayed\n");
    assert_eq!(proxy.exit_code(Duration::from_secs(10)).await, Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_goaway_and_the_stream_in_flight_completes() {
    let up = Upstream::start("a").await;
    let mut proxy = ProxyBuilder::quick(up.addr).spawn().ready().await;
    let stream = tokio::net::TcpStream::connect(proxy.outbound())
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = |path: &str| {
        client::request("GET", &format!("http://shop{path}"))
            .body(client::empty())
            .expect("request")
    };
    let res = sender.send_request(req("/")).await.expect("first request");
    assert_eq!(res.status(), 200);

    let slow = sender.send_request(req("/delay/1500"));
    let slow = tokio::spawn(async move {
        let res = slow.await.expect("slow response");
        let status = res.status();
        (
            status,
            res.into_body().collect().await.expect("body").to_bytes(),
        )
    });
    eventually(
        Duration::from_secs(5),
        "the slow stream to reach the upstream",
        || async { (up.requests() == 2).then_some(()) },
    )
    .await;
    proxy.signal("TERM");

    let (status, body) = slow.await.expect("task");
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"delayed\n");
    // GOAWAY closes the connection cleanly once the last stream is done.
    let closed = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("connection closed");
    assert!(
        closed.expect("task").is_ok(),
        "connection ended with an error instead of GOAWAY"
    );
    assert_eq!(proxy.exit_code(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait() {
    let up = Upstream::start("a").await;
    let mut proxy = ProxyBuilder::quick(up.addr)
        .arg("--drain-timeout")
        .arg("1s")
        .spawn()
        .ready()
        .await;
    let url = format!("http://{}/delay/20000", proxy.outbound());
    let _stuck = tokio::spawn(async move {
        client::h1()
            .request(
                client::request("GET", &url)
                    .body(client::empty())
                    .expect("r"),
            )
            .await
    });
    eventually(
        Duration::from_secs(5),
        "the stuck request to reach the upstream",
        || async { (up.requests() == 1).then_some(()) },
    )
    .await;
    let signalled = Instant::now();
    proxy.signal("TERM");
    assert_eq!(proxy.exit_code(Duration::from_secs(10)).await, Some(0));
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exit after {took:?}"
    );
}

/// Issue 14 point 5: an upgraded tunnel (WebSocket) is drained like a request, not cut. After
/// SIGTERM it keeps carrying bytes while the proxy waits for it, and once it closes the proxy
/// exits at once, long before the drain timeout. Before, hyper's handing the connection to
/// the tunnel ended its HTTP serving, so the drain saw no connection and exited under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_tunnel_is_drained_not_cut() {
    use outrigger_tests::client::read_head;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("a").await;
    let mut proxy = ProxyBuilder::quick(up.addr)
        .arg("--drain-timeout")
        .arg("60s")
        .spawn()
        .ready()
        .await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound())
        .await
        .expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write the upgrade request");
    let (head, _) = read_head(&mut s, Duration::from_secs(10)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let signalled = Instant::now();
    proxy.signal("TERM");
    eventually(Duration::from_secs(5), "/ready to turn 503", || async {
        (proxy.admin_get("/ready").await.0 == 503).then_some(())
    })
    .await;
    for round in 0..3u8 {
        let msg = [round; 64];
        let mut back = [0u8; 64];
        s.write_all(&msg)
            .await
            .expect("write through the draining tunnel");
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no echo while draining"))
            .unwrap_or_else(|e| panic!("round {round}: the tunnel was cut while draining: {e}"));
        assert_eq!(back, msg);
    }
    drop(s);
    assert_eq!(proxy.exit_code(Duration::from_secs(20)).await, Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "the proxy waited out the drain timeout after its last tunnel closed"
    );
}
