//! Mutual TLS between sidecars: the workload identity and its renewal ([`identity`]), SPIFFE
//! peer verification ([`verify`]), and the rustls configurations both directions use
//! ([`config`]). TLS 1.3 only; sidecars speak HTTP/2 to each other (ALPN h2). The same
//! identity is the sidecar's credential on the control channel (`control_plane::api`).

pub mod config;
pub mod identity;
pub mod verify;

use rustls::crypto::CryptoProvider;
use std::sync::Arc;

/// ring: pure Rust + assembly, no C toolchain needed to build it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
