//! Integration and system tests of the workspace: real binaries on ephemeral loopback ports,
//! driven by the harness in `tests/harness/` (the `outrigger-tests` library). One test binary
//! with one module per area keeps linking cheap on small machines; its tests run in parallel
//! threads like any test binary's, so none may assume it runs alone.
//!
//! The system tests share one `outrigger up` mesh (`system`): `up` itself, Prometheus with the
//! dashboards, the mesh trace and `top`, one step after the other.
//!
//! Two tests are the heavy stage, ignored by a plain `cargo test` and run by `.ci/run` after
//! it with `cargo test --workspace --test integration -- --ignored`: 1 GiB each way through
//! the proxy (`protocols`) and the loopback capture with tcpdump (`mtls`).

mod abuse;
mod admin;
mod canary;
mod cli_help;
mod config_reload;
mod containers;
mod control_channel;
mod control_plane;
mod dns;
mod errors;
mod faults;
mod framing;
mod health_port;
mod inject;
mod intercept;
mod large_apply;
mod logs;
mod module_cycles;
mod mtls;
mod pod_inbound;
mod pod_init;
mod pods;
mod pooling;
mod protocols;
mod quantiles;
mod reconnect_storm;
mod resilience_endpoints;
mod resilience_retries;
mod rollout;
mod shop_data;
mod shutdown;
mod strict;
mod system;
mod telemetry;
mod top;
mod tracing;
mod trust_day2;
mod up_children;
mod up_pods;
mod validate;
