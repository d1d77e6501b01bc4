//! The per-request record: created when the response head is known, carried inside the
//! response body, and reported exactly once when the body ends or is dropped (a client that
//! hangs up mid-body still counts).

use super::access_log::{AccessLog, Entry};
use super::metrics::StatusMetrics;
use super::stats::SlidingHistogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

pub struct Record {
    pub start: Instant,
    pub status: http::StatusCode,
    pub metrics: Arc<StatusMetrics>,
    pub stats: Option<Arc<SlidingHistogram>>,
    pub log: Option<Box<LogContext>>,
    /// The final attempt's span, ended with the response.
    pub span: Option<Box<crate::trace::export::Pending>>,
    pub bytes_sent: u64,
    /// The destination's in-flight slot, released when the response ends.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Only built when the access log is on, so a proxy without it allocates nothing for logging.
pub struct LogContext {
    pub sink: AccessLog,
    pub entry: Entry,
    pub bytes_received: Option<Arc<AtomicU64>>,
}

impl Record {
    pub fn finish(self) {
        let elapsed = self.start.elapsed();
        self.metrics.record(self.status, elapsed.as_secs_f64());
        if let Some(s) = &self.stats {
            s.record(elapsed);
        }
        if let Some(span) = self.span {
            span.finish(Some(self.status.as_u16()), None);
        }
        if let Some(log) = self.log {
            let LogContext {
                sink,
                mut entry,
                bytes_received,
            } = *log;
            entry.status = self.status.as_u16();
            entry.duration = elapsed;
            entry.bytes_sent = self.bytes_sent;
            entry.bytes_received = bytes_received.map_or(0, |b| b.load(Ordering::Relaxed));
            sink.log(entry);
        }
    }
}
