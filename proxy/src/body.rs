//! Body wrappers on the request path. All stream frame by frame, so memory stays bounded
//! whatever the body size; they count bytes, keep a copy for replay when a retry may need it,
//! and notice the end of the response.
//!
//! Not tower-http's body wrappers: its `Limited`/`MapResponseBody` do one thing each, and the
//! response body here must also carry the request's [`Record`] and report it exactly once.
//! Pinning is projected with pin-project-lite rather than by hand.

use crate::retry::replay::ReplayBody;
use crate::telemetry::record::Record;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use crate::error::BoxError;

pin_project_lite::pin_project! {
    /// The downstream request body, counting what it delivers and noting whether it failed.
    /// Generic over the body so it needs no `Unpin`; the proxy wraps hyper's `Incoming`.
    pub struct Counting<B = Incoming> {
        #[pin]
        inner: B,
        // A frame read ahead by `first_frame`, handed out before the rest.
        first: Option<Frame<Bytes>>,
        received: Option<Arc<AtomicU64>>,
        failed: Option<ClientBodyFailed>,
    }
}

/// Set once the client's own request body fails: chunked framing hyper could not decode, or
/// a body that ended before its declared length. The upstream only sees its request cut off,
/// so without this the client would be told the upstream failed (502) for its own fault.
#[derive(Debug, Clone, Default)]
pub struct ClientBodyFailed(Arc<AtomicBool>);

impl ClientBodyFailed {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl<B: Body> Counting<B> {
    pub fn new(inner: B, received: Option<Arc<AtomicU64>>) -> Self {
        // Only a body still to come can fail, so a request without one allocates nothing.
        let failed = (!inner.is_end_stream()).then(ClientBodyFailed::default);
        Self {
            inner,
            first: None,
            received,
            failed,
        }
    }

