//! The proxy's own logs: JSON lines on stderr, one per event, with the event's fields as
//! top-level keys (so a line about a request carries `request_id` next to `message`, joinable
//! with the access log). Lines go through a bounded, lossy queue to a background writer thread:
//! a slow or blocked stderr drops lines — counted as `outrigger_log_lines_dropped_total` — and
//! never stalls a request. The filter sits behind a reload layer so the admin port can change
//! it at runtime.

use prometheus::core::{Collector, Desc};
use prometheus::{proto::MetricFamily, IntCounter};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Lines waiting for stderr. A healthy stderr drains far faster than the proxy logs, so this
/// only fills when stderr is stuck; it bounds memory to a few MiB of pending lines.
const QUEUE_LINES: usize = 4096;

/// How long exit waits for queued lines to reach stderr before giving up on a stuck one.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("the log filter is empty")]
    Empty,
    // tracing reads a bare word as a target at TRACE level: a typo like `warning` would
    // silence every other log line without an error, so an explicit `=LEVEL` is required.
    #[error("`{0}` is not a level (off, error, warn, info, debug, trace); for a target write `{0}=LEVEL`")]
    BareTarget(String),
    #[error("invalid log filter `{filter}`: {reason}")]
    Invalid { filter: String, reason: String },
    #[error("logging is not initialised")]
    NotInitialised,
    #[error("logging is already initialised")]
    AlreadyInitialised,
    #[error("the log filter could not be swapped: {0}")]
    Reload(String),
}

struct State {
    filter: reload::Handle<EnvFilter, Registry>,
    dropped: ErrorCounter,
}

// The subscriber is process-wide, so its reload handle is too.
static STATE: OnceLock<State> = OnceLock::new();

/// Keeps the writer thread alive; dropping it (at the end of `main`) flushes queued lines.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(Option<WorkerGuard>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        let Some(guard) = self.0.take() else {
            return;
        };
        // The appender's own drop waits for the writer and, if its queue is full, prints to
        // stdout: on a stuck pipe either blocks forever. Exit waits a bounded time instead.
        let (done_tx, done) = std::sync::mpsc::channel();
        let flush = std::thread::Builder::new()
            .name("outrigger-log-flush".into())
            .spawn(move || {
                drop(guard);
                let _ = done_tx.send(());
            });
        if flush.is_ok() {
            let _ = done.recv_timeout(FLUSH_AT_EXIT);
        }
    }
}

/// Installs the process-wide subscriber with `filter` (the `--log` flag) as the initial filter.
pub fn init(filter: &str) -> Result<LogGuard, LoggingError> {
    let filter = parse_filter(filter)?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("outrigger-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let (filter_layer, handle) = reload::Layer::new(filter);
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(writer);
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(json)
        .try_init()
        .map_err(|_| LoggingError::AlreadyInitialised)?;
    STATE
        .set(State {
            filter: handle,
            dropped,
        })
        .map_err(|_| LoggingError::AlreadyInitialised)?;
    Ok(LogGuard(Some(guard)))
}

/// Checks a filter before it is applied; the same rules for `--log` and the admin port.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Err(LoggingError::Empty);
    }
    // Directives split on commas as EnvFilter splits them; it then judges the rest.
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains(['=', '[']) && directive.parse::<LevelFilter>().is_err() {
            return Err(LoggingError::BareTarget(directive.to_string()));
        }
    }
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| LoggingError::Invalid {
            filter: filter.to_string(),
            reason: e.to_string(),
        })
}

/// The filter in force, as EnvFilter prints it (e.g. `outrigger_proxy=debug,info`).
pub fn current_filter() -> Result<String, LoggingError> {
    let state = STATE.get().ok_or(LoggingError::NotInitialised)?;
    state
        .filter
        .with_current(|f| f.to_string())
        .map_err(|e| LoggingError::Reload(e.to_string()))
}

/// Replaces the filter; an invalid one leaves the current filter in force. Returns the new one.
pub fn set_filter(filter: &str) -> Result<String, LoggingError> {
    let state = STATE.get().ok_or(LoggingError::NotInitialised)?;
    let parsed = parse_filter(filter)?;
    let previous = current_filter()?;
    state
        .filter
        .reload(parsed)
        .map_err(|e| LoggingError::Reload(e.to_string()))?;
    let now = current_filter()?;
    tracing::info!(previous = %previous, filter = %now, "log filter changed on the admin port");
    Ok(now)
}

/// Lines the writer dropped because stderr fell behind (0 before `init`).
pub fn dropped_lines() -> u64 {
    STATE.get().map_or(0, |s| s.dropped.dropped_lines() as u64)
}

/// `outrigger_log_lines_dropped_total`: the appender counts drops in its own atomic, so the
/// Prometheus counter catches up with it at each scrape.
pub struct DroppedLinesCollector {
    counter: IntCounter,
    source: fn() -> u64,
    // Two concurrent scrapes must not both add the same difference.
    sync: Mutex<()>,
}

impl DroppedLinesCollector {
    pub fn new() -> prometheus::Result<Self> {
        Self::with_source(dropped_lines)
    }

    fn with_source(source: fn() -> u64) -> prometheus::Result<Self> {
        Ok(Self {
            counter: IntCounter::new(
                "outrigger_log_lines_dropped_total",
                "The proxy's own log lines dropped because stderr fell behind.",
            )?,
            source,
            sync: Mutex::new(()),
        })
    }
}

impl Collector for DroppedLinesCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _sync = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        let seen = self.counter.get();
        let now = (self.source)();
        if now > seen {
            self.counter.inc_by(now - seen);
        }
        self.counter.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn levels_and_target_directives_are_accepted() {
        for ok in [
            "info",
            " DEBUG ",
            "off",
            "outrigger_proxy=debug,info",
            "outrigger_proxy::forward=trace,h2=warn,info",
            "outrigger_proxy[upstream{attempt=2}]=debug",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn typos_and_garbage_are_refused_with_a_reason() {
        assert!(matches!(parse_filter("  "), Err(LoggingError::Empty)));
        let e = parse_filter("warning").expect_err("a bare non-level word");
        assert!(matches!(e, LoggingError::BareTarget(_)), "{e:?}");
        assert!(e.to_string().contains("`warning=LEVEL`"), "{e}");
        assert!(matches!(
            parse_filter("info,verbose"),
            Err(LoggingError::BareTarget(t)) if t == "verbose"
        ));
        assert!(matches!(
            parse_filter("outrigger_proxy=loud"),
            Err(LoggingError::Invalid { .. })
        ));
    }

    #[test]
    fn the_filter_prints_back_as_given() {
        let f = parse_filter("outrigger_proxy=debug,info").expect("valid");
        assert_eq!(f.to_string(), "outrigger_proxy=debug,info");
    }

    #[test]
    fn the_counter_follows_the_appender_without_counting_twice() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let c =
            DroppedLinesCollector::with_source(|| DROPPED.load(Ordering::Relaxed)).expect("metric");
        let value = |c: &DroppedLinesCollector| {
            let families = c.collect();
            assert_eq!(families[0].name(), "outrigger_log_lines_dropped_total");
            families[0].get_metric()[0].get_counter().get_value()
        };
        assert_eq!(value(&c), 0.0);
        DROPPED.store(7, Ordering::Relaxed);
        assert_eq!(value(&c), 7.0);
        assert_eq!(value(&c), 7.0, "a second scrape adds nothing");
        DROPPED.store(9, Ordering::Relaxed);
        assert_eq!(value(&c), 9.0);
    }
}
