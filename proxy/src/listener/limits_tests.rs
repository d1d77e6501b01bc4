//! Each listener bound, one test apiece. The timeouts run under paused time over in-memory
//! connections (`tokio::io::duplex`), so a timer fires exactly when the clock says and the
//! tests take no real time; the caps run over real loopback sockets. A proxy without the
//! bound fails each: it keeps the slow, idle or silent client forever, or takes one more
//! connection or handshake than allowed.

use super::*;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Telemetry;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioExecutor;
use outrigger_config::sidecar::ListenerLimits;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const SEC: Duration = Duration::from_secs(1);

fn sidecar_with(limits: ListenerLimits) -> Arc<Sidecar> {
    let settings = ProxySettings {
        access_log: false,
        limits,
        ..ProxySettings::default()
    };
    let telemetry = Telemetry::new(&settings, None, Metrics::new());
    Arc::new(Sidecar::new(settings, telemetry, None))
}

fn timeouts(sidecar: &Sidecar, reason: &str) -> u64 {
    sidecar
        .telemetry
        .metrics
        .connection_timeouts
        .with_label_values(&["outbound", reason])
        .get()
}

fn refused(sidecar: &Sidecar, direction: &str, reason: &str) -> u64 {
    sidecar
        .telemetry
        .metrics
        .connections_refused
        .with_label_values(&[direction, reason])
        .get()
}

/// Serves one in-memory outbound connection with `buffer` bytes of room each way; the task
/// ends when the connection does. No snapshot is applied, so every request gets the proxy's
/// own 503: nothing upstream is needed to have a response in flight.
fn connect(sidecar: &Arc<Sidecar>, buffer: usize) -> (DuplexStream, JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(buffer);
    let metrics = &sidecar.telemetry.metrics;
    let bounds = Arc::new(Bounds::new(
        &sidecar.settings.limits,
        sidecar.settings.max_header_bytes,
        metrics,
        "outbound",
    ));
    let b = builder(&sidecar.settings, StreamExec::new(bounds.clone()));
    let sidecar = sidecar.clone();
    let from = SocketAddr::from(([127, 0, 0, 1], 1));
    let task = tokio::spawn(async move {
        let (drain, draining) = watch::channel(false);
        let peer = Peer::plaintext(from);
        serve(
            &b,
            draining,
            server,
            sidecar,
            Direction::Outbound,
            peer,
            &bounds,
        )
        .await;
        drop(drain);
    });
    (client, task)
}

/// Waits (in paused time) for the connection's task to end; how long it took.
async fn ended_after(task: JoinHandle<()>, since: Instant) -> Duration {
    tokio::time::timeout(Duration::from_secs(3600), task)
        .await
        .expect("the connection was never closed")
        .expect("connection task");
    since.elapsed()
}