    /// A handle that tells, after the attempts, whether this body failed.
    pub fn failure(&self) -> Option<ClientBodyFailed> {
        self.failed.clone()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Counting<B> {
    /// Waits up to `within` for the body's first frame and keeps it to send first. A body
    /// whose framing is broken from its first bytes (a bad chunk size sent with the head)
    /// then fails here, before anything is sent upstream: RFC 9112 asks for a 400, and the
    /// upstream must not see half a request. A body slower than `within` is streamed as it
    /// comes; a framing error later in it can only cut the upstream's request off.
    pub async fn first_frame(&mut self, within: std::time::Duration) -> Result<(), B::Error> {
        if self.first.is_some() || self.inner.is_end_stream() {
            return Ok(());
        }
        let inner = &mut self.inner;
        let next = std::future::poll_fn(|cx| Pin::new(&mut *inner).poll_frame(cx));
        match tokio::time::timeout(within, next).await {
            Ok(Some(Ok(frame))) => {
                self.first = Some(frame);
                Ok(())
            }
            Ok(Some(Err(e))) => {
                if let Some(failed) = &self.failed {
                    failed.0.store(true, Ordering::Release);
                }
                Err(e)
            }
            Ok(None) | Err(_) => Ok(()),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Counting<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = match this.first.take() {
            Some(first) => Some(Ok(first)),
            None => ready!(this.inner.poll_frame(cx)),
        };
        match (&frame, this.received.as_ref(), this.failed.as_ref()) {
            (Some(Ok(f)), Some(n), _) => {
                if let Some(d) = f.data_ref() {
                    n.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            (Some(Err(_)), _, Some(failed)) => failed.0.store(true, Ordering::Release),
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(n) = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map(Bytes::len)
        {
            let n = n as u64;
            hint.set_lower(hint.lower() + n);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
        }
        hint
    }
}

/// A request body on its way upstream.
pub enum RequestBody {
    /// No body (most GETs): nothing to buffer, free to resend.
    Empty,
    /// Sent once; no retry can need it again.
    Streaming(Counting),
    /// Kept (up to a cap) so that a retry can send it again.
    Replay(ReplayBody<Counting>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Replay(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming(b) => b.is_end_stream(),
            RequestBody::Replay(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming(b) => b.size_hint(),
            RequestBody::Replay(b) => b.size_hint(),
        }
    }
}

/// An upstream response body: streamed as it arrives, or partly read ahead first.
pub enum UpstreamBody {
    Streaming(Incoming),
    /// Frames read ahead (to see gRPC trailers before deciding on a retry), then the rest.
    ReadAhead(VecDeque<Frame<Bytes>>, Option<Incoming>),
}

enum Inner {
    Upstream(Incoming),
    Local(Full<Bytes>),
    Buffered(VecDeque<Frame<Bytes>>, Option<Incoming>),
}

/// A response body on its way downstream, carrying the request's [`Record`].
pub struct ResponseBody {
    inner: Inner,
    record: Option<Record>,
}

impl ResponseBody {
    pub fn upstream(body: UpstreamBody, record: Record) -> Self {
        let inner = match body {
            UpstreamBody::Streaming(b) => Inner::Upstream(b),
            UpstreamBody::ReadAhead(frames, rest) => Inner::Buffered(frames, rest),
        };
        Self {
            inner,
            record: Some(record),
        }
    }

    pub fn local(body: Bytes, record: Option<Record>) -> Self {
        Self {
            inner: Inner::Local(Full::new(body)),
            record,
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            r.finish();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame: Option<Result<Frame<Bytes>, BoxError>> = match &mut this.inner {
            Inner::Upstream(b) => ready!(Pin::new(b).poll_frame(cx)).map(|r| r.map_err(Into::into)),
            Inner::Local(b) => {
                ready!(Pin::new(b).poll_frame(cx)).map(|r| r.map_err(|e: Infallible| match e {}))
            }
            Inner::Buffered(frames, rest) => match frames.pop_front() {
                Some(f) => Some(Ok(f)),
                None => match rest {
                    Some(b) => ready!(Pin::new(b).poll_frame(cx)).map(|r| r.map_err(Into::into)),
                    None => None,
                },
            },
        };
        match &frame {
            Some(Ok(f)) => {
                if let (Some(d), Some(r)) = (f.data_ref(), this.record.as_mut()) {
                    r.bytes_sent += d.len() as u64;
                }
            }
            Some(Err(_)) | None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Local(b) => b.is_end_stream(),
            Inner::Buffered(f, rest) => {
                f.is_empty() && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Local(b) => b.size_hint(),
            Inner::Buffered(..) => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One data frame, then the error hyper gives for a chunk it cannot decode.
    struct FailsAfterOne(bool);

    impl Body for FailsAfterOne {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let first = std::mem::replace(&mut self.0, false);
            Poll::Ready(Some(if first {
                Ok(Frame::data(Bytes::from_static(b"hello")))
            } else {
                Err("invalid chunk size".into())
            }))
        }
    }

    #[tokio::test]
    async fn a_failing_client_body_is_noted_and_an_empty_one_costs_nothing() {
        use http_body_util::BodyExt;
        let mut body = Counting::new(FailsAfterOne(true), None);
        let failed = body.failure().expect("a body still to come");
        assert!(body.frame().await.expect("frame").is_ok());
        assert!(!failed.is_set(), "not before the error");
        assert!(body.frame().await.expect("frame").is_err());
        assert!(failed.is_set());
        let empty = Counting::new(http_body_util::Empty::<Bytes>::new(), None);
        assert!(empty.failure().is_none());
    }

    /// A body that never delivers anything (a client that sent the head only).
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_frame_is_read_ahead_and_sent_first_and_broken_framing_fails_early() {
        use http_body_util::BodyExt;
        let wait = std::time::Duration::from_millis(50);
        // Read ahead, then handed out first and counted once.
        let received = Arc::new(AtomicU64::new(0));
        let mut body = Counting::new(FailsAfterOne(true), Some(received.clone()));
        body.first_frame(wait).await.expect("a good first frame");
        assert_eq!(
            received.load(Ordering::Relaxed),
            0,
            "not counted until sent"
        );
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().lower(), 5);
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"hello")));
        assert_eq!(received.load(Ordering::Relaxed), 5);
        assert!(body.frame().await.expect("frame").is_err());

        // Broken from the first bytes: fails before anything is sent, and is noted.
        let mut body = Counting::new(FailsAfterOne(false), None);
        let failed = body.failure().expect("a body still to come");
        assert!(body.first_frame(wait).await.is_err());
        assert!(failed.is_set());

        // A client slower than the wait: the request goes on, streaming.
        let start = tokio::time::Instant::now();
        let mut body = Counting::new(Silent, None);
        body.first_frame(wait).await.expect("not an error");
        assert_eq!(start.elapsed(), wait);
        assert!(!body.failure().expect("still to come").is_set());
    }
}
