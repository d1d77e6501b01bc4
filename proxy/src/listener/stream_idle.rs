//! The response idle timeout for HTTP/2 streams. hyper runs each stream as a task of its own
//! through the connection's executor; this executor wraps each one so that a stream whose
//! client takes nothing of its response for the timeout is dropped, which resets the stream
//! and frees its in-flight slot and upstream connection.
//!
//! Why not a timer in the response body: hyper stops polling a body while the stream has no
//! flow-control window, so a body never learns that its client stopped reading. The task
//! around it does get polled, and learns from the body (through a thread-local set during
//! that poll, see [`handed`] and [`waiting`]) whose turn it is: the client's after the body
//! handed over a frame, the upstream's while the body is waiting for one. Only the client's
//! turn is timed: a slow upstream is the route timeout's business. A stream that never waits
//! on its client allocates no timer.

use super::bounds::Bounds;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

const NOTHING: u8 = 0;
const HANDED: u8 = 1;
const WAITING: u8 = 2;

thread_local! {
    /// What the response body being polled on this thread last did.
    static LAST: Cell<u8> = const { Cell::new(NOTHING) };
}

/// The response body handed a frame over (or the response head is ready): the client's turn.
pub(crate) fn handed() {
    LAST.with(|c| c.set(HANDED));
}

/// The response body is waiting for its upstream.
pub(crate) fn waiting() {
    LAST.with(|c| c.set(WAITING));
}

/// Spawns hyper's HTTP/2 stream tasks, each under the listener's response idle timeout.
#[derive(Clone)]
pub(crate) struct StreamExec {
    bounds: Arc<Bounds>,
}

impl StreamExec {
    pub fn new(bounds: Arc<Bounds>) -> Self {
        Self { bounds }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(IdleStream::new(fut, self.bounds.clone()));
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct IdleStream<F> {
        #[pin]
        inner: F,
        bounds: Arc<Bounds>,
        // Allocated the first time the stream waits on its client.
        timer: Option<Pin<Box<Sleep>>>,
        // The client's turn: the body handed over a frame and was not polled since.
        client_turn: bool,
        // When the client's turn began; read only once a timer exists.
        since: Option<Instant>,
    }
}

impl<F: Future<Output = ()>> IdleStream<F> {
    pub fn new(inner: F, bounds: Arc<Bounds>) -> Self {
        Self {
            inner,
            bounds,
            timer: None,
            client_turn: false,
            since: None,
        }
    }
}

impl<F: Future<Output = ()>> Future for IdleStream<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // Restored after: a stream task is never polled inside another, but nothing is lost
        // by not assuming it.
        let outer = LAST.with(|c| c.replace(NOTHING));
        let done = this.inner.poll(cx).is_ready();
        let last = LAST.with(|c| c.replace(outer));
        if done {
            return Poll::Ready(());
        }
        match last {
            HANDED => {
                *this.client_turn = true;
                if this.timer.is_some() {
                    *this.since = Some(Instant::now());
                }
            }
            WAITING => *this.client_turn = false,
            _ => {}
        }
        if !*this.client_turn {
            // A timer that fires now is looked at again only once the client's turn comes.
            return Poll::Pending;
        }
        let idle = this.bounds.response_idle;
        if this.timer.is_none() {
            let now = Instant::now();
            *this.since = Some(now);
            *this.timer = Some(Box::pin(tokio::time::sleep_until(now + idle)));
        }
        let Some(timer) = this.timer.as_mut() else {
            return Poll::Pending;
        };
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = this.since.unwrap_or_else(Instant::now) + idle;
            if Instant::now() >= deadline {
                this.bounds.response_idle_timeouts.inc();
                tracing::debug!("HTTP/2 stream reset: its client took nothing of the response");
                // Dropping the stream's future (when this task ends) resets the stream.
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}
