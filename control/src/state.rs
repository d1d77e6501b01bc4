//! The mesh state and the one task that changes it. Every change (apply, delete, split,
//! registry) goes through this task in order, so revisions are handed out strictly in order
//! and each published [`View`] is complete; readers (the API, push streams) only ever look at
//! the latest view and never take a lock. The CA's operations go through the same task
//! ([`authority`]), so a root is never dropped while a leaf it signs is being recorded.

mod authority;

pub use authority::{CaState, DropOutcome, MintedToken, RotateOutcome};

use crate::apply::{Applied, Parsed};
use crate::ca::issue::Leaf;
use crate::ca::tokens::TokenInfo;
use crate::ca::{Authority, CaError, Credential, Issued, RootInfo, SignError};
use crate::canary::reweigh;
use crate::metrics::Metrics;
use crate::registry::{Instance, Registration, Registry};
use crate::resources::Resources;
use crate::store::{Change, Loaded, Store, StoreError};
use outrigger_config::error::FieldError;
use outrigger_config::mesh::{Kind, Resource};
use outrigger_config::path::FieldPath;
use outrigger_config::{Mtls, Validate, Validator, WeightedVersion};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

/// How often expired leases are looked for; removals reach sidecars within this plus a push.
pub const REAP_EVERY: Duration = Duration::from_millis(50);

/// Everything the sidecars' snapshots are compiled from, at one revision.
#[derive(Debug, Default)]
pub struct View {
    pub revision: u64,
    pub resources: Arc<Resources>,
    /// Live instances, ordered by service, then endpoint.
    pub instances: Arc<Vec<Instance>>,
    /// Mode, trust domain and the roots to trust, as every snapshot carries them.
    pub mtls: Arc<Mtls>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("invalid")]
    Invalid(Vec<FieldError>),
    #[error("{} {name:?} not found", kind.as_str())]
    NotFound { kind: Kind, name: String },
    /// Something other than a mesh resource is not there (a CA root).
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("the control plane is shutting down")]
    Stopped,
}

#[derive(Debug, Serialize)]
pub struct ApplyOutcome {
    pub applied: Vec<Applied>,
    pub dry_run: bool,
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct SplitOutcome {
    pub service: String,
    pub split: Vec<WeightedVersion>,
    pub revision: u64,
    /// Versions given weight with no registered instance (accepted only when forced): their
    /// share goes to the others until one registers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

type Reply<T> = oneshot::Sender<Result<T, ChangeError>>;

enum Request {
    Apply(Parsed, bool, Reply<ApplyOutcome>),
    Delete(Kind, String, Reply<u64>),
    Split(String, BTreeMap<String, u32>, bool, Reply<SplitOutcome>),
    Register(Registration, Reply<Instance>),
    Heartbeat(String, oneshot::Sender<bool>),
    Deregister(String, oneshot::Sender<bool>),
    MintToken(String, Duration, Option<u32>, Reply<MintedToken>),
    Tokens(oneshot::Sender<Vec<TokenInfo>>),
    RevokeToken(String, Reply<()>),
    Sign(
        Credential,
        String,
        oneshot::Sender<Result<Issued, SignError>>,
    ),
    Roots(oneshot::Sender<Vec<RootInfo>>),
    CaState(oneshot::Sender<CaState>),
    Rotate(bool, Reply<RotateOutcome>),
    Activate(String, Reply<bool>),
    ServerCert(
        Box<rcgen::KeyPair>,
        Vec<rcgen::SanType>,
        Duration,
        oneshot::Sender<Result<(Box<rcgen::KeyPair>, Leaf), CaError>>,
    ),
    DropRoot(String, bool, Reply<DropOutcome>),
}

/// The API's and streams' way to the state: send changes, read views.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    view: watch::Receiver<Arc<View>>,
}

impl Handle {
    /// The latest view.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// A receiver that wakes on every new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ChangeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ChangeError::Stopped)?;
        rx.await.map_err(|_| ChangeError::Stopped)?
    }

