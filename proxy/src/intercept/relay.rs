//! Opaque TCP: bytes copied both ways between the app's connection and the destination's,
//! with the connect bounded, half-closes passed on (a FIN one way shuts down writing the
//! other way, while the reverse direction keeps flowing) and a reset passed on as a reset.

use super::prefixed::Prefixed;
use crate::telemetry::tcp::TcpMetrics;
use crate::tunnel::Ended;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How a relayed connection ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// From the app to the destination.
    pub sent: u64,
    /// From the destination to the app.
    pub received: u64,
    /// One side reset or failed; the other was reset in turn.
    pub reset: bool,
}

/// A connection that can be made to end with a reset rather than a clean close.
pub trait Resettable {
    fn reset(&self);
}

impl Resettable for TcpStream {
    fn reset(&self) {
        // SO_LINGER 0: the next close sends RST instead of FIN.
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl<I: Resettable> Resettable for Prefixed<I> {
    fn reset(&self) {
        self.get_ref().reset();
    }
}

impl Resettable for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset(&self) {
        self.get_ref().0.reset();
    }
}

impl Resettable for tokio_rustls::client::TlsStream<TcpStream> {
    fn reset(&self) {
        self.get_ref().0.reset();
    }
}

/// A TCP connection to `addr` within `connect_timeout`.
pub async fn connect(addr: SocketAddr, connect_timeout: Duration) -> Result<TcpStream, RelayError> {
    match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(source)) => Err(RelayError::Connect { addr, source }),
        Err(_) => Err(RelayError::ConnectTimeout {
            addr,
            after: connect_timeout,
        }),
    }
}

/// Connects to `addr` and relays until both directions end. The app's connection is reset
/// when the connect fails, as a refused connect would have been without the proxy.
pub async fn relay(
    client: Prefixed<TcpStream>,
    addr: SocketAddr,
    timeouts: Timeouts,
    metrics: &TcpMetrics,
    labels: [&str; 2],
) -> Result<Relayed, RelayError> {
    let connect_timeout = timeouts.connect;
    let upstream = match connect(addr, connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            client.reset();
            return Err(e);
        }
    };
    Ok(splice(client, upstream, timeouts.idle, metrics, labels).await)
}

/// A relay's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// No byte either way for this long closes it.
    pub idle: Duration,
}

/// Copies both ways until both directions end; `labels` are the metrics' direction and
/// destination.
pub async fn splice<A, B>(
    mut a: A,
    mut b: B,
    idle: Duration,
    metrics: &TcpMetrics,
    labels: [&str; 2],
) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin + Resettable,
    B: AsyncRead + AsyncWrite + Unpin + Resettable,
{
    let started = Instant::now();
    let conn = metrics.open(labels);
    let outcome = match crate::tunnel::copy_until_idle(&mut a, &mut b, idle).await {
        Ended::Done(sent, received) => Relayed {
            sent,
            received,
            reset: false,
        },
        Ended::Idle => {
            metrics.idle_closed(labels[0]);
            Relayed::default()
        }
        Ended::Failed(_) => {
            // Which side failed is unknown here, and a reset on a socket that already
            // failed costs nothing: reset both, so neither peer mistakes it for a clean end.
            a.reset();
            b.reset();
            Relayed {
                reset: true,
                ..Relayed::default()
            }
        }
    };
    conn.close(outcome.sent, outcome.received, started.elapsed());
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        idle: Duration::from_secs(60),
    };
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> std::io::Result<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let c = TcpStream::connect(l.local_addr()?).await?;
        let (s, _) = l.accept().await?;
        Ok((c, s))
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_a_half_close_is_passed_on() -> std::io::Result<()> {
        let metrics = TcpMetrics::for_tests();
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let addr = server.local_addr()?;
        let (mut app, proxied) = pair().await?;
        let relaying = tokio::spawn(async move {
            let m = TcpMetrics::for_tests();
            relay(
                Prefixed::new(Bytes::from_static(b"hello "), proxied),
                addr,
                T,
                &m,
                ["outbound", "db"],
            )
            .await
        });
        let (mut upstream, _) = server.accept().await?;
        app.write_all(b"world").await?;
        app.shutdown().await?;
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await?;
        assert_eq!(
            got, b"hello world",
            "the detected prefix first, then the rest"
        );
        // The app's FIN reached the server; the server can still answer.
        upstream.write_all(b"answer after the client's FIN").await?;
        drop(upstream);
        let mut back = Vec::new();
        app.read_to_end(&mut back).await?;
        assert_eq!(back, b"answer after the client's FIN");
        let relayed = relaying.await.map_err(std::io::Error::other)?;
        let relayed = relayed.map_err(std::io::Error::other)?;
        assert_eq!(
            (relayed.sent, relayed.received, relayed.reset),
            (11, 29, false)
        );
        drop(metrics);
        Ok(())
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_app() -> std::io::Result<()> {
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let addr = server.local_addr()?;
        let (mut app, proxied) = pair().await?;
        let relaying = tokio::spawn(async move {
            let m = TcpMetrics::for_tests();
            relay(
                Prefixed::new(Bytes::new(), proxied),
                addr,
                T,
                &m,
                ["outbound", "db"],
            )
            .await
        });
        let (mut upstream, _) = server.accept().await?;
        // A byte through proves the relay is copying before the reset comes.
        app.write_all(b"x").await?;
        let mut one = [0u8; 1];
        upstream.read_exact(&mut one).await?;
        upstream.reset();
        drop(upstream);
        let mut buf = [0u8; 8];
        let read = app.read(&mut buf).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "a reset, not a clean end"
        );
        let relayed = relaying.await.map_err(std::io::Error::other)?;
        assert!(relayed.map_err(std::io::Error::other)?.reset);
        Ok(())
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error_and_resets_the_app() -> std::io::Result<()> {
        // A port nothing listens on: bind, learn it, close.
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let (mut app, proxied) = pair().await?;
        let m = TcpMetrics::for_tests();
        let r = relay(
            Prefixed::new(Bytes::new(), proxied),
            addr,
            T,
            &m,
            ["outbound", "db"],
        )
        .await;
        assert!(matches!(r, Err(RelayError::Connect { .. })), "{r:?}");
        let mut buf = [0u8; 1];
        assert_eq!(
            app.read(&mut buf).await.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
        Ok(())
    }
}
