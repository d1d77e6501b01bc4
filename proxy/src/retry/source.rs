//! Where each attempt's request body comes from: nothing (free to resend), the client's
//! stream sent once, or a [`ReplayBody`] that a retry can send again up to its cap.

use super::replay::ReplayBody;
use crate::body::{Counting, RequestBody};
use http_body::Body as _;

pub enum Source {
    Empty,
    Streaming(Option<Counting>),
    Replay(Option<ReplayBody<Counting>>),
}

impl Source {
    /// The body source for a request that may be retried (`replay_cap` bytes kept) or not.
    pub fn new(body: Counting, may_retry: bool, replay_cap: usize) -> Self {
        if body.is_end_stream() {
            Source::Empty
        } else if may_retry {
            Source::Replay(Some(ReplayBody::new(body, replay_cap)))
        } else {
            Source::Streaming(Some(body))
        }
    }

    /// The body for attempt number `attempt`. The original handle is sent only on the first
    /// attempt, when it was too large to keep from the start; after that it has been
    /// superseded by its clones.
    pub fn next_attempt(&mut self, attempt: u32) -> Option<RequestBody> {
        match self {
            Source::Empty => Some(RequestBody::Empty),
            Source::Streaming(b) => b.take().map(RequestBody::Streaming),
            Source::Replay(master) => {
                let clone = master.as_ref().and_then(|m| m.try_clone());
                match clone {
                    Some(c) => Some(RequestBody::Replay(c)),
                    None if attempt == 1 => master.take().map(RequestBody::Replay),
                    None => None,
                }
            }
        }
    }

    /// Whether a retry could still send the whole body.
    pub fn replayable(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Streaming(_) => false,
            Source::Replay(m) => m.as_ref().is_some_and(|m| m.is_replayable()),
        }
    }
}