    pub async fn apply(&self, parsed: Parsed, dry_run: bool) -> Result<ApplyOutcome, ChangeError> {
        self.ask(|r| Request::Apply(parsed, dry_run, r)).await
    }

    /// Deletes a resource; returns the new revision.
    pub async fn delete(&self, kind: Kind, name: String) -> Result<u64, ChangeError> {
        self.ask(|r| Request::Delete(kind, name, r)).await
    }

    /// Sets versions' weights. A version with weight and no registered instance is refused
    /// unless `force`, and then named in the outcome's warnings.
    pub async fn split(
        &self,
        service: String,
        weights: BTreeMap<String, u32>,
        force: bool,
    ) -> Result<SplitOutcome, ChangeError> {
        self.ask(|r| Request::Split(service, weights, force, r))
            .await
    }

    pub async fn register(&self, reg: Registration) -> Result<Instance, ChangeError> {
        self.ask(|r| Request::Register(reg, r)).await
    }

    /// False when the lease is unknown or expired.
    pub async fn heartbeat(&self, id: String) -> Result<bool, ChangeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Heartbeat(id, tx))
            .await
            .map_err(|_| ChangeError::Stopped)?;
        rx.await.map_err(|_| ChangeError::Stopped)
    }

    /// False when the lease is unknown.
    pub async fn deregister(&self, id: String) -> Result<bool, ChangeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Deregister(id, tx))
            .await
            .map_err(|_| ChangeError::Stopped)?;
        rx.await.map_err(|_| ChangeError::Stopped)
    }
}

struct Actor {
    store: Arc<Store>,
    ca: Authority,
    mtls: Arc<Mtls>,
    resources: Arc<Resources>,
    registry: Registry,
    instances: Arc<Vec<Instance>>,
    revision: u64,
    high_water: u64,
    view: watch::Sender<Arc<View>>,
    metrics: Metrics,
}