/// Reads one response head (and whatever follows it in the same reads).
async fn read_head(c: &mut DuplexStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before a response head");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_trickled_request_head_is_cut_at_the_header_read_timeout_but_a_slow_one_in_time_is_served(
) {
    let sidecar = sidecar_with(ListenerLimits {
        http1_header_read_timeout: 10 * SEC,
        ..ListenerLimits::default()
    });
    // Idle, never a byte: the header read timeout does not apply (the idle timeout does).
    let (_idle, idle_task) = connect(&sidecar, 64 * 1024);
    // A head half sent, then nothing.
    let (mut slow, slow_task) = connect(&sidecar, 64 * 1024);
    // A head sent in two halves 6 s apart: slow, but within the timeout.
    let (mut late, _late_task) = connect(&sidecar, 64 * 1024);

    let start = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n")
        .await
        .expect("write");
    late.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    tokio::time::sleep(6 * SEC).await;
    late.write_all(b"host: a\r\n\r\n").await.expect("write");
    assert!(read_head(&mut late).await.starts_with("HTTP/1.1 503"));

    let took = ended_after(slow_task, start).await;
    assert!(
        (10 * SEC..11 * SEC).contains(&took),
        "closed after {took:?}"
    );
    assert_eq!(timeouts(&sidecar, "header_read"), 1);
    assert!(
        !idle_task.is_finished(),
        "an idle connection was cut as slowloris"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_http1_and_http2_connections_are_closed_between_one_and_one_and_a_half_idle_timeouts()
{
    let idle = 40 * SEC;
    let sidecar = sidecar_with(ListenerLimits {
        idle_timeout: idle,
        ..ListenerLimits::default()
    });
    let start = Instant::now();
    // HTTP/1.1: one request, then keep-alive silence.
    let (mut h1, h1_task) = connect(&sidecar, 64 * 1024);
    h1.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    assert!(read_head(&mut h1).await.starts_with("HTTP/1.1 503"));
    // HTTP/2: one request, then silence but for keepalive PINGs (which do not count).
    let (h2_io, h2_task) = connect(&sidecar, 64 * 1024);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2_io))
            .await
            .expect("h2 handshake");
    let client = tokio::spawn(conn);
    let req = Request::get("http://a/")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = send.send_request(req).await.expect("h2 response");
    assert_eq!(res.status(), 503);
    res.into_body().collect().await.expect("h2 body");

    for (what, task) in [("HTTP/1.1", h1_task), ("HTTP/2", h2_task)] {
        let took = ended_after(task, start).await;
        assert!(
            took >= idle && took <= idle * 3 / 2 + SEC,
            "{what}: closed after {took:?}"
        );
    }
    assert_eq!(timeouts(&sidecar, "idle"), 2);
    // The HTTP/2 client was told (GOAWAY) and its connection ended cleanly.
    let ended = tokio::time::timeout(10 * SEC, client).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test(start_paused = true)]
