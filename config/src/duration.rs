//! Durations in config are human strings (`250ms`, `15s`, `1m`), never bare numbers, so a
//! reader never has to guess the unit.

pub use humantime_serde::option;
pub use humantime_serde::{deserialize, serialize};
