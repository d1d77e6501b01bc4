//! Resilience settings: retries and their budget, outlier detection, load balancing,
//! concurrency limits, fault injection and local rate limits. Every default is explicit and
//! safe to meet without reading docs: retries only where nothing reached the app, limits
//! high enough that healthy traffic never meets them.

use crate::duration::Family;
use crate::path::FieldPath;
use crate::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When a failed attempt may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The TCP connection could not be made: nothing was sent, always safe.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM: the server did not process the request, always safe.
    RefusedStream,
    /// The connection was reset or closed before a response (the request may have run).
    Reset,
    /// 502, 503, 504 and per-try timeouts.
    GatewayError,
    /// Any 5xx and per-try timeouts.
    #[serde(rename = "5xx")]
    ServerError,
}

/// gRPC status codes by their canonical names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrpcStatus {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 turns retries off.
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    /// Response statuses that are retried as well (e.g. 409).
    pub status_codes: Vec<u16>,
    /// gRPC statuses (from response headers or trailers) that are retried.
    pub grpc_statuses: Vec<GrpcStatus>,
    pub backoff: Backoff,
    /// Retry methods that are not idempotent (POST, PATCH) too. Only for routes whose app
    /// deduplicates, e.g. by an `Idempotency-Key`. Connect failures are retried regardless.
    pub non_idempotent: bool,
    /// Request bodies up to this size are kept for replay; larger ones are sent once.
    pub buffer_bytes: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::RefusedStream],
            status_codes: Vec::new(),
            grpc_statuses: Vec::new(),
            backoff: Backoff::default(),
            non_idempotent: false,
            buffer_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    #[serde(with = "crate::duration")]
    pub base: Duration,
    #[serde(with = "crate::duration")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// Retries allowed per destination: `ratio` of requests plus `min_per_second`, over `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
    #[serde(with = "crate::duration")]
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency × outstanding requests.
    #[default]
    P2cEwma,
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ewma {
    /// Assumed latency of an endpoint with no samples yet.
    #[serde(with = "crate::duration")]
    pub default_rtt: Duration,
    /// How fast old latency samples lose weight.
    #[serde(with = "crate::duration")]
    pub decay: Duration,
}

impl Default for Ewma {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Consecutive gateway failures (connect failure, reset, 502/503/504) that eject an
    /// endpoint; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// An endpoint stays out for `base_ejection` × its number of ejections, at most
    /// `max_ejection`, then one probe request decides whether it is back.
    #[serde(with = "crate::duration")]
    pub base_ejection: Duration,
    #[serde(with = "crate::duration")]
    pub max_ejection: Duration,
    /// Never more than this share of endpoints out at once; at least one always stays.
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Overload protection per destination. Past a limit a request fails at once with 503
/// `overloaded`; nothing queues without bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: u32,
    /// Requests waiting for an in-flight slot once `max_requests` are in flight.
    pub max_pending_requests: u32,
    pub max_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_pending_requests: 1_000,
            max_requests: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub percent: f64,
    #[serde(with = "crate::duration")]
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub percent: f64,
    pub status: u16,
}

/// A token bucket: `requests_per_second` refill, up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

fn percent(v: &mut Validator, p: f64, at: FieldPath) {
    v.ensure(
        (0.0..=100.0).contains(&p),
        || at,
        "must be between 0 and 100",
    );
}

impl Validate for RetryPolicy {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.ensure(
            (1..=10).contains(&self.attempts),
            || at.key("attempts"),
            "must be between 1 and 10",
        );
        for (i, s) in self.status_codes.iter().enumerate() {
            v.ensure(
                (100..=599).contains(s),
                || at.key("status_codes").index(i),
                "must be an HTTP status code",
            );
        }
        self.backoff.validate(&at.key("backoff"), v);
        v.ensure(
            self.buffer_bytes <= 16 * 1024 * 1024,
            || at.key("buffer_bytes"),
            "must be at most 16 MiB",
        );
    }
}

impl Validate for Backoff {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.positive_duration(self.base, Family::Delay, || at.key("base"));
        v.ensure(
            self.max >= self.base,
            || at.key("max"),
            "must be at least `base`",
        );
        v.duration(self.max, Family::Delay, || at.key("max"));
    }
}

impl Validate for RetryBudget {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.ensure(
            (0.0..=1.0).contains(&self.ratio),
            || at.key("ratio"),
            "must be between 0 and 1",
        );
        v.ensure(
            self.window >= Duration::from_secs(1),
            || at.key("window"),
            "must be at least 1s",
        );
        v.duration(self.window, Family::Window, || at.key("window"));
    }
}

impl Validate for Ewma {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.positive_duration(self.default_rtt, Family::Delay, || at.key("default_rtt"));
        v.positive_duration(self.decay, Family::Window, || at.key("decay"));
    }
}

impl Validate for OutlierDetection {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.positive_duration(self.base_ejection, Family::Window, || {
            at.key("base_ejection")
        });
        v.ensure(
            self.max_ejection >= self.base_ejection,
            || at.key("max_ejection"),
            "must be at least `base_ejection`",
        );
        v.duration(self.max_ejection, Family::Window, || at.key("max_ejection"));
        v.ensure(
            self.max_ejected_percent <= 100,
            || at.key("max_ejected_percent"),
            "must be between 0 and 100",
        );
    }
}

impl Validate for Limits {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        for (k, n) in [
            ("max_connections", self.max_connections),
            ("max_requests", self.max_requests),
        ] {
            v.ensure(n > 0, || at.key(k), "must be greater than zero");
        }
    }
}

impl Validate for Fault {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        if let Some(d) = &self.delay {
            percent(v, d.percent, at.key("delay").key("percent"));
            v.duration(d.duration, Family::Delay, || {
                at.key("delay").key("duration")
            });
        }
        if let Some(a) = &self.abort {
            percent(v, a.percent, at.key("abort").key("percent"));
            v.ensure(
                (200..=599).contains(&a.status),
                || at.key("abort").key("status"),
                "must be an HTTP status code from 200 to 599",
            );
        }
    }
}

impl Validate for RateLimit {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.ensure(
            self.requests_per_second > 0.0 && self.requests_per_second.is_finite(),
            || at.key("requests_per_second"),
            "must be greater than zero",
        );
        v.ensure(self.burst >= 1, || at.key("burst"), "must be at least 1");
    }
}
