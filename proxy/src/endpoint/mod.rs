//! Per-endpoint state that outlives snapshots: latency estimate, outstanding requests and
//! outlier-detection state. Keyed by destination and address, so a config push that keeps an
//! endpoint keeps what was learned about it.

pub mod ewma;
pub mod outlier;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

pub struct EndpointState {
    pub addr: SocketAddr,
    pub ewma: ewma::PeakEwma,
    pub outlier: outlier::Outlier,
    /// The endpoint's HTTP/2 connection, when its destination speaks HTTP/2.
    pub h2: crate::client::h2::H2Slot,
    pending: AtomicUsize,
}

impl EndpointState {
    pub fn new(addr: SocketAddr, default_rtt: std::time::Duration) -> Self {
        Self {
            addr,
            ewma: ewma::PeakEwma::new(default_rtt),
            outlier: outlier::Outlier::default(),
            h2: Default::default(),
            pending: AtomicUsize::new(0),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Counts a request as outstanding until the guard drops.
    pub fn start(self: &Arc<Self>) -> PendingGuard {
        self.pending.fetch_add(1, Ordering::Relaxed);
        PendingGuard(self.clone())
    }
}

pub struct PendingGuard(Arc<EndpointState>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoint states by (destination, address). Holds them weakly: an endpoint that no snapshot
/// uses any more is forgotten, so endpoint churn does not grow memory.
#[derive(Default)]
pub struct EndpointRegistry {
    map: Mutex<HashMap<(String, SocketAddr), Weak<EndpointState>>>,
}

impl EndpointRegistry {
    /// Called when compiling a snapshot, never per request.
    pub fn get(
        &self,
        dest: &str,
        addr: SocketAddr,
        default_rtt: std::time::Duration,
    ) -> Arc<EndpointState> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (dest.to_string(), addr);
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(EndpointState::new(addr, default_rtt));
        map.insert(key, Arc::downgrade(&s));
        s
    }

    /// Drops entries no compiled snapshot refers to.
    pub fn prune(&self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, w| w.strong_count() > 0);
    }
}
