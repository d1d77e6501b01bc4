//! Retries: the budget that keeps them from multiplying load on a failing destination, the
//! backoff between attempts, the request body that can be sent more than once, and the
//! policy that says which failures are worth another attempt.

pub mod backoff;
pub mod budget;
pub mod policy;
pub mod replay;
