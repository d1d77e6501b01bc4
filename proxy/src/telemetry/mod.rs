//! What the proxy reports about each request: Prometheus metrics ([`metrics`]), exact
//! percentiles over a sliding window ([`stats`]) and the JSON access log ([`access_log`]).
//! A [`record::Record`] travels with the response body and reports once when it ends.

pub mod access_log;
pub mod metrics;
pub mod record;
pub mod stats;
