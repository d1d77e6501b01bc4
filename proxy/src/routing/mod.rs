//! Routing state compiled from a snapshot: authority → destination ([`table`]), request →
//! route ([`matcher`]), route → version ([`split`]), and the compiled snapshot itself
//! ([`compile`]).

pub mod compile;
pub mod matcher;
pub mod split;
pub mod table;

pub use compile::{Compiled, Dest, EndpointTarget, RouteEntry, Tunnels};