async fn an_http1_client_that_never_reads_its_response_is_cut_at_the_response_idle_timeout() {
    let sidecar = sidecar_with(ListenerLimits {
        response_idle_timeout: 20 * SEC,
        ..ListenerLimits::default()
    });
    // 16 bytes of room toward the client: the response cannot be written unless it reads.
    let (mut c, task) = connect(&sidecar, 16);
    let start = Instant::now();
    c.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    let took = ended_after(task, start).await;
    assert!(
        (20 * SEC..21 * SEC).contains(&took),
        "closed after {took:?}"
    );
    assert_eq!(timeouts(&sidecar, "response_idle"), 1);
    assert_eq!(timeouts(&sidecar, "header_read"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_http2_stream_whose_client_grants_no_window_is_reset_and_the_connection_lives_on() {
    let sidecar = sidecar_with(ListenerLimits {
        response_idle_timeout: 20 * SEC,
        ..ListenerLimits::default()
    });
    let (io, task) = connect(&sidecar, 64 * 1024);
    // A window of 0: the client takes the response head and never a byte of its body.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let get = || {
        Request::get("http://a/")
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let start = Instant::now();
    let res = send.send_request(get()).await.expect("response head");
    assert_eq!(res.status(), 503);
    let body = tokio::time::timeout(120 * SEC, res.into_body().collect())
        .await
        .expect("the stream was never reset");
    let took = start.elapsed();
    assert!(body.is_err(), "the stream was not reset");
    assert!((20 * SEC..21 * SEC).contains(&took), "reset after {took:?}");
    assert_eq!(timeouts(&sidecar, "response_idle"), 1);
    // Only the stream went: the connection takes the next request.
    let again = send.send_request(get()).await.expect("a second stream");
    assert_eq!(again.status(), 503);
    assert!(!task.is_finished());
}

#[tokio::test(start_paused = true)]
async fn an_http2_peer_that_stops_answering_pings_is_dropped_and_the_stream_cap_is_advertised() {
    let sidecar = sidecar_with(ListenerLimits {
        http2_keepalive_interval: 10 * SEC,
        http2_keepalive_timeout: 5 * SEC,
        http2_max_concurrent_streams: 7,
        ..ListenerLimits::default()
    });
    // A live client learns the stream cap from the server's SETTINGS.
    let (io, _live) = connect(&sidecar, 64 * 1024);
    let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let req = Request::get("http://a/").body(()).expect("request");
    let (res, _) = send.send_request(req, true).expect("stream");
    res.await.expect("a response, after the server's SETTINGS");
    assert_eq!(send.current_max_send_streams(), 7);

    // A dead one: the preface and its SETTINGS, then nothing is ever read or answered.
    let (mut dead, task) = connect(&sidecar, 1024 * 1024);
    let start = Instant::now();
    dead.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let took = ended_after(task, start).await;
    assert!(
        (15 * SEC..17 * SEC).contains(&took),
        "closed after {took:?}"
    );
    assert_eq!(
        timeouts(&sidecar, "header_read"),
        0,
        "HTTP/2 has no head timer"
    );
}

/// A TLS server config with a throwaway self-signed certificate.
fn tls_config() -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .expect("server config");
    Arc::new(cfg)
}

/// A client that sends the first byte of a TLS record and then nothing; the server's end.
async fn stalled_client(l: &TcpListener) -> (TcpStream, TcpStream) {
    let mut c = TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (s, _) = l.accept().await.expect("accept");
    c.write_all(&[0x16]).await.expect("write");
    (c, s)
}

#[tokio::test(start_paused = true)]
async fn tls_handshakes_beyond_the_cap_are_refused_at_once_and_a_stalled_one_times_out() {
    let sidecar = sidecar_with(ListenerLimits {
        max_tls_handshakes: 1,
        tls_handshake_timeout: 10 * SEC,
        ..ListenerLimits::default()
    });
    let metrics = &sidecar.telemetry.metrics;
    let bounds = Arc::new(Bounds::new(
        &sidecar.settings.limits,
        sidecar.settings.max_header_bytes,
        metrics,
        "inbound",
    ));
    let cfg = tls_config();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");

    // Both connected before any timer runs: under paused time, a wait on real I/O lets the
    // clock jump to the next timer.
    let (_c1, s1) = stalled_client(&l).await;
    let (_c2, s2) = stalled_client(&l).await;
    let start = Instant::now();
    let first = tokio::spawn({
        let (bounds, cfg) = (bounds.clone(), cfg.clone());
        async move { handshake(&bounds, cfg, s1).await.is_some() }
    });
    while bounds.handshakes.available_permits() > 0 {
        tokio::task::yield_now().await;
    }
    assert!(handshake(&bounds, cfg, s2).await.is_none());
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the second was not refused at once"
    );
    assert_eq!(refused(&sidecar, "inbound", "max_tls_handshakes"), 1);

    assert!(
        !first.await.expect("first handshake"),
        "a stalled handshake succeeded"
    );
    assert!(
        start.elapsed() >= 10 * SEC,
        "timed out early: {:?}",
        start.elapsed()
    );
    assert_eq!(bounds.handshake_timeouts.get(), 1);
    assert_eq!(
        bounds.handshakes.available_permits(),
        1,
        "the slot was not given back"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once_and_counted() {
    let sidecar = sidecar_with(ListenerLimits {
        max_connections: 2,
        ..ListenerLimits::default()
    });
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let listener = Listener::spawn(l, Direction::Outbound, sidecar.clone());
    let open = sidecar
        .telemetry
        .metrics
        .connections_open
        .with_label_values(&["outbound"]);
    let first = TcpStream::connect(addr).await.expect("connect");
    let _second = TcpStream::connect(addr).await.expect("connect");
    until("two connections open", || open.get() == 2).await;
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(20), third.read(&mut buf))
        .await
        .expect("the third connection was left hanging");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the third connection was served"
    );
    assert_eq!(refused(&sidecar, "outbound", "max_connections"), 1);

    // A freed place is taken again.
    drop(first);
    until("the first connection closed", || open.get() == 1).await;
    let mut fourth = TcpStream::connect(addr).await.expect("connect");
    fourth
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    let n = tokio::time::timeout(Duration::from_secs(20), fourth.read(&mut buf))
        .await
        .expect("no answer");
    assert!(matches!(n, Ok(1)), "the fourth connection was not served");
    assert_eq!(refused(&sidecar, "outbound", "max_connections"), 1);
    let _ = listener.drain(Instant::now() + SEC).await;
}

/// Polls `ok` (real time) until it holds; panics after a generous deadline.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
