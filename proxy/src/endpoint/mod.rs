//! Per-endpoint state that outlives snapshots: latency estimate, outstanding requests,
//! outlier-detection state and the HTTP/1 and HTTP/2 connections. Keyed by destination and address, so a
//! config push that keeps an endpoint keeps what was learned about it (and its connection, as
//! long as the TLS setting stays the same). Endpoints given by DNS name ([`resolve`]) are one
//! endpoint per address, keyed the same way, so an address that a new answer still has keeps
//! its state too.

pub mod ewma;
pub mod outlier;
pub mod resolve;

use crate::client::h1::H1Pool;
use crate::client::h2::H2Slot;
use crate::tls::config::ClientTls;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

pub struct EndpointState {
    pub addr: SocketAddr,
    pub ewma: ewma::PeakEwma,
    pub outlier: outlier::Outlier,
    /// Idle HTTP/1.1 keep-alive connections (plaintext only, so one pool serves every
    /// snapshot).
    pub h1: H1Pool,
    /// The slot compiled snapshots share for HTTP/2, while they agree on its TLS setting.
    h2: Mutex<Weak<H2Slot>>,
    pending: AtomicUsize,
}

impl EndpointState {
    pub fn new(addr: SocketAddr, default_rtt: std::time::Duration) -> Self {
        Self {
            addr,
            ewma: ewma::PeakEwma::new(default_rtt),
            outlier: outlier::Outlier::default(),
            h1: H1Pool::default(),
            h2: Mutex::new(Weak::new()),
            pending: AtomicUsize::new(0),
        }
    }

    /// The HTTP/2 slot for requests under `tls`: the one in use if it was made under the same
    /// setting, else a new one, which leaves the old connection to the snapshots still using
    /// it. Called when compiling a snapshot, never per request.
    pub fn h2_slot(&self, tls: Option<&ClientTls>) -> Arc<H2Slot> {
        let mut current = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = current
            .upgrade()
            .filter(|s| s.made_for(tls.map(|t| &t.trust)))
        {
            return slot;
        }
        let slot = Arc::new(H2Slot::new(tls.cloned()));
        *current = Arc::downgrade(&slot);
        slot
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
/// uses any more is forgotten, so endpoint churn does not grow memory. Also the DNS names the
/// snapshot in force gives endpoints by, and what they resolve to.
#[derive(Default)]
pub struct EndpointRegistry {
    map: Mutex<HashMap<(String, SocketAddr), Weak<EndpointState>>>,
    names: resolve::Names,
}

impl EndpointRegistry {
    /// Names resolved with `lookup` instead of the system resolver (tests script it).
    pub fn with_lookup(lookup: Arc<dyn resolve::Lookup>) -> Self {
        Self {
            map: Mutex::default(),
            names: resolve::Names::new(lookup),
        }
    }

    pub fn names(&self) -> &resolve::Names {
        &self.names
    }

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
