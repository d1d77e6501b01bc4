//! What one connection is doing, for its idle timeout and its header-read timeout: how many
//! requests it has begun and how many responses are still out. Two relaxed atomic adds per
//! request on the connection's own counters, and one `Arc` bump for the response's guard.

use super::stream_idle;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

#[derive(Debug, Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// The connection became a tunnel (101): its bytes are no longer requests.
    upgraded: AtomicBool,
}

impl Activity {
    /// A request's head is in: counted until its response body ends or is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Requests begun so far: a change means a request head was read.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }
}

/// One request of a connection, until its response ends.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    /// Its response switched protocols: what follows on the connection is a tunnel.
    pub fn upgrade(&self) {
        self.0.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight, and tells an HTTP/2
    /// stream's idle timer whose turn it is (see [`stream_idle`]).
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        _held: InFlight,
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B, held: InFlight) -> Self {
        // The head is ready: the client's turn to take it.
        stream_idle::handed();
        Self { inner, _held: held }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = self.project().inner.poll_frame(cx);
        match &polled {
            Poll::Pending => stream_idle::waiting(),
            Poll::Ready(Some(Ok(_))) => stream_idle::handed(),
            Poll::Ready(_) => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
