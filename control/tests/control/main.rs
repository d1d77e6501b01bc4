//! Integration tests of the control plane: real processes, real HTTP, real CLI. One test
//! binary keeps linking cheap on small machines.

mod api;
mod ca;
mod cli;
mod durability;
mod harness;
mod identity;
mod pki;
mod push;
mod workload;
