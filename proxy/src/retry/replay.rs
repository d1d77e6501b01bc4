//! A request body that can be sent again when the request is retried.
//!
//! The client's body is streamed, not collected first: the first attempt starts sending as
//! soon as the first chunk arrives, and each chunk is kept (up to a cap) as it passes through,
//! so a retry can send what was already read and then carry on reading the client's body
//! where the previous attempt stopped. Past the cap the copy is dropped and the body streams
//! on once, unretryable, so a large upload never costs more than `cap` bytes of memory.
//!
//! Every value belongs to a generation. [`ReplayBody::try_clone`] starts a new one and
//! supersedes every older value: a superseded value never touches the client's body again and
//! fails when polled. A failed attempt's connection may well keep polling its body after the
//! retry has started; without this, it would steal chunks that the retry then never sends.
//!
//! Usage: keep the value from [`ReplayBody::new`] as a handle and send
//! `handle.try_clone()` on every attempt, the first included (when that is `None` the body is
//! too large to replay: send the handle itself, once).

use crate::error::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Why a [`ReplayBody`] failed on its own account (source errors are passed through as they
/// are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// A retry took over the body; this attempt must not send any more of it.
    #[error("request body superseded by a retry")]
    Superseded,
    /// The client's body failed during an earlier attempt, so the rest of it is lost.
    #[error("request body failed during an earlier attempt")]
    SourceFailed,
}

/// A request body that can be replayed for retries, buffering up to a cap as it streams.
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    generation: u64,
    /// Buffered chunks this value has yielded.
    pos: usize,
    /// Bytes in those chunks, so the size hint needs no walk over the buffer.
    yielded: usize,
    /// This value has yielded the trailers (if any) and its end.
    finished: bool,
}

enum Source<B> {
    Streaming(B),
    Ended(Option<HeaderMap>),
    Failed,
}

struct Shared<B> {
    source: Source<B>,
    chunks: Vec<Bytes>,
    buffered: usize,
    cap: usize,
    /// The buffer was given up; the body streams once and can no longer be replayed.
    overflowed: bool,
    /// The newest generation: the only one allowed to poll.
    generation: u64,
    /// The last task that waited on the source, woken when superseded so that it fails at
    /// once instead of waiting for data that will now go to the retry.
    waker: Option<Waker>,
}

impl<B> Shared<B> {
    fn replayable(&self) -> bool {
        !self.overflowed && !matches!(self.source, Source::Failed)
    }

    fn give_up_buffer(&mut self) {
        self.overflowed = true;
        self.chunks = Vec::new();
        self.buffered = 0;
    }
}

impl<B> ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(body: B, cap: usize) -> Self {
        // A body known to be too large would only be buffered to be thrown away.
        let too_large = body.size_hint().exact().is_some_and(|len| len > cap as u64);
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: Source::Streaming(body),
                chunks: Vec::new(),
                buffered: 0,
                cap,
                overflowed: too_large,
                generation: 0,
                waker: None,
            })),
            generation: 0,
            pos: 0,
            yielded: 0,
            finished: false,
        }
    }
}

impl<B> ReplayBody<B> {
    /// A body for the next attempt, replaying from the start; `None` if the body cannot be
    /// replayed (it outgrew the cap, or the client's body failed). On `Some`, this value and
    /// every other older one are superseded.
    pub fn try_clone(&self) -> Option<Self> {
        let mut shared = lock(&self.shared);
        if !shared.replayable() {
            return None;
        }
        shared.generation += 1;
        let generation = shared.generation;
        let waker = shared.waker.take();
        drop(shared);
        // Woken outside the lock: the woken task may run on another thread and lock at once.
        if let Some(w) = waker {
            w.wake();
        }
        Some(Self {
            shared: Arc::clone(&self.shared),
            generation,
            pos: 0,
            yielded: 0,
            finished: false,
        })
    }

