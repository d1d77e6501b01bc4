//! `outrigger-control`: the control plane. It stores mesh resources ([`store`]), keeps the
//! service registry ([`registry`]), is the mesh CA ([`ca`]), compiles one snapshot per sidecar
//! ([`snapshot`]) and pushes it on NDJSON streams ([`push`]), all behind a REST API ([`api`]).
//! One task changes the state in order ([`state`]); everything else reads its published views.
//! The API is served over HTTPS with a certificate from its own CA ([`tls`]); every caller is
//! an operator token's role or a workload certificate's service ([`access`]), and a new root
//! signs only once every sidecar trusts it ([`rollout`]).
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod apply;
pub mod auth;
pub mod ca;
pub mod canary;
pub mod clock;
pub mod metrics;
pub mod podnet;
pub mod push;
pub mod registry;
pub mod resources;
pub mod rollout;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod tls;
