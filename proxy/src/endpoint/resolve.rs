//! DNS names in the config in force: one task per distinct `NAME:PORT` resolves it off the
//! request path, again every [`REFRESH`], and keeps the last good answer. A failed or empty
//! answer changes nothing (the endpoints that were there stay), and a name that never resolved
//! has no addresses, so its destination answers 503 `no-endpoints` like any without endpoints.
//! When a name's set of addresses changes, the sidecar compiles the snapshot in force again
//! (see [`Names::on_change`]), so requests still find everything in one `ArcSwap` load.
//!
//! IP literals never come here: they need no resolver and cost nothing.
//!
//! A sidecar is not ready until the names of its first snapshot have had their first answer
//! (good or not), as Envoy warms DNS clusters before it serves: a quick start's first request
//! finds its upstream. Names added later never make a serving sidecar unready.
//!
//! The system resolver (`getaddrinfo`, via `tokio::net::lookup_host`, the same path
//! `/etc/hosts`, search domains and nsswitch take for the app) gives no TTL, hence the fixed
//! refresh. [`Lookup`] is the seam: tests script the answers.

use outrigger_config::snapshot::NamedAddress;
use prometheus::{IntCounter, IntCounterVec, Opts};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// How often a name is resolved again. Envoy's `STRICT_DNS` clusters refresh every 5 s
/// (`dns_refresh_rate`) and ignore TTLs unless `respect_dns_ttl` is set; Linkerd's proxy
/// follows TTLs, through a DNS client of its own (hickory) that reads resolv.conf but not
/// nsswitch. We use the system resolver, as the app does (/etc/hosts, nsswitch), which gives
/// no TTL, so Envoy's 5 s it is: an address change (a restarted container in Compose, a
/// headless Service's pods) is picked up within 5 s, and a cached answer costs next to nothing
/// at that rate. A failure is retried at the same pace: the last good addresses serve on.
pub const REFRESH: Duration = Duration::from_secs(5);

pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Resolves one name; the seam the tests script.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, name: &NamedAddress) -> LookupFuture;
}

/// The system resolver, on tokio's blocking pool (never on a worker thread).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, name: &NamedAddress) -> LookupFuture {
        let (host, port) = (name.host.clone(), name.port);
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

type OnChange = Box<dyn Fn() + Send + Sync>;

/// A name's last good addresses, sorted; `None` until the first good answer.
type Slot = Arc<Mutex<Option<Arc<[SocketAddr]>>>>;

/// The names in use, each with its task and last good addresses.
pub struct Names {
    lookup: Arc<dyn Lookup>,
    tracked: Mutex<HashMap<NamedAddress, Tracked>>,
    shared: Arc<Shared>,
    /// Latched once every name tracked had its first answer.
    settled: AtomicBool,
}

/// What the tasks share with their owner.
struct Shared {
    on_change: OnceLock<OnChange>,
    resolutions: IntCounterVec,
    changed: IntCounter,
    unchanged: IntCounter,
    failed: IntCounter,
}

struct Tracked {
    addresses: Slot,
    /// Set once the first lookup ended, good or not, and its answer is compiled in.
    answered: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A name that leaves the config (or a sidecar that ends) stops being resolved.
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Default for Names {
    fn default() -> Self {
        Self::new(Arc::new(SystemLookup))
    }
}

impl Names {
    pub fn new(lookup: Arc<dyn Lookup>) -> Self {
        let resolutions = IntCounterVec::new(
            Opts::new(
                "outrigger_dns_resolutions_total",
                "Resolutions of endpoint DNS names, by result: changed (a new set of addresses), unchanged, failed (an error or no address; the last good addresses stay).",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| panic!("invalid metric definition: {e}"));
        let shared = Shared {
            on_change: OnceLock::new(),
            changed: resolutions.with_label_values(&["changed"]),
            unchanged: resolutions.with_label_values(&["unchanged"]),
            failed: resolutions.with_label_values(&["failed"]),
            resolutions,
        };
        Self {
            lookup,
            tracked: Mutex::new(HashMap::new()),
            shared: Arc::new(shared),
            settled: AtomicBool::new(false),
        }
    }

    /// What to do when a name's addresses change: compile the snapshot in force again. Set
    /// once, by the sidecar that owns these names; called from the resolving task, never with
    /// a lock of this registry held.
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        if self.shared.on_change.set(Box::new(f)).is_err() {
            tracing::warn!("the DNS change hook was set twice; keeping the first");
        }
    }

    /// `outrigger_dns_resolutions_total`, for the sidecar's registry.
    pub fn metric(&self) -> IntCounterVec {
        self.shared.resolutions.clone()
    }

