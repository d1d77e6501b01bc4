//! Test harness: starts the real `outrigger-proxy` binary on ephemeral loopback ports, real
//! upstream servers (hyper, HTTP/1.1 and h2c) with scripted behaviours, and real clients.
//! Everything waits by polling with a deadline, never by sleeping a fixed time.

pub mod client;
pub mod proxy;
pub mod upstream;

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// A free loopback port. The tiny window between closing it and the proxy binding it is
/// acceptable on a test machine; binaries that take port 0 avoid it entirely.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path of a binary of this workspace, built by `cargo build` before the tests run.
pub fn bin(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = std::env::var("OUTRIGGER_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = target.join(profile).join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (the README's test command does)",
        p.display()
    );
    p
}
