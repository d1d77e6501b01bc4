//! Retries: the layer that drives each attempt ([`layer`]), the budget that keeps them from
//! multiplying load on a failing destination, the backoff between attempts, the request body
//! that can be sent more than once ([`source`], [`replay`]), the policy that says which
//! failures are worth another attempt, and a response's verdict under it ([`verdict`]).

pub mod backoff;
pub mod budget;
pub mod layer;
pub mod policy;
pub mod replay;
pub mod source;
pub mod verdict;
