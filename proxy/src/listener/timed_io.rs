//! A downstream connection's socket under two timers, both per connection and allocated
//! only when first needed:
//!
//! - **header read** (HTTP/1, slowloris): from the first byte of a request to the end of its
//!   header block. It starts on the first byte, not when the connection goes idle, so it
//!   does not also cut idle keep-alive connections short (the idle timeout does that).
//!   HTTP/2 connections (told by the first three bytes of the preface, `PRI`) and tunnels
//!   (after a 101) skip it.
//! - **response idle** (the client stopped reading): a write that makes no progress for the
//!   timeout fails the connection, which drops the response body in flight and with it the
//!   in-flight slot and the upstream connection.
//!
//! A timeout is an error from the socket, so hyper ends the connection as for any I/O error.

use super::activity::Activity;
use super::bounds::Bounds;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How an HTTP/2 connection starts (RFC 9113 §3.4); no HTTP/1 method starts with it.
const PREFACE: &[u8; 3] = b"PRI";

enum Head {
    /// Between requests: the next byte starts a head.
    Between,
    /// A head has begun; it is complete once `started` moves past `begun`. The deadline is
    /// set the first time a read has to wait, so a head that arrives whole costs no clock.
    Reading {
        begun: u64,
        deadline: Option<Instant>,
    },
    /// HTTP/2: no header-read timer.
    Off,
}

pub(crate) struct TimedIo<I> {
    io: I,
    activity: Arc<Activity>,
    bounds: Arc<Bounds>,
    head: Head,
    /// Bytes of [`PREFACE`] seen at the start of the connection; past its length once told.
    preface: usize,
    head_timer: Option<Pin<Box<Sleep>>>,
    stall_timer: Option<Pin<Box<Sleep>>>,
    /// Set while writes wait on the client, since `stall_since`.
    stalled: bool,
    stall_since: Option<Instant>,
    /// Our answer in place of one hyper wrote for a head it refused: the bytes and how many
    /// are out. Once sent, `replaced`: what hyper writes after (nothing: it closes) passes.
    replacing: Option<(Vec<u8>, usize)>,
    replaced: bool,
}

impl<I> TimedIo<I> {
    pub fn new(io: I, activity: Arc<Activity>, bounds: Arc<Bounds>) -> Self {
        Self {
            io,
            activity,
            bounds,
            head: Head::Between,
            preface: 0,
            head_timer: None,
            stall_timer: None,
            stalled: false,
            stall_since: None,
            replacing: None,
            replaced: false,
        }
    }

    fn read_some(&mut self, bytes: &[u8]) {
        if self.preface < PREFACE.len() {
            for &b in bytes.iter().take(PREFACE.len() - self.preface) {
                if b == PREFACE[self.preface] {
                    self.preface += 1;
                } else {
                    self.preface = usize::MAX;
                    break;
                }
            }
            if self.preface == PREFACE.len() {
                self.head = Head::Off;
            }
        }
        if let Head::Reading { begun, .. } = self.head {
            if self.activity.started() != begun {
                self.head = Head::Between;
            }
        }
        // Bytes that arrive while a response is still out are that request's body (or a
        // pipelined head, which the idle timeout bounds).
        if self.activity.upgraded() {
            // A tunnel (WebSocket): its bytes are not request heads.
            self.head = Head::Off;
        }
        if matches!(self.head, Head::Between) && self.activity.in_flight() == 0 {
            self.head = Head::Reading {
                begun: self.activity.started(),
                deadline: None,
            };
        }
    }

    /// A read has to wait: fails it if a head has been arriving for too long.
    fn head_overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let Head::Reading { begun, deadline } = &mut self.head else {
            return false;
        };
        if self.activity.started() != *begun {
            self.head = Head::Between;
            return false;
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.bounds.header_read);
        match &mut self.head_timer {
            Some(t) if t.deadline() != deadline => t.as_mut().reset(deadline),
            Some(_) => {}
            None => self.head_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        let Some(timer) = self.head_timer.as_mut() else {
            return false;
        };
        timer.as_mut().poll(cx).is_ready()
    }

    /// A write has to wait on the client: fails it once the client has taken nothing for the
    /// response idle timeout. The timer is moved only when it fires, not at every stall, so
    /// a client that reads steadily but slowly costs a clock read per stall, not a timer.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let idle = self.bounds.response_idle;
        if !self.stalled {
            self.stalled = true;
            let now = Instant::now();
            self.stall_since = Some(now);
            if self.stall_timer.is_none() {
                self.stall_timer = Some(Box::pin(tokio::time::sleep_until(now + idle)));
            }
        }
        let Some(timer) = self.stall_timer.as_mut() else {
            return Poll::Pending;
        };
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = self.stall_since.unwrap_or_else(Instant::now) + idle;
            if Instant::now() >= deadline {
                self.bounds.response_idle_timeouts.inc();
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing of the response for the response idle timeout",
                ));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// A write of `buf` while a head is arriving that no request came of: if hyper is refusing
    /// it, our answer goes out instead (see [`super::hyper_errors`]).
    fn replace(&mut self, buf: &[u8]) {
        // hyper's own answer: a head has begun arriving and no request came of it. (Not "no
        // request in flight": hyper drops a small response's body before writing its head.)
        let Head::Reading { begun, .. } = self.head else {
            return;
        };
        if self.replacing.is_some()
            || self.replaced
            || self.activity.started() != begun
            || self.activity.upgraded()
        {
            return;
        }
        if let Some((error, bytes)) =
            super::hyper_errors::replacement(buf, self.bounds.header_limit)
        {
            match error {
                crate::error::ProxyError::HeadersTooLarge => self.bounds.oversized_heads.inc(),
                _ => self.bounds.malformed_requests.inc(),
            }
            tracing::debug!(
                reason = error.reason(),
                "answered a request head hyper refused"
            );
            self.replacing = Some((bytes, 0));
        }
    }

    /// Writes what is left of the replacement; `None` when there is none.
    fn write_replacement(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>>
    where
        I: AsyncWrite + Unpin,
    {
        let (bytes, mut out) = self.replacing.take()?;
        while out < bytes.len() {
            let r = Pin::new(&mut self.io).poll_write(cx, &bytes[out..]);
            match self.wrote(cx, r) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => out += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => {
                    self.replacing = Some((bytes, out));
                    return Some(Poll::Pending);
                }
            }
        }
        self.replaced = true;
        Some(Poll::Ready(Ok(())))
    }

    fn wrote<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.stall(cx).map(Err),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.read_some(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.head_overdue(cx) => {
                this.bounds.header_read_timeouts.inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request header block did not arrive within the header read timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.replace(buf);
        match this.write_replacement(cx) {
            // hyper's bytes count as written; none of them goes out.
            Some(Poll::Ready(Ok(()))) => Poll::Ready(Ok(buf.len())),
            Some(Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            Some(Poll::Pending) => Poll::Pending,
            None => {
                let r = Pin::new(&mut this.io).poll_write(cx, buf);
                this.wrote(cx, r)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.replace(first);
        }
        match this.write_replacement(cx) {
            Some(Poll::Ready(Ok(()))) => {
                return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
            }
            Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
            Some(Poll::Pending) => return Poll::Pending,
            None => {}
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.wrote(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.wrote(cx, r)
    }
}