    /// Whether [`try_clone`](Self::try_clone) can still succeed (the body has not outgrown
    /// the cap and the client's body has not failed).
    pub fn is_replayable(&self) -> bool {
        lock(&self.shared).replayable()
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // A panic inside the source's poll leaves at worst a lost chunk, which the attempt that
    // panicked reports anyway; later attempts must still be able to fail cleanly.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut guard = lock(&this.shared);
        let shared = &mut *guard;
        if shared.generation != this.generation {
            return Poll::Ready(Some(Err(ReplayError::Superseded.into())));
        }

        if let Some(chunk) = shared.chunks.get(this.pos) {
            this.pos += 1;
            this.yielded += chunk.len();
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }

        let source = match &mut shared.source {
            Source::Streaming(source) => source,
            Source::Ended(trailers) => {
                if this.finished {
                    return Poll::Ready(None);
                }
                this.finished = true;
                return Poll::Ready(trailers.clone().map(|t| Ok(Frame::trailers(t))));
            }
            Source::Failed => return Poll::Ready(Some(Err(ReplayError::SourceFailed.into()))),
        };

        // Polling the source under the lock is what makes a chunk land in the buffer and in
        // exactly one attempt atomically with respect to `try_clone`. The poll never blocks.
        let frame = match Pin::new(source).poll_frame(cx) {
            Poll::Pending => {
                match &shared.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => shared.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                shared.source = Source::Ended(None);
                this.finished = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                shared.source = Source::Failed;
                shared.chunks = Vec::new();
                shared.buffered = 0;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };

        let frame = match frame.into_data() {
            Ok(data) => {
                if !shared.overflowed {
                    let total = shared.buffered.saturating_add(data.len());
                    if total > shared.cap {
                        shared.give_up_buffer();
                        this.pos = 0;
                        this.yielded = 0;
                    } else {
                        shared.chunks.push(data.clone());
                        shared.buffered = total;
                        this.pos += 1;
                        this.yielded += data.len();
                    }
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Err(frame) => frame,
        };

        match frame.into_trailers() {
            Ok(trailers) => {
                // Trailers end a body; dropping the source here also releases the client's
                // stream without waiting for every clone to go.
                shared.source = Source::Ended(Some(trailers.clone()));
                this.finished = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Err(other) => {
                // A frame kind this code does not know cannot be replayed faithfully.
                shared.give_up_buffer();
                this.pos = 0;
                this.yielded = 0;
                Poll::Ready(Some(Ok(other)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        // A superseded value must not claim to be complete: hyper would then finish the old
        // request as if its (truncated) body were whole, instead of polling it and aborting.
        if shared.generation != self.generation || self.pos < shared.chunks.len() {
            return false;
        }
        match &shared.source {
            Source::Streaming(source) => source.is_end_stream(),
            Source::Ended(trailers) => self.finished || trailers.is_none(),
            Source::Failed => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let shared = lock(&self.shared);
        if shared.generation != self.generation {
            return SizeHint::default();
        }
        let pending = shared.buffered.saturating_sub(self.yielded) as u64;
        match &shared.source {
            Source::Streaming(source) => {
                let hint = source.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower().saturating_add(pending));
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper.saturating_add(pending));
                }
                out
            }
            Source::Ended(_) => SizeHint::with_exact(pending),
            Source::Failed => SizeHint::default(),
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("generation", &self.generation)
            .field("pos", &self.pos)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Full};
    use std::time::Duration;
    use tokio::sync::mpsc;

    type Item = Result<Frame<Bytes>, BoxError>;

    /// A client body fed by hand, to play a slow client.
    struct ChanBody {
        rx: mpsc::UnboundedReceiver<Item>,
        remaining: Option<u64>,
    }

    impl Body for ChanBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
            let item = std::task::ready!(self.rx.poll_recv(cx));
            if let (Some(Ok(f)), Some(n)) = (&item, self.remaining.as_mut()) {
                if let Some(d) = f.data_ref() {
                    *n -= d.len() as u64;
                }
            }
            Poll::Ready(item)
        }

        fn size_hint(&self) -> SizeHint {
            self.remaining.map(SizeHint::with_exact).unwrap_or_default()
        }
    }

    fn chan(exact: Option<u64>) -> (mpsc::UnboundedSender<Item>, ChanBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            ChanBody {
                rx,
                remaining: exact,
            },
        )
    }

    fn send(tx: &mpsc::UnboundedSender<Item>, data: &'static str) {
        tx.send(Ok(Frame::data(Bytes::from_static(data.as_bytes()))))
            .unwrap();
    }

    async fn next_data<B>(body: &mut ReplayBody<B>) -> Bytes
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        body.frame()
            .await
            .expect("a frame")
            .expect("not an error")
            .into_data()
            .expect("a data frame")
    }

    async fn collect<B>(body: ReplayBody<B>) -> (Bytes, Option<HeaderMap>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let collected = body.collect().await.expect("body ok");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ReplayBody<ChanBody>>();
        check::<ReplayBody<hyper::body::Incoming>>();
    }

    #[tokio::test]
    async fn replays_whole_body_with_trailers_across_three_attempts() {
        let (tx, src) = chan(None);
        send(&tx, "hello ");
        send(&tx, "world");
        tx.send(Ok(Frame::trailers(trailers()))).unwrap();
        drop(tx);
        let handle = ReplayBody::new(src, 1024);
        for attempt in 1..=3 {
            let body = handle.try_clone().expect("replayable");
            let (bytes, t) = collect(body).await;
            assert_eq!(bytes, "hello world", "attempt {attempt}");
            assert_eq!(t, Some(trailers()), "attempt {attempt}");
        }
        assert!(handle.is_replayable());
    }

    #[tokio::test]
    async fn slow_body_continues_where_the_failed_attempt_stopped() {
        let (tx, src) = chan(None);
        let handle = ReplayBody::new(src, 1024);
        let mut first = handle.try_clone().unwrap();
        send(&tx, "A");
        assert_eq!(next_data(&mut first).await, "A");
        // The first attempt fails and goes away before the client sends more.
        drop(first);
        let second = handle.try_clone().unwrap();
        send(&tx, "B");
        drop(tx);
        assert_eq!(collect(second).await.0, "AB");
        // And a third attempt replays both from the buffer alone.
        assert_eq!(collect(handle.try_clone().unwrap()).await.0, "AB");
    }

    #[tokio::test]
    async fn superseded_attempt_errors_and_leaves_source_alone() {
        let (tx, src) = chan(None);
        let handle = ReplayBody::new(src, 1024);
        let mut first = handle.try_clone().unwrap();
        send(&tx, "A");
        assert_eq!(next_data(&mut first).await, "A");
        let mut second = handle.try_clone().unwrap();
        send(&tx, "B");
        // The old attempt is still being polled, e.g. by its connection task.
        let err = first.frame().await.unwrap().unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReplayError>(),
            Some(&ReplayError::Superseded)
        );
        assert!(!first.is_end_stream());
        assert_eq!(first.size_hint().exact(), None);
        assert!(first.frame().await.unwrap().is_err());
        // B is still there for the retry, after A, each once.
        assert_eq!(next_data(&mut second).await, "A");
        assert_eq!(next_data(&mut second).await, "B");
        drop(tx);
        assert!(second.frame().await.is_none());
        assert!(second.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn superseded_attempt_waiting_on_the_client_is_woken_to_fail() {
        let (tx, src) = chan(None);
        let handle = ReplayBody::new(src, 1024);
        let mut first = handle.try_clone().unwrap();
        let waiting = tokio::spawn(async move { first.frame().await.map(|r| r.is_err()) });
        // Let the first attempt park on the (silent) client body.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let second = handle.try_clone().unwrap();
        // With paused time, a task that is never woken would make this time out at once.
        let res = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert_eq!(res.expect("woken").expect("no panic"), Some(true));
        send(&tx, "data");
        drop(tx);
        assert_eq!(collect(second).await.0, "data");
    }

    #[tokio::test]
    async fn overflow_streams_once_unmodified_and_cannot_be_replayed() {
        const LEN: usize = 200 * 1024;
        let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let (tx, src) = chan(None);
        for chunk in payload.chunks(4 * 1024) {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                .unwrap();
        }
        drop(tx);
        let handle = ReplayBody::new(src, 64 * 1024);
        let first = handle.try_clone().unwrap();
        assert!(first.is_replayable());
        let shared = Arc::clone(&first.shared);
        let (bytes, _) = collect(first).await;
        assert_eq!(bytes.len(), LEN);
        assert_eq!(&bytes[..], &payload[..]);
        assert!(!handle.is_replayable());
        assert!(handle.try_clone().is_none());
        let shared = lock(&shared);
        assert!(
            shared.chunks.is_empty() && shared.buffered == 0,
            "buffer kept"
        );
    }

    #[tokio::test]
    async fn known_length_over_cap_is_never_buffered() {
        const LEN: usize = 100 * 1024;
        let (tx, src) = chan(Some(LEN as u64));
        let mut body = ReplayBody::new(src, 64 * 1024);
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        assert_eq!(body.size_hint().exact(), Some(LEN as u64));
        let mut total = 0;
        for _ in 0..LEN / 1024 {
            tx.send(Ok(Frame::data(Bytes::from(vec![7u8; 1024]))))
                .unwrap();
            total += next_data(&mut body).await.len();
            assert_eq!(lock(&body.shared).buffered, 0);
            assert!(lock(&body.shared).chunks.is_empty());
        }
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(total, LEN);
    }

    #[tokio::test]
    async fn size_hint_counts_replayed_and_unread_bytes() {
        let (tx, src) = chan(Some(10));
        let handle = ReplayBody::new(src, 1024);
        let mut first = handle.try_clone().unwrap();
        assert_eq!(first.size_hint().exact(), Some(10));
        send(&tx, "hello");
        assert_eq!(next_data(&mut first).await, "hello");
        assert_eq!(first.size_hint().exact(), Some(5));
        let mut second = handle.try_clone().unwrap();
        assert_eq!(second.size_hint().exact(), Some(10));
        assert_eq!(next_data(&mut second).await, "hello");
        assert_eq!(second.size_hint().exact(), Some(5));
        send(&tx, "world");
        drop(tx);
        assert_eq!(next_data(&mut second).await, "world");
        assert!(second.frame().await.is_none());
        let third = handle.try_clone().unwrap();
        assert_eq!(third.size_hint().exact(), Some(10));
        assert_eq!(collect(third).await.0, "helloworld");
    }

    #[tokio::test]
    async fn empty_body() {
        let handle = ReplayBody::new(Full::new(Bytes::new()), 1024);
        let first = handle.try_clone().unwrap();
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        assert_eq!(collect(first).await, (Bytes::new(), None));
        let second = handle.try_clone().unwrap();
        assert!(second.is_end_stream());
        assert_eq!(collect(second).await, (Bytes::new(), None));

        // An empty body that only says so at the end replays as empty too.
        let (tx, src) = chan(None);
        drop(tx);
        let handle = ReplayBody::new(src, 0);
        let first = handle.try_clone().unwrap();
        assert!(!first.is_end_stream());
        assert_eq!(collect(first).await.0, Bytes::new());
        let second = handle.try_clone().unwrap();
        assert!(second.is_end_stream());
        assert_eq!(second.size_hint().exact(), Some(0));
        assert_eq!(collect(second).await.0, Bytes::new());
    }

    #[tokio::test]
    async fn client_body_error_makes_it_unreplayable() {
        let (tx, src) = chan(None);
        let handle = ReplayBody::new(src, 1024);
        let mut first = handle.try_clone().unwrap();
        send(&tx, "A");
        tx.send(Err("client reset".into())).unwrap();
        assert_eq!(next_data(&mut first).await, "A");
        let err = first.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "client reset");
        assert!(!handle.is_replayable());
        assert!(handle.try_clone().is_none());
        let err = first.frame().await.unwrap().unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReplayError>(),
            Some(&ReplayError::SourceFailed)
        );
    }
}
