//! Mutual TLS between sidecars: the workload identity and its renewal ([`identity`]), SPIFFE
//! peer verification ([`verify`]), and the rustls configurations both directions use
//! ([`config`]). TLS 1.3 only; sidecars speak HTTP/2 to each other (ALPN h2). The same
//! identity is the sidecar's credential on the control channel (`control_plane::api`).

pub mod config;
pub mod identity;
pub mod verify;

use rustls::crypto::CryptoProvider;

/// ALPN of opaque TCP between sidecars: after the handshake the client sends the port the app
/// dialled (two bytes, big-endian), then the app's bytes.
pub const OPAQUE_ALPN: &[u8] = b"outrigger-tcp/1";
use std::sync::Arc;

/// ring: pure Rust + assembly, no C toolchain needed to build it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
