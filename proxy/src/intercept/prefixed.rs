//! A connection whose first bytes were already read (to detect its protocol), replayed before
//! the rest, so whoever serves it sees the stream from its first byte.

use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    pub struct Prefixed<I> {
        prefix: Bytes,
        #[pin]
        inner: I,
    }
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Bytes, inner: I) -> Self {
        Self { prefix, inner }
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// The bytes not yet replayed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl<I: AsyncRead> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_prefix_comes_first_then_the_stream() -> io::Result<()> {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b" world").await?;
        drop(far);
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), near);
        let mut out = String::new();
        p.read_to_string(&mut out).await?;
        assert_eq!(out, "hello world");
        Ok(())
    }

    #[tokio::test]
    async fn a_small_read_buffer_takes_the_prefix_in_pieces() -> io::Result<()> {
        let (_far, near) = tokio::io::duplex(64);
        let mut p = Prefixed::new(Bytes::from_static(b"abcdef"), near);
        let mut two = [0u8; 2];
        p.read_exact(&mut two).await?;
        assert_eq!(&two, b"ab");
        p.read_exact(&mut two).await?;
        assert_eq!(&two, b"cd");
        Ok(())
    }
}