/// Starts the state task from what the store loaded and the CA opened from it. It runs until
/// every [`Handle`] is gone.
pub fn start(store: Store, loaded: Loaded, ca: Authority, metrics: Metrics) -> Handle {
    let resources = Arc::new(Resources::from_list(loaded.resources));
    let mut registry = Registry::default();
    registry.restore(loaded.instances, Instant::now());
    let instances = Arc::new(registry.instances());
    let mtls = Arc::new(ca.mtls());
    let view = Arc::new(View {
        revision: loaded.high_water,
        resources: resources.clone(),
        instances: instances.clone(),
        mtls: mtls.clone(),
    });
    observe(&metrics, &view);
    let (view_tx, view_rx) = watch::channel(view);
    let (tx, rx) = mpsc::channel(256);
    let actor = Actor {
        store: Arc::new(store),
        ca,
        mtls,
        resources,
        registry,
        instances,
        revision: loaded.high_water,
        high_water: loaded.high_water,
        view: view_tx,
        metrics,
    };
    tokio::spawn(actor.run(rx));
    Handle { tx, view: view_rx }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut reap = tokio::time::interval(REAP_EVERY);
        reap.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = rx.recv() => match req {
                    Some(req) => self.handle(req).await,
                    None => break,
                },
                _ = reap.tick() => self.reap().await,
            }
        }
    }

    async fn handle(&mut self, req: Request) {
        // A caller that went away no longer wants the answer; the change stands.
        match req {
            Request::Apply(parsed, dry_run, reply) => {
                let _ = reply.send(self.apply(parsed, dry_run).await);
            }
            Request::Delete(kind, name, reply) => {
                let _ = reply.send(self.delete(kind, name).await);
            }
            Request::Split(service, weights, force, reply) => {
                let _ = reply.send(self.split(service, weights, force).await);
            }
            Request::Register(reg, reply) => {
                let result = match self.registry.register(reg, Instant::now()) {
                    Ok((instance, replaced)) => {
                        let mut changes: Vec<Change> = replaced
                            .into_iter()
                            .map(|old| Change::DeleteInstance(old.id))
                            .collect();
                        changes.push(Change::PutInstance(Box::new(instance.clone())));
                        self.registry_changed(changes).await;
                        Ok(instance)
                    }
                    Err(e) => Err(ChangeError::BadRequest(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Request::Heartbeat(id, reply) => {
                let _ = reply.send(self.registry.heartbeat(&id, Instant::now()));
            }
            Request::Deregister(id, reply) => {
                let found = self.registry.deregister(&id).is_some();
                if found {
                    self.registry_changed(vec![Change::DeleteInstance(id)])
                        .await;
                }
                let _ = reply.send(found);
            }
            Request::MintToken(service, ttl, uses, reply) => {
                let _ = reply.send(self.mint_token(&service, ttl, uses).await);
            }
            Request::Tokens(reply) => {
                let _ = reply.send(self.ca.tokens(crate::clock::now()));
            }
            Request::RevokeToken(id, reply) => {
                let _ = reply.send(self.revoke_token(&id).await);
            }
            Request::Sign(credential, csr, reply) => {
                let _ = reply.send(self.sign(&credential, &csr).await);
            }
            Request::Roots(reply) => {
                let _ = reply.send(self.ca.roots(crate::clock::now()));
            }
            Request::CaState(reply) => {
                let _ = reply.send(self.ca_state());
            }
            Request::Rotate(force, reply) => {
                let _ = reply.send(self.rotate(force).await);
            }
            Request::Activate(id, reply) => {
                let _ = reply.send(self.activate(&id).await);
            }
            Request::ServerCert(key, names, lifetime, reply) => {
                let now = crate::clock::now();
                let _ = reply.send(
                    self.ca
                        .sign_server(&key, &names, now, lifetime)
                        .map(|leaf| (key, leaf)),
                );
            }
            Request::DropRoot(id, force, reply) => {
                let _ = reply.send(self.drop_root(&id, force).await);
            }
        }
    }

    async fn apply(&mut self, parsed: Parsed, dry_run: bool) -> Result<ApplyOutcome, ChangeError> {
        if let Err(errors) = parsed.check(&self.resources) {
            self.metrics.applies_rejected.inc();
            return Err(ChangeError::Invalid(errors));
        }
        let applied = parsed.plan(&self.resources);
        let changes: Vec<Change> = parsed
            .resources
            .iter()
            .zip(&applied)
            .filter(|(_, a)| a.action != crate::apply::Action::Unchanged)
            .map(|(r, _)| Change::Put(Box::new(r.clone())))
            .collect();
        let revision = if dry_run || changes.is_empty() {
            self.revision
        } else {
            self.commit(changes).await?
        };
        Ok(ApplyOutcome {
            applied,
            dry_run,
            revision,
        })
    }

    async fn delete(&mut self, kind: Kind, name: String) -> Result<u64, ChangeError> {
        if self.resources.get(kind, &name).is_none() {
            return Err(ChangeError::NotFound { kind, name });
        }
        let referrers = self.resources.referrers(kind, &name);
        if !referrers.is_empty() {
            return Err(ChangeError::Conflict(format!(
                "{}/{name} is referred to by {}; delete or change those first",
                kind.as_str(),
                referrers.join(", ")
            )));
        }
        self.commit(vec![Change::Delete(kind, name)]).await
    }

    async fn split(
        &mut self,
        service: String,
        weights: BTreeMap<String, u32>,
        force: bool,
    ) -> Result<SplitOutcome, ChangeError> {
        let Some(mut doc) = self.resources.services.get(&service).cloned() else {
            return Err(ChangeError::NotFound {
                kind: Kind::Service,
                name: service,
            });
        };
        let live: Vec<String> = self
            .instances
            .iter()
            .filter(|i| i.service == service)
            .map(|i| i.version.clone())
            .collect();
        doc.spec.split = reweigh(&doc.spec.split, &weights, &live)
            .map_err(|e| ChangeError::BadRequest(e.to_string()))?;
        // A phantom version would take its share on paper only: the sidecars fall back to the
        // versions that have endpoints, while the split says otherwise.
        let phantoms: Vec<String> = weights
            .iter()
            .filter(|(v, w)| **w > 0 && !live.contains(v))
            .map(|(v, w)| {
                let mut registered: Vec<&str> = live.iter().map(String::as_str).collect();
                registered.sort_unstable();
                registered.dedup();
                format!(
                    "version {v} of {service} has no registered instance (registered: {}); its {w}% goes to the others until one registers",
                    if registered.is_empty() { "none".to_string() } else { registered.join(", ") }
                )
            })
            .collect();
        if !phantoms.is_empty() && !force {
            return Err(ChangeError::Conflict(format!(
                "{}; start an instance of it first, or force the split (outrigger canary --force)",
                phantoms.join("; ")
            )));
        }
        let split = doc.spec.split.clone();
        let resource = Resource::Service(doc);
        let mut v = Validator::default();
        resource.validate(&FieldPath::root(), &mut v);
        if let Some((path, reason)) = v.problems.into_iter().next() {
            return Err(ChangeError::BadRequest(format!("{path}: {reason}")));
        }
        let revision = self.commit(vec![Change::Put(Box::new(resource))]).await?;
        for w in &phantoms {
            tracing::warn!(service = %service, "split forced: {w}");
        }
        Ok(SplitOutcome {
            service,
            split,
            revision,
            warnings: phantoms,
        })
    }

    /// Stores config changes under the next revision, then publishes them.
    async fn commit(&mut self, changes: Vec<Change>) -> Result<u64, ChangeError> {
        let revision = self.revision + 1;
        let high_water = self.high_water.max(revision);
        let mut next = (*self.resources).clone();
        for c in &changes {
            match c {
                Change::Put(r) => next.put((**r).clone()),
                Change::Delete(kind, name) => {
                    next.remove(*kind, name);
                }
                // Registry and CA changes have their own paths.
                Change::PutInstance(_) | Change::DeleteInstance(_) | Change::Ca(_) => {}
            }
        }
        self.write(changes, high_water).await?;
        self.revision = revision;
        self.high_water = high_water;
        self.resources = Arc::new(next);
        self.publish();
        Ok(revision)
    }

    /// A redb commit waits for the disk; it runs off the async workers.
    async fn write(&self, changes: Vec<Change>, high_water: u64) -> Result<(), StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.commit(&changes, high_water))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn reap(&mut self) {
        let gone = self.registry.reap(Instant::now());
        if !gone.is_empty() {
            for i in &gone {
                tracing::info!(id = %i.id, service = %i.service, endpoint = %i.endpoint, "lease expired");
            }
            let changes = gone
                .into_iter()
                .map(|i| Change::DeleteInstance(i.id))
                .collect();
            self.registry_changed(changes).await;
        }
    }

    /// Registry changes get a new revision too, so sidecars see versions only go up; they
    /// are stored so that a restart keeps the endpoints (see `registry`).
    async fn registry_changed(&mut self, changes: Vec<Change>) {
        self.revision += 1;
        let mark = self.high_water.max(self.revision);
        match self.write(changes, mark).await {
            Ok(()) => self.high_water = mark,
            // Still publish: live endpoints matter more than what a restart would remember.
            Err(e) => tracing::error!(error = %e, "cannot store a registry change"),
        }
        self.instances = Arc::new(self.registry.instances());
        self.publish();
    }

    fn publish(&self) {
        let view = Arc::new(View {
            revision: self.revision,
            resources: self.resources.clone(),
            instances: self.instances.clone(),
            mtls: self.mtls.clone(),
        });
        observe(&self.metrics, &view);
        self.view.send_replace(view);
    }
}

/// Refreshes the gauges that describe the state.
fn observe(m: &Metrics, view: &View) {
    use crate::metrics::gauge;
    use outrigger_config::mesh::Kind;
    for kind in [Kind::Service, Kind::Route, Kind::Policy] {
        m.resources
            .with_label_values(&[kind.as_str()])
            .set(gauge(view.resources.count(kind)));
    }
    // Services whose last instance left disappear instead of lingering at 0.
    m.instances.reset();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for i in view.instances.iter() {
        *counts.entry(i.service.as_str()).or_default() += 1;
    }
    for (service, n) in counts {
        m.instances.with_label_values(&[service]).set(gauge(n));
    }
    m.revision
        .set(i64::try_from(view.revision).unwrap_or(i64::MAX));
    m.ca_roots.set(gauge(view.mtls.trust_bundle.len()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    pub(super) fn start_in(dir: &std::path::Path) -> Result<Handle, Box<dyn std::error::Error>> {
        let options = crate::ca::CaOptions {
            dir: dir.join("ca"),
            trust_domain: outrigger_config::DEFAULT_TRUST_DOMAIN.into(),
            cert_lifetime: Duration::from_secs(60),
            mode: outrigger_config::MtlsMode::Strict,
            operator_root: None,
        };
        let (store, loaded, ca) = crate::server::open(dir, options)?;
        Ok(start(store, loaded, ca, Metrics::new()?))
    }

    fn registration(ttl: u64) -> Registration {
        Registration {
            service: "payment".into(),
            version: "v2".into(),
            address: IpAddr::from([127, 0, 0, 1]),
            ports: BTreeMap::from([("inbound".to_string(), 15106)]),
            labels: BTreeMap::new(),
            ttl_secs: Some(ttl),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_removed_and_published_within_a_reap_period(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let state = start_in(dir.path())?;
        let mut views = state.subscribe();
        let start = Instant::now();
        let inst = state.register(registration(1)).await?;
        views.changed().await?;
        let registered = views.borrow_and_update().clone();
        assert_eq!(registered.instances.len(), 1);

        // Nothing renews the lease: the next view drops it, a second and a reap later.
        views.changed().await?;
        let expired = Instant::now() - start;
        let after = views.borrow_and_update().clone();
        assert!(after.instances.is_empty());
        assert!(after.revision > registered.revision);
        assert!(
            expired >= Duration::from_secs(1) && expired <= Duration::from_secs(1) + REAP_EVERY * 2,
            "{expired:?}"
        );
        assert!(!state.heartbeat(inst.id).await?);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_lease() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let state = start_in(dir.path())?;
        let inst = state.register(registration(1)).await?;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert!(state.heartbeat(inst.id.clone()).await?);
        }
        assert_eq!(state.view().instances.len(), 1);
        assert!(state.deregister(inst.id.clone()).await?);
        assert!(state.view().instances.is_empty());
        assert!(!state.deregister(inst.id).await?);
        Ok(())
    }

    #[tokio::test]
    async fn revisions_and_instances_survive_restarts() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let before = {
            let state = start_in(dir.path())?;
            let parsed = crate::apply::parse("kind: Service\nmetadata: {name: a}\nspec: {}\n")
                .map_err(|e| format!("{e:?}"))?;
            let applied = state.apply(parsed, false).await?;
            state.register(registration(10)).await?;
            state.register(registration(10)).await?;
            assert!(state.view().revision > applied.revision);
            state.view().revision
        };
        // The first state task may still hold the database for a moment after its handle
        // is dropped; reopen once it has let go.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let state = loop {
            match start_in(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        assert!(state.view().revision >= before);
        assert_eq!(state.view().resources.services.len(), 1);
        assert_eq!(
            state.view().instances.len(),
            1,
            "the registry is stored; the second registration replaced the first"
        );
        Ok(())
    }
}
