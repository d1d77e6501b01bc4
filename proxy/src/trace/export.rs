//! The span pipeline off the request path: requests `try_send` finished spans into a bounded
//! queue (full means dropped and counted, never waited for); one task batches them (up to
//! [`BATCH`] spans or [`INTERVAL`] after the first) and hands each batch to the OTLP
//! exporter under a timeout. A collector that is down or slow costs dropped spans, counted
//! by reason, and nothing else. The SDK's batch processor is not used because it neither
//! exposes its drop count nor lets the queue bound be shared with our metrics.
//!
//! A [`Pending`] span is recorded on the request path and carries its sink, so ending it is
//! one `try_send`; the box travels through the queue as it is, no second allocation.

use super::span::{to_span_data, ErrorType, SpanRecord};
use crate::Direction;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::SpanExporter;
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use std::time::Duration;
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub const BATCH: usize = 512;
pub const INTERVAL: Duration = Duration::from_secs(1);
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot set up the OTLP exporter for {endpoint}: {reason}")]
    Build { endpoint: String, reason: String },
}

/// Counters the pipeline keeps; `Metrics` registers them.
#[derive(Clone)]
pub struct SpanCounters {
    pub exported: IntCounter,
    pub dropped_queue_full: IntCounter,
    pub dropped_export_failed: IntCounter,
}

/// A span being recorded on the request path, with where it goes when it ends.
pub struct Pending {
    sink: SpanExport,
    started: Instant,
    pub rec: SpanRecord,
}

impl Pending {
    pub fn new(sink: SpanExport, rec: SpanRecord) -> Self {
        Self {
            sink,
            started: Instant::now(),
            rec,
        }
    }

    /// Starts the span of a later attempt: a sibling of the previous one.
    pub fn next_attempt(&self, span_id: u64, attempt: u32) -> Box<Pending> {
        let mut rec = self.rec.clone();
        rec.span_id = span_id;
        rec.attempt = attempt;
        rec.start = SystemTime::now();
        rec.status = None;
        rec.error = None;
        Box::new(Pending {
            sink: self.sink.clone(),
            started: Instant::now(),
            rec,
        })
    }

    /// Ends the span now and queues it for export; never waits.
    pub fn finish(self: Box<Self>, status: Option<u16>, error: Option<ErrorType>) {
        self.finish_at(Instant::now(), status, error)
    }

    /// Ends the span at `end` (a failed attempt ends when its failure was seen, not after
    /// the backoff that follows).
    pub fn finish_at(
        mut self: Box<Self>,
        end: Instant,
        status: Option<u16>,
        error: Option<ErrorType>,
    ) {
        self.rec.duration = end.saturating_duration_since(self.started);
        self.rec.status = status.or(self.rec.status);
        self.rec.error = error.or(self.rec.error).or_else(|| {
            // OpenTelemetry HTTP conventions: a server span fails on 5xx; a client span also
            // on 4xx, since the caller did not get what it asked for.
            let failed = match self.rec.direction {
                Direction::Inbound => 500,
                Direction::Outbound => 400,
            };
            status.filter(|&s| s >= failed).map(ErrorType::Status)
        });
        let sink = self.sink.clone();
        sink.send(self);
    }

    pub fn into_record(self: Box<Self>) -> SpanRecord {
        self.rec
    }
}

/// Who this sidecar is, for the spans' resource.
pub struct ResourceInfo {
    pub service: String,
    pub version: Option<String>,
    pub instance: String,
}

enum Msg {
    Span(Box<Pending>),
    Flush(oneshot::Sender<()>),
}

/// The request path's handle on the pipeline: cheap to clone, never blocks.
#[derive(Clone)]
pub struct SpanExport {
    tx: mpsc::Sender<Msg>,
    dropped: IntCounter,
}

impl SpanExport {
    /// The OTLP/gRPC pipeline to `endpoint`. Needs a Tokio runtime.
    pub fn otlp(
        endpoint: &str,
        resource: ResourceInfo,
        queue: usize,
        counters: SpanCounters,
    ) -> Result<Self, ExportError> {
        use opentelemetry_otlp::WithExportConfig;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| ExportError::Build {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let mut attrs = vec![
            KeyValue::new("service.name", resource.service),
            KeyValue::new("service.instance.id", resource.instance),
            KeyValue::new("telemetry.sdk.name", "outrigger-proxy"),
        ];
        if let Some(v) = resource.version {
            attrs.push(KeyValue::new("service.version", v));
        }
        exporter.set_resource(&Resource::builder_empty().with_attributes(attrs).build());
        Ok(Self::spawn(exporter, queue, counters))
    }

    /// The pipeline in front of any exporter.
    pub fn spawn<E: SpanExporter + 'static>(
        exporter: E,
        queue: usize,
        counters: SpanCounters,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let dropped = counters.dropped_queue_full.clone();
        tokio::spawn(run(rx, exporter, counters));
        Self { tx, dropped }
    }

    pub fn send(&self, span: Box<Pending>) {
        if self.tx.try_send(Msg::Span(span)).is_err() {
            self.dropped.inc();
        }
    }