    /// Makes `names` the ones resolved: starts a task for each new one, stops those no longer
    /// named. Called when a snapshot is compiled, never per request.
    pub fn track(&self, names: HashSet<&NamedAddress>) {
        let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        tracked.retain(|n, _| names.contains(n));
        for name in names {
            if tracked.contains_key(name) {
                continue;
            }
            let addresses = Arc::new(Mutex::new(None));
            let answered = Arc::new(AtomicBool::new(false));
            let task = match tokio::runtime::Handle::try_current() {
                Ok(rt) => Some(rt.spawn(follow(
                    name.clone(),
                    self.lookup.clone(),
                    (addresses.clone(), answered.clone()),
                    self.shared.clone(),
                ))),
                Err(_) => {
                    tracing::warn!(name = %name, "no runtime to resolve on; the name gets no endpoints");
                    answered.store(true, Ordering::Release);
                    None
                }
            };
            tracked.insert(
                name.clone(),
                Tracked {
                    addresses,
                    answered,
                    task,
                },
            );
        }
    }

    /// Whether the names tracked first have all had their first answer (vacuously, none);
    /// once true, it stays true. Asked by readiness, after the first snapshot is applied.
    pub fn first_answers_in(&self) -> bool {
        if self.settled.load(Ordering::Acquire) {
            return true;
        }
        let tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        let all = tracked.values().all(|t| t.answered.load(Ordering::Acquire));
        if all {
            self.settled.store(true, Ordering::Release);
        }
        all
    }

