//! Byte tunnels (opaque TCP relays and upgraded connections): copied both ways until both
//! directions end, or until nothing has moved either way for the idle timeout. A tunnel has
//! no requests to bound it, so without this an abandoned one holds two descriptors and a
//! connection slot forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Per direction. tokio's default of 8 KiB makes a bulk transfer cost a syscall pair per 8 KiB:
/// at 64 KiB a relayed GiB took less CPU in `bench/src/bin/opaque-tcp.rs` (RESULTS.md, "Opaque
/// TCP"), for 128 KiB per open tunnel.
const BUFFER: usize = 64 * 1024;

/// How a tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions finished: bytes each way (a to b, b to a).
    Done(u64, u64),
    /// Nothing moved for the idle timeout.
    Idle,
    Failed(io::Error),
}

/// Copies between `a` and `b` (half-closes passed on) until both end or `idle` passes with
/// no byte either way.
pub async fn copy_until_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut wa = Watched {
        inner: a,
        last: last.clone(),
        epoch,
    };
    let mut wb = Watched {
        inner: b,
        last: last.clone(),
        epoch,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut wa, &mut wb, BUFFER, BUFFER);
    tokio::pin!(copy);
    // Looked at four times per timeout: closed between 1 and 1.25 timeouts after the last
    // byte, for one timer per tunnel rather than one per read.
    let look = (idle / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            r = &mut copy => return match r {
                Ok((ab, ba)) => Ended::Done(ab, ba),
                Err(e) => Ended::Failed(e),
            },
            _ = tokio::time::sleep(look) => {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return Ended::Idle;
                }
            }
        }
    }
}

/// Notes when bytes last moved through it.
struct Watched<'a, T: ?Sized> {
    inner: &'a mut T,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T: ?Sized> Watched<'_, T> {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_closes_after_the_idle_timeout_and_a_busy_one_does_not() {
        let (mut app, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let tunnel =
            tokio::spawn(
                async move { copy_until_idle(&mut a, &mut b, Duration::from_secs(60)).await },
            );
        // Traffic every 50 s keeps it open well past one timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            app.write_all(b"ping")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut got = [0u8; 4];
            server
                .read_exact(&mut got)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(!tunnel.is_finished(), "closed while busy");
        let ended = tunnel.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(ended, Ended::Idle), "{ended:?}");
        let lasted = started.elapsed();
        assert!(
            (Duration::from_secs(260)..=Duration::from_secs(276)).contains(&lasted),
            "closed {lasted:?} after opening; the last byte was at 200 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn both_ends_closing_ends_it_with_the_counts() {
        let (mut app, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let tunnel =
            tokio::spawn(
                async move { copy_until_idle(&mut a, &mut b, Duration::from_secs(60)).await },
            );
        app.write_all(b"hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        app.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        server
            .write_all(b"bye!!!")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        server.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        drop(server);
        let mut back = Vec::new();
        app.read_to_end(&mut back)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (got.as_slice(), back.as_slice()),
            (&b"hello"[..], &b"bye!!!"[..])
        );
        match tunnel.await.unwrap_or_else(|e| panic!("{e}")) {
            Ended::Done(ab, ba) => assert_eq!((ab, ba), (5, 6)),
            other => panic!("{other:?}"),
        }
    }
}
