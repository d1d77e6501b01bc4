//! JSON log lines on stdout, in the one format every shop service shares:
//!
//! ```json
//! {"timestamp":"2025-01-02T03:04:05.678Z","service":"catalog","level":"info","message":"…","correlationId":"abc"}
//! ```
//!
//! Exactly these five fields, so log pipelines (and the tests) can rely on the shape. Request
//! details (method, path, status, duration) go into `message` rather than extra fields for
//! the same reason. A tiny writer of our own is enough for five fields and keeps the format
//! from drifting with a logging framework's defaults.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Severity of a line: requests answered 2xx/3xx are `info`, 4xx `warn`, 5xx `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    /// The level a request line gets from its response status.
    pub fn for_status(status: u16) -> Level {
        match status {
            500.. => Level::Error,
            400..=499 => Level::Warn,
            _ => Level::Info,
        }
    }
}

/// Writes log lines for one service. Copy, so handlers and middleware can hold their own.
#[derive(Debug, Clone, Copy)]
pub struct Logger {
    service: &'static str,
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    service: &'a str,
    level: Level,
    message: &'a str,
    #[serde(rename = "correlationId")]
    correlation_id: Option<&'a str>,
}

impl Logger {
    pub fn new(service: &'static str) -> Logger {
        Logger { service }
    }

    pub fn info(&self, message: &str, correlation_id: Option<&str>) {
        self.log(Level::Info, message, correlation_id);
    }

    pub fn warn(&self, message: &str, correlation_id: Option<&str>) {
        self.log(Level::Warn, message, correlation_id);
    }

    pub fn error(&self, message: &str, correlation_id: Option<&str>) {
        self.log(Level::Error, message, correlation_id);
    }

    pub fn log(&self, level: Level, message: &str, correlation_id: Option<&str>) {
        let line = Line {
            timestamp: rfc3339_millis(SystemTime::now()),
            service: self.service,
            level,
            message,
            correlation_id,
        };
        let Ok(mut bytes) = serde_json::to_vec(&line) else {
            return;
        };
        bytes.push(b'\n');
        // One write_all per line under the stdout lock, so concurrent requests never interleave
        // inside a line. A closed stdout must not take the service down (println! would panic),
        // so write errors are dropped.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&bytes);
        let _ = out.flush();
    }
}

/// `2025-01-02T03:04:05.678Z`: RFC 3339, UTC, milliseconds. Wall-clock time is right here
/// (it is for people and log stores); durations are measured with `tokio::time::Instant`.
pub fn rfc3339_millis(now: SystemTime) -> String {
    // A clock before 1970 is a broken host; print the epoch rather than fail to log.
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`), so we need no date crate for one timestamp format.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> String {
        rfc3339_millis(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(1_735_689_600, 42), "2025-01-01T00:00:00.042Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
    }

    #[test]
    fn level_follows_status() {
        assert_eq!(Level::for_status(200), Level::Info);
        assert_eq!(Level::for_status(302), Level::Info);
        assert_eq!(Level::for_status(404), Level::Warn);
        assert_eq!(Level::for_status(503), Level::Error);
    }

    #[test]
    fn line_has_exactly_the_five_fields() {
        let line = Line {
            timestamp: at(0, 0),
            service: "user",
            level: Level::Warn,
            message: "m",
            correlation_id: None,
        };
        let value = serde_json::to_value(&line).unwrap_or_default();
        let mut keys: Vec<&str> = value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["correlationId", "level", "message", "service", "timestamp"]
        );
        assert_eq!(value["correlationId"], serde_json::Value::Null);
        assert_eq!(value["level"], "warn");
    }
}
