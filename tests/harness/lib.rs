//! Test harness: starts the real `outrigger-proxy` binary on ephemeral loopback ports, real
//! upstream servers (hyper, HTTP/1.1 and h2c) with scripted behaviours, and real clients.
//! Everything waits by polling with a deadline, never by sleeping a fixed time.

pub mod client;
pub mod control;
pub mod https;
pub mod load;
pub mod netns;
pub mod otlp;
pub mod pki;
pub mod prometheus;
pub mod proxy;
pub mod relay;
pub mod up;
pub mod up_pods;
pub mod up_procs;
pub mod upstream;

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// A free loopback port for a process under test to bind. Ports come from below the kernel's
/// ephemeral range (which starts at 32768), so no `bind(":0")` elsewhere in the tests can take
/// one in the moment between this check and the process binding it, and each is handed out
/// once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "ran out of test ports");
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
