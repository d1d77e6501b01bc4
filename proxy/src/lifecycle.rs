//! Where the sidecar is in its life: starting (listeners not bound yet), serving, draining;
//! the request to shut down (`POST /shutdown`); and readiness, which also asks for a snapshot
//! in force (with the first answers for the DNS names it gives endpoints by) and, with mTLS, a
//! certificate that has not expired.

use crate::snapshot::CurrentSnapshot;
use crate::tls::identity::{CertStatus, Identity};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::Notify;

/// Starting, serving or draining, and whether shutdown was asked for.
pub struct Lifecycle {
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    /// Wakes the shutdown sequence from the admin port.
    shutdown: Notify,
    /// The workload identity, when this sidecar joins a mesh with mTLS: no certificate, not
    /// ready.
    identity: Option<Arc<Identity>>,
    /// Why the local app cannot be reached, while it cannot ([`crate::health::app_watch`]).
    /// Reported, not a reason to be unready: a native sidecar must be ready before its app
    /// starts.
    app_problem: arc_swap::ArcSwapOption<String>,
}

impl Lifecycle {
    pub fn new(identity: Option<Arc<Identity>>) -> Self {
        Self {
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutdown: Notify::new(),
            identity,
            app_problem: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Asks for shutdown (`POST /shutdown`); remembered if nobody is waiting yet.
    pub fn request_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Records whether the local app answers (`None`: it does).
    pub fn set_app_problem(&self, problem: Option<String>) {
        self.app_problem.store(problem.map(Arc::new));
    }

    /// Why the local app cannot be reached, if it cannot.
    pub fn app_problem(&self) -> Option<Arc<String>> {
        self.app_problem.load_full()
    }

    /// Resolves once shutdown is requested on the admin port.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await
    }

    /// Ready: not shutting down, a valid certificate held (with mTLS), a snapshot applied,
    /// listeners bound. Otherwise the first of these that fails, which `/ready` reports.
    pub fn readiness(&self, snapshot: &CurrentSnapshot) -> Result<(), NotReady> {
        self.readiness_at(snapshot, SystemTime::now())
    }

    fn readiness_at(&self, snapshot: &CurrentSnapshot, now: SystemTime) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        match self.identity.as_ref().map(|i| i.status(now)) {
            None | Some(CertStatus::Valid) => {}
            Some(CertStatus::Missing { error }) => return Err(NotReady::NoCertificate(error)),
            Some(CertStatus::Expired { at, error }) => {
                return Err(NotReady::CertificateExpired { at, error })
            }
        }
        if !snapshot.is_applied() {
            return Err(NotReady::NoSnapshot);
        }
        // A strict mesh and no identity to take part with: every inbound connection would be
        // refused, and every call to a peer fail its handshake.
        if self.identity.is_none() {
            // Permissive still serves plaintext callers; strict would serve no one.
            if let Some(mode) = snapshot
                .current()
                .map(|c| c.mtls)
                .filter(|m| *m == outrigger_config::MtlsMode::Strict)
            {
                return Err(NotReady::NoIdentity(mode));
            }
        }
        if !self.listeners_bound.load(Ordering::Acquire) {
            return Err(NotReady::ListenersNotBound);
        }
        // Only asked once a snapshot is applied, so its names are the ones waited for.
        if !snapshot.names().first_answers_in() {
            return Err(NotReady::ResolvingNames);
        }
        Ok(())
    }
}

/// Why the sidecar is not ready, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("draining")]
    Draining,
    #[error("no workload certificate yet{}", failing("; last attempt failed: ", .0))]
    NoCertificate(Option<String>),
    #[error(
        "workload certificate expired at {}{}",
        humantime::format_rfc3339_seconds(*.at),
        failing("; renewal failing: ", .error)
    )]
    CertificateExpired {
        at: SystemTime,
        error: Option<String>,
    },
    #[error("no snapshot applied yet")]
    NoSnapshot,
    #[error(
        "the mesh's mTLS is {} but this sidecar has no workload identity, so it refuses \
         every inbound connection and cannot call its peers: start it with \
         --bootstrap-token-file (or OUTRIGGER_BOOTSTRAP_TOKEN) from `outrigger token SERVICE`",
        mode_name(*.0)
    )]
    NoIdentity(outrigger_config::MtlsMode),
    #[error("listeners not bound yet")]
    ListenersNotBound,
    #[error("resolving the DNS names endpoints are given by (first answers)")]
    ResolvingNames,
}

fn mode_name(m: outrigger_config::MtlsMode) -> &'static str {
    match m {
        outrigger_config::MtlsMode::Strict => "strict",
        outrigger_config::MtlsMode::Permissive => "permissive",
        outrigger_config::MtlsMode::Off => "off",
    }
}

fn failing(lead: &str, error: &Option<String>) -> String {
    error
        .as_deref()
        .map(|e| format!("{lead}{e}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;
    use crate::telemetry::Telemetry;
    use crate::tls::identity::tests::issued;
    use outrigger_config::{ProxySettings, Snapshot};
    use std::time::Duration;

    /// A lifecycle, the snapshot it asks about, and the telemetry applying one needs.
    fn parts(identity: Option<Arc<Identity>>) -> (Lifecycle, CurrentSnapshot, Telemetry) {
        let telemetry = Telemetry::new(&ProxySettings::default(), None, Metrics::new());
        (
            Lifecycle::new(identity.clone()),
            CurrentSnapshot::new(identity),
            telemetry,
        )
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            version: 0,
            service: "web".into(),
            inbound: None,
            destinations: Vec::new(),
            mtls: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_missing_piece_is_named() {
        let (l, s, t) = parts(None);
        assert_eq!(l.readiness(&s), Err(NotReady::NoSnapshot));
        s.apply(snapshot(), "test", &t);
        assert_eq!(l.readiness(&s), Err(NotReady::ListenersNotBound));
        l.set_listeners_bound();
        assert_eq!(l.readiness(&s), Ok(()));
        l.start_draining();
        assert_eq!(l.readiness(&s), Err(NotReady::Draining));
        assert_eq!(NotReady::Draining.to_string(), "draining");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sidecar_with_mtls_needs_a_certificate_that_has_not_expired() {
        let id = Arc::new(Identity::default());
        let (l, s, t) = parts(Some(id.clone()));
        s.apply(snapshot(), "test", &t);
        l.set_listeners_bound();
        assert_eq!(l.readiness(&s), Err(NotReady::NoCertificate(None)));
        assert_eq!(
            NotReady::NoCertificate(Some("401 unknown token".into())).to_string(),
            "no workload certificate yet; last attempt failed: 401 unknown token"
        );

        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let end = start + Duration::from_secs(3600);
        id.publish(issued("spiffe://td/service/web", end));
        assert_eq!(l.readiness_at(&s, start), Ok(()));
        let expired = l.readiness_at(&s, end).expect_err("expired");
        assert_eq!(
            expired,
            NotReady::CertificateExpired {
                at: end,
                error: None
            }
        );
        let text = NotReady::CertificateExpired {
            at: end,
            error: Some("control plane request failed: connection refused".into()),
        }
        .to_string();
        assert_eq!(
            text,
            "workload certificate expired at 2026-09-21T15:13:20Z; renewal failing: control plane request failed: connection refused"
        );
    }
}