    /// Exports what is queued, waiting at most `within` (used when shutting down).
    pub async fn flush(&self, within: Duration) {
        let (done, wait) = oneshot::channel();
        let _ = tokio::time::timeout(within, async {
            if self.tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
    }
}

async fn run<E: SpanExporter>(mut rx: mpsc::Receiver<Msg>, exporter: E, counters: SpanCounters) {
    let scope = InstrumentationScope::builder("outrigger-proxy")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(BATCH);
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut flush = take(first, &mut batch);
        let deadline = Instant::now() + INTERVAL;
        while batch.len() < BATCH && flush.is_none() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => flush = take(m, &mut batch),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let data = batch.drain(..).map(|r| to_span_data(r, &scope)).collect();
            match export(&exporter, data).await {
                Ok(()) => {
                    counters.exported.inc_by(n);
                    if failing {
                        tracing::info!("span export recovered");
                        failing = false;
                    }
                }
                Err(reason) => {
                    counters.dropped_export_failed.inc_by(n);
                    if !failing {
                        // Once per outage, not once per batch.
                        tracing::warn!(spans = n, %reason, "span export failed; dropping spans until the collector answers");
                        failing = true;
                    }
                }
            }
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

fn take(m: Msg, batch: &mut Vec<SpanRecord>) -> Option<oneshot::Sender<()>> {
    match m {
        Msg::Span(s) => {
            batch.push(s.into_record());
            None
        }
        Msg::Flush(done) => Some(done),
    }
}

async fn export<E: SpanExporter>(
    exporter: &E,
    data: Vec<opentelemetry_sdk::trace::SpanData>,
) -> Result<(), String> {
    let r: Result<OTelSdkResult, _> =
        tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(data)).await;
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Direction;
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::SpanData;
    use std::sync::{Arc, Mutex};

    /// Stands in for a collector that is slow or refuses: faults a real one will not make on
    /// cue. The integration tests use a real OTLP receiver.
    #[derive(Debug, Clone, Default)]
    struct Collector {
        got: Arc<Mutex<Vec<usize>>>,
        delay: Duration,
        fail: bool,
    }

    impl SpanExporter for Collector {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(OTelSdkError::InternalFailure("refused".into()));
            }
            self.got.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    fn counters() -> SpanCounters {
        let c = |n: &str| IntCounter::new(n, n).unwrap();
        SpanCounters {
            exported: c("exported"),
            dropped_queue_full: c("queue_full"),
            dropped_export_failed: c("export_failed"),
        }
    }

    fn span(sink: &SpanExport) -> Box<Pending> {
        Box::new(Pending::new(
            sink.clone(),
            SpanRecord {
                trace_id: 1,
                span_id: 2,
                parent: None,
                direction: Direction::Outbound,
                start: std::time::SystemTime::UNIX_EPOCH,
                duration: Duration::ZERO,
                method: http::Method::GET,
                route: None,
                peer_service: None,
                path: None,
                host: None,
                protocol: http::Version::HTTP_11,
                attempt: 1,
                endpoint: None,
                endpoint_version: None,
                client: "127.0.0.1:1".parse().unwrap(),
                status: Some(200),
                error: None,
            },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_size_and_by_time() {
        let c = Collector::default();
        let k = counters();
        let sink = SpanExport::spawn(c.clone(), 4096, k.clone());
        for _ in 0..BATCH + 3 {
            span(&sink).finish(Some(200), None);
        }
        sink.flush(Duration::from_secs(5)).await;
        assert_eq!(*c.got.lock().unwrap(), vec![BATCH, 3]);
        assert_eq!(k.exported.get(), BATCH as u64 + 3);
        // A lone span goes out after the interval, without a flush.
        span(&sink).finish(Some(200), None);
        tokio::time::sleep(INTERVAL + Duration::from_millis(10)).await;
        assert_eq!(c.got.lock().unwrap().last(), Some(&1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_collector_costs_counted_drops_not_waiting() {
        let c = Collector {
            delay: Duration::from_secs(3600),
            ..Collector::default()
        };
        let k = counters();
        let sink = SpanExport::spawn(c.clone(), 100, k.clone());
        // The first batch goes to the stuck collector; the queue fills behind it.
        span(&sink).finish(None, None);
        tokio::time::sleep(INTERVAL * 2).await;
        for _ in 0..1000 {
            span(&sink).finish(None, None);
        }
        assert_eq!(k.dropped_queue_full.get(), 900);
        // The stuck export times out and its spans count as failed.
        tokio::time::sleep(EXPORT_TIMEOUT).await;
        assert_eq!(k.dropped_export_failed.get(), 1);
        assert_eq!(k.exported.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_collector_counts_failed_batches() {
        let c = Collector {
            fail: true,
            ..Collector::default()
        };
        let k = counters();
        let sink = SpanExport::spawn(c, 4096, k.clone());
        for _ in 0..10 {
            span(&sink).finish(None, None);
        }
        sink.flush(Duration::from_secs(5)).await;
        assert_eq!(k.dropped_export_failed.get(), 10);
        assert_eq!(k.exported.get(), 0);
    }
}
