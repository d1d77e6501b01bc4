//! Body wrappers on the request path. Both stream frame by frame, so memory stays bounded
//! whatever the body size; they only count bytes and notice the end.

use crate::telemetry::record::Record;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream.
pub struct RequestBody {
    inner: Incoming,
    received: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, received: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, received }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let (Some(Ok(f)), Some(n)) = (&frame, &this.received) {
            if let Some(d) = f.data_ref() {
                n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Inner {
    Upstream(Incoming),
    Local(Full<Bytes>),
}

/// A response body on its way downstream, carrying the request's [`Record`].
pub struct ResponseBody {
    inner: Inner,
    record: Option<Record>,
}

impl ResponseBody {
    pub fn upstream(body: Incoming, record: Record) -> Self {
        Self {
            inner: Inner::Upstream(body),
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Local(b) => b.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}
