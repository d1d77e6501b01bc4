//! Integration tests of the `shop` binary: each service started as a real process on an
//! ephemeral loopback port and driven over HTTP. One test binary (these modules) keeps
//! linking cheap.

#![forbid(unsafe_code)]

mod harness;

mod catalog;
mod inventory;
mod order;
mod payment;
mod platform;
mod user;