    /// The last good addresses of a tracked name, sorted; `None` if it never resolved.
    pub fn addresses(&self, name: &NamedAddress) -> Option<Arc<[SocketAddr]>> {
        let tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        let t = tracked.get(name)?;
        let a = t.addresses.lock().unwrap_or_else(PoisonError::into_inner);
        a.clone()
    }
}

/// Resolves `name` now and every [`REFRESH`] until aborted. Failures are logged when they
/// start or their reason changes, not every 5 s.
async fn follow(
    name: NamedAddress,
    lookup: Arc<dyn Lookup>,
    (addresses, answered): (Slot, Arc<AtomicBool>),
    shared: Arc<Shared>,
) {
    let mut failing: Option<String> = None;
    loop {
        let answer = match lookup.lookup(&name).await {
            Ok(a) if a.is_empty() => Err("no address".to_string()),
            Ok(a) => Ok(a),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(mut found) => {
                found.sort_unstable();
                found.dedup();
                if failing.take().is_some() {
                    tracing::info!(name = %name, "the name resolves again");
                }
                let changed = {
                    let mut current = addresses.lock().unwrap_or_else(PoisonError::into_inner);
                    let changed = current.as_deref() != Some(found.as_slice());
                    if changed {
                        *current = Some(found.as_slice().into());
                    }
                    changed
                };
                if changed {
                    shared.changed.inc();
                    tracing::info!(name = %name, addresses = ?found, "endpoint name resolved to a new set of addresses");
                    if let Some(f) = shared.on_change.get() {
                        f();
                    }
                } else {
                    shared.unchanged.inc();
                }
            }
            Err(reason) => {
                shared.failed.inc();
                if failing.as_deref() != Some(reason.as_str()) {
                    let kept = addresses
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_ref()
                        .map_or(0, |a| a.len());
                    tracing::warn!(name = %name, error = %reason, kept, "resolving an endpoint name failed; keeping the last good addresses");
                    failing = Some(reason);
                }
            }
        }
        // After the recompile above, so a sidecar that turns ready routes by this answer.
        answered.store(true, Ordering::Release);
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    type Answer = Result<Vec<SocketAddr>, String>;

    /// Answers scripted per name, one per lookup; the last one repeats. Records when each
    /// lookup happened.
    #[derive(Default)]
    pub(crate) struct Script {
        answers: Mutex<HashMap<String, VecDeque<Answer>>>,
        log: Mutex<Vec<(String, Instant)>>,
    }

    impl Script {
        pub(crate) fn answer(&self, host: &str, answer: Result<Vec<SocketAddr>, String>) {
            let mut a = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            a.entry(host.to_string()).or_default().push_back(answer);
        }

        pub(crate) fn calls(&self, host: &str) -> Vec<Instant> {
            let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            log.iter()
                .filter(|(h, _)| h == host)
                .map(|(_, at)| *at)
                .collect()
        }
    }

    impl Lookup for Script {
        fn lookup(&self, name: &NamedAddress) -> LookupFuture {
            self.log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((name.host.clone(), Instant::now()));
            let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            let queue = answers.entry(name.host.clone()).or_default();
            let next = if queue.len() > 1 {
                queue.pop_front()
            } else {
                queue.front().cloned()
            };
            let out = match next {
                Some(Ok(a)) => Ok(a),
                Some(Err(e)) => Err(io::Error::other(e)),
                None => Err(io::Error::other("no such host")),
            };
            Box::pin(async move { out })
        }
    }

    pub(crate) fn name(host: &str, port: u16) -> NamedAddress {
        NamedAddress {
            host: host.into(),
            port,
        }
    }

    pub(crate) fn ip(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// Lets the resolving tasks run (paused time moves on by itself while all are asleep)
    /// until `host` has been looked up `n` times.
    pub(crate) async fn lookups(script: &Script, host: &str, n: usize) {
        while script.calls(host).len() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn counted(names: &Names) -> Arc<AtomicUsize> {
        let changes = Arc::new(AtomicUsize::new(0));
        let c = changes.clone();
        names.on_change(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        changes
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_appear_change_and_survive_failures() {
        let script = Arc::new(Script::default());
        let (a, b) = (ip("10.0.0.1:80"), ip("10.0.0.2:80"));
        for answer in [
            Ok(vec![a]),
            Ok(vec![a]),
            Ok(vec![b, a, b]),
            Err("temporary failure in name resolution".to_string()),
            Ok(vec![]),
            Ok(vec![b]),
        ] {
            script.answer("pay.svc", answer);
        }
        let names = Names::new(script.clone());
        let changes = counted(&names);
        let n = name("pay.svc", 80);
        let start = Instant::now();
        names.track(HashSet::from([&n]));
        let got = |names: &Names| names.addresses(&n).map(|a| a.to_vec());
        let metric = |names: &Names, r: &str| names.metric().with_label_values(&[r]).get();

        lookups(&script, "pay.svc", 1).await;
        assert_eq!(got(&names), Some(vec![a]), "resolved at once");
        assert_eq!(changes.load(Ordering::SeqCst), 1);

        lookups(&script, "pay.svc", 2).await;
        assert_eq!(got(&names), Some(vec![a]));
        assert_eq!(
            changes.load(Ordering::SeqCst),
            1,
            "the same answer is no change"
        );
        assert_eq!(metric(&names, "unchanged"), 1);

        lookups(&script, "pay.svc", 3).await;
        assert_eq!(got(&names), Some(vec![a, b]), "sorted, each address once");
        assert_eq!(changes.load(Ordering::SeqCst), 2);

        lookups(&script, "pay.svc", 5).await;
        assert_eq!(
            got(&names),
            Some(vec![a, b]),
            "an error and an empty answer keep the last good addresses"
        );
        assert_eq!(changes.load(Ordering::SeqCst), 2);
        assert_eq!(metric(&names, "failed"), 2);

        lookups(&script, "pay.svc", 6).await;
        assert_eq!(
            got(&names),
            Some(vec![b]),
            "a good answer after failures applies"
        );
        assert_eq!(changes.load(Ordering::SeqCst), 3);
        assert_eq!(metric(&names, "changed"), 3);

        let at: Vec<Duration> = script
            .calls("pay.svc")
            .iter()
            .map(|t| t.duration_since(start))
            .collect();
        let every: Vec<Duration> = (0..6).map(|i| REFRESH * i).collect();
        assert_eq!(
            at, every,
            "resolved at once, then every 5 s, failing or not"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_never_resolved_has_no_addresses() {
        let script = Arc::new(Script::default());
        script.answer("gone.svc", Err("no such host".into()));
        let names = Names::new(script.clone());
        let changes = counted(&names);
        let n = name("gone.svc", 80);
        names.track(HashSet::from([&n]));
        lookups(&script, "gone.svc", 3).await;
        assert_eq!(names.addresses(&n), None);
        assert_eq!(changes.load(Ordering::SeqCst), 0);
        assert_eq!(names.metric().with_label_values(&["failed"]).get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_waits_for_the_first_answers_only() {
        let script = Arc::new(Script::default());
        script.answer("a.svc", Err("no such host".into()));
        script.answer("b.svc", Ok(vec![ip("10.0.0.2:80")]));
        let names = Names::new(script.clone());
        let (a, b, c) = (name("a.svc", 80), name("b.svc", 80), name("c.svc", 80));
        names.track(HashSet::from([&a, &b]));
        assert!(!names.first_answers_in(), "no answer yet");
        lookups(&script, "a.svc", 1).await;
        lookups(&script, "b.svc", 1).await;
        assert!(names.first_answers_in(), "a failure is an answer too");
        names.track(HashSet::from([&a, &b, &c]));
        assert!(
            names.first_answers_in(),
            "a name added later never makes a serving sidecar unready"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_leaves_the_config_is_no_longer_resolved() {
        let script = Arc::new(Script::default());
        script.answer("a.svc", Ok(vec![ip("10.0.0.1:80")]));
        script.answer("b.svc", Ok(vec![ip("10.0.0.2:80")]));
        let names = Names::new(script.clone());
        let (a, b) = (name("a.svc", 80), name("b.svc", 80));
        names.track(HashSet::from([&a, &b]));
        lookups(&script, "a.svc", 1).await;
        lookups(&script, "b.svc", 1).await;

        // The same name again starts nothing new; a name that is gone stops.
        names.track(HashSet::from([&a]));
        assert_eq!(names.addresses(&b), None);
        lookups(&script, "a.svc", 4).await;
        assert_eq!(script.calls("a.svc").len(), 4, "one task per name");
        assert_eq!(script.calls("b.svc").len(), 1, "b's task was stopped");

        // Dropping the registry (the sidecar ending) stops the rest.
        drop(names);
        tokio::time::sleep(REFRESH * 3).await;
        assert_eq!(script.calls("a.svc").len(), 4);
    }
}
