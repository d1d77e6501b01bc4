//! Compiles a [`Snapshot`] into the structures the request path reads: lookup tables, route
//! matchers, endpoint URIs, retry policies and pre-resolved metric handles. Done once per
//! snapshot, so the request path does one `ArcSwap` load and no string building. State that
//! must outlive a snapshot (pools, endpoint health, in-flight limits, retry budgets) comes from
//! registries and is reused while its settings are unchanged.

use super::matcher::RouteMatcher;
use super::split::Split;
use super::table::AuthorityTable;
use crate::client::h2::H2Slot;
use crate::client::{ClientKey, Clients, Upstream};
use crate::concurrency::{ConcurrencyLimit, Overload};
use crate::endpoint::{EndpointRegistry, EndpointState};
use crate::ratelimit::TokenBucket;
use crate::retry::budget::RetryBudget;
use crate::retry::layer::RetryCounters;
use crate::retry::policy::CompiledRetry;
use crate::telemetry::metrics::{Metrics, StatusMetrics};
use crate::telemetry::stats::{SlidingHistogram, StatsRegistry};
use crate::tls::config::ClientTls;
use crate::Direction;
use http::uri::Authority;
use outrigger_config::snapshot::{EndpointAddress, NamedAddress};
use outrigger_config::{
    Destination, Ewma, Fault, Limits, LoadBalancer, OutlierDetection, Protocol, Route, Snapshot,
};
use prometheus::{IntCounter, IntGauge};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The label used when there is no destination (unknown authority) or no endpoint yet.
pub const UNKNOWN: &str = "unknown";

pub struct Compiled {
    pub version: u64,
    pub mtls: outrigger_config::MtlsMode,
    /// What inbound TLS accepts with, when mTLS is on and an identity is held.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Caller identities allowed inbound; empty = anyone the mode admits.
    pub allow: Box<[Box<str>]>,
    pub snapshot: Arc<Snapshot>,
    pub service: Arc<str>,
    pub outbound: AuthorityTable<Dest>,
    /// Destinations by their virtual IP, for intercepted connections.
    pub by_virtual_ip: std::collections::HashMap<std::net::IpAddr, Arc<Dest>>,
    /// Destinations by an endpoint's IP, with the endpoint's index: an app that dials one
    /// instance's address reaches that instance. Addresses two services share (loopback, in
    /// a mesh on one host) are left out: they name no one service.
    pub by_endpoint_ip: std::collections::HashMap<std::net::IpAddr, (Arc<Dest>, usize)>,
    pub inbound: Option<Arc<Dest>>,
    /// Metrics for requests that never reached a destination, per direction.
    pub unrouted_outbound: Arc<StatusMetrics>,
    pub unrouted_inbound: Arc<StatusMetrics>,
}

pub struct Dest {
    pub name: Arc<str>,
    pub direction: Direction,
    pub protocol: Protocol,
    pub client: Upstream,
    pub endpoints: Box<[EndpointTarget]>,
    /// Version names, indexed by `EndpointTarget::version`.
    pub versions: Box<[Arc<str>]>,
    pub routes: Box<[RouteEntry]>,
    pub stats: Arc<SlidingHistogram>,
    pub lb: LoadBalancer,
    pub rr: AtomicUsize,
    pub ewma_decay: Duration,
    pub outlier: OutlierDetection,
    pub concurrency: Arc<ConcurrencyLimit>,
    pub budget: Arc<RetryBudget>,
    pub counters: DestCounters,
    /// Serialises ejection decisions (see `forward::attempt`).
    pub eject_lock: Mutex<()>,
    /// Connections to the peer sidecars outside the HTTP/2 pool (see `intercept::mesh_tcp`
    /// and `client::upgrade`).
    pub tunnels: Tunnels,
}

/// What a destination's byte streams need: opaque TCP (which ports skip detection, and how the
/// sidecars carry it) and HTTP/1 upgrades (WebSocket), which HTTP/2 between sidecars cannot
/// carry.
pub struct Tunnels {
    pub opaque_ports: Box<[u16]>,
    /// mTLS to the peer sidecar with the opaque ALPN; `None` when the mesh runs without mTLS,
    /// and the app's port on the endpoint's host is dialled directly.
    pub opaque_tls: Option<Arc<rustls::ClientConfig>>,
    /// mTLS to the peer sidecar with ALPN http/1.1, for requests that ask to upgrade; `None`
    /// without mTLS, where the hop is HTTP/1 already.
    pub upgrade_tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

pub struct DestCounters {
    pub tls_handshakes: IntCounter,
    pub tls_failures: IntCounter,
    pub overload_pending: IntCounter,
    pub overload_deadline: IntCounter,
    pub overload_connections: IntCounter,
    pub ejections: IntCounter,
    pub ejected: IntGauge,
}

impl DestCounters {
    /// Counts a request turned away by one of the destination's bounds.
    pub fn overloaded(&self, why: Overload) {
        match why {
            Overload::Pending => &self.overload_pending,
            Overload::Deadline => &self.overload_deadline,
            Overload::Connections => &self.overload_connections,
        }
        .inc();
    }
}

pub struct EndpointTarget {
    pub addr: SocketAddr,
    pub authority: Authority,
    /// `http://addr/`, what connectors dial.
    pub uri: http::Uri,
    /// Index into each route's per-version metrics.
    pub version: usize,
    pub state: Arc<EndpointState>,
    /// The HTTP/2 connection under this snapshot's TLS setting for the endpoint.
    pub h2: Arc<H2Slot>,
}

impl EndpointTarget {
    /// An endpoint reached in plaintext.
    pub fn new(addr: SocketAddr, version: usize, state: Arc<EndpointState>) -> Self {
        Self::with_tls(addr, version, state, None)
    }

    pub fn with_tls(
        addr: SocketAddr,
        version: usize,
        state: Arc<EndpointState>,
        tls: Option<&ClientTls>,
    ) -> Self {
        // A socket address always forms a valid authority.
        let authority = Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("0.0.0.0"));
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Self {
            addr,
            authority,
            uri,
            version,
            h2: state.h2_slot(tls),
            state,
        }
    }
}

pub struct RouteEntry {
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    pub timeout: Duration,
    pub per_try_timeout: Option<Duration>,
    pub retry: CompiledRetry,
    pub fault: Option<Fault>,
    pub rate_limit: Option<TokenBucket>,
    pub split: Option<Split>,
    pub counters: RouteCounters,
    /// One per distinct endpoint version, then one for "no endpoint chosen".
    metrics: Box<[Arc<StatusMetrics>]>,
}

pub struct RouteCounters {
    pub retry: RetryCounters,
    pub per_try_timeouts: IntCounter,
    pub fault_delays: IntCounter,
    pub fault_aborts: IntCounter,
    pub rate_limited: IntCounter,
}

impl RouteEntry {
    pub fn metrics_for(&self, endpoint: Option<&EndpointTarget>) -> &Arc<StatusMetrics> {
        let i = endpoint.map_or(self.metrics.len() - 1, |e| e.version);
        &self.metrics[i.min(self.metrics.len() - 1)]
    }
}

impl Dest {
    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> &RouteEntry {
        // The last route is the catch-all, so this always finds one.
        self.routes
            .iter()
            .find(|r| r.matcher.matches(method, path, headers))
            .unwrap_or(&self.routes[self.routes.len() - 1])
    }

    /// How many endpoints outlier detection may have out at once: the configured share, and
    /// never all of them.
    pub fn may_eject(&self) -> bool {
        let n = self.endpoints.len();
        let cap = (n * self.outlier.max_ejected_percent as usize / 100).min(n.saturating_sub(1));
        let out = self
            .endpoints
            .iter()
            .filter(|e| e.state.outlier.is_ejected())
            .count();
        out < cap
    }
}

/// Destination-wide state that outlives snapshots while its settings stay the same.
#[derive(Default)]
pub struct DestRegistry {
    map: Mutex<HashMap<(Direction, String), DestShared>>,
}

struct DestShared {
    limits: Limits,
    budget_cfg: outrigger_config::RetryBudget,
    concurrency: Arc<ConcurrencyLimit>,
    budget: Arc<RetryBudget>,
}

impl DestRegistry {
    fn get(
        &self,
        dir: Direction,
        name: &str,
        limits: &Limits,
        budget: &outrigger_config::RetryBudget,
    ) -> (Arc<ConcurrencyLimit>, Arc<RetryBudget>) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let e = map
            .entry((dir, name.to_string()))
            .or_insert_with(|| DestShared {
                limits: limits.clone(),
                budget_cfg: budget.clone(),
                concurrency: Arc::new(ConcurrencyLimit::new(limits)),
                budget: Arc::new(RetryBudget::new(budget)),
            });
        if e.limits != *limits {
            e.limits = limits.clone();
            e.concurrency = Arc::new(ConcurrencyLimit::new(limits));
        }
        if e.budget_cfg != *budget {
            e.budget_cfg = budget.clone();
            e.budget = Arc::new(RetryBudget::new(budget));
        }
        (e.concurrency.clone(), e.budget.clone())
    }
}

pub struct Compiler<'a> {
    pub metrics: &'a Metrics,
    pub stats: &'a StatsRegistry,
    pub clients: &'a Clients,
    pub endpoints: &'a EndpointRegistry,
    pub dests: &'a DestRegistry,
    pub identity: Option<&'a Arc<crate::tls::identity::Identity>>,
}

struct DestSpec<'a> {
    name: &'a str,
    direction: Direction,
    protocol: Protocol,
    connect_timeout: Duration,
    tls_handshake_timeout: Duration,
    endpoints: Vec<(SocketAddr, &'a str)>,
    routes: Vec<Route>,
    lb: LoadBalancer,
    ewma: Ewma,
    outlier: OutlierDetection,
    limits: Limits,
    budget: outrigger_config::RetryBudget,
    split: Vec<outrigger_config::WeightedVersion>,
    sticky: Option<String>,
    tls: Option<ClientTls>,
    opaque_ports: Vec<u16>,
}

impl Compiler<'_> {
    pub fn compile(&self, snapshot: Snapshot) -> Compiled {
        // Legal but probably unintended settings: said once per snapshot, never per request.
        for (field, warning) in outrigger_config::validate::warnings(&snapshot) {
            tracing::warn!(version = snapshot.version, %field, "{warning}");
        }
        let service: Arc<str> = snapshot.service.as_str().into();
        let mtls = snapshot.mtls.mode;
        // With mTLS on and an identity to present: the trusted roots, once per snapshot.
        let roots = match (mtls, self.identity) {
            (outrigger_config::MtlsMode::Off, _) | (_, None) => None,
            (_, Some(id)) => match crate::tls::config::roots(&snapshot.mtls.trust_bundle, id) {
                Ok(r) => Some((r, id.clone())),
                Err(e) => {
                    tracing::warn!(error = %e, "no trust bundle yet; mTLS waits for one");
                    None
                }
            },
        };
        self.track_names(&snapshot);
        let mut outbound = AuthorityTable::default();
        let mut by_virtual_ip = std::collections::HashMap::new();
        let mut by_endpoint_ip = std::collections::HashMap::new();
        let mut shared_ips = HashSet::new();
        for d in &snapshot.destinations {
            let mut spec = outbound_spec(d);
            spec.endpoints =
                self.socket_addresses(d.endpoints.iter().map(|e| (&e.address, e.version.as_str())));
            if let (Some(expected), Some((roots, id))) = (&d.identity, &roots) {
                match crate::tls::config::client(id.clone(), roots, expected) {
                    Ok(cfg) => {
                        spec.tls = Some(cfg);
                        // Sidecars talk HTTP/2 to each other, whatever the app speaks.
                        spec.protocol = Protocol::Http2;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, destination = %d.name, "cannot build the mTLS client")
                    }
                }
            }
            let dest = Arc::new(self.dest(&service, spec));
            for host in d.authorities() {
                outbound.insert(&host, dest.clone());
            }
            if let Some(ip) = d.virtual_ip {
                // `Host: 10.96.0.20` (an app that dials the address itself) selects it too.
                outbound.insert(&ip.to_string(), dest.clone());
                by_virtual_ip.insert(ip, dest.clone());
            }
            for (i, e) in dest.endpoints.iter().enumerate() {
                let ip = e.addr.ip();
                if ip.is_loopback() || ip.is_unspecified() || shared_ips.contains(&ip) {
                    continue;
                }
                match by_endpoint_ip.get(&ip) {
                    Some((other, _)) if !Arc::ptr_eq(other, &dest) => {
                        by_endpoint_ip.remove(&ip);
                        shared_ips.insert(ip);
                    }
                    Some(_) => {}
                    None => {
                        by_endpoint_ip.insert(ip, (dest.clone(), i));
                    }
                }
            }
        }
        let local = Destination::new(&snapshot.service);
        let inbound = snapshot.inbound.as_ref().map(|i| {
            let route = Route {
                timeout: i.timeout,
                rate_limit: i.rate_limit.clone(),
                ..Route::catch_all()
            };
            let mut spec = outbound_spec(&local);
            spec.direction = Direction::Inbound;
            spec.protocol = i.protocol;
            spec.endpoints = self.socket_addresses(i.app.iter().map(|a| (a, i.version.as_str())));
            spec.routes = vec![route];
            spec.limits = i.limits.clone();
            // One local app: nothing to eject it in favour of. (An app given by a name with
            // several addresses, say 127.0.0.1 and ::1 of which it listens on one, has its
            // connect failures retried on another address.)
            spec.outlier.consecutive_failures = 0;
            Arc::new(self.dest(&service, spec))
        });
        self.endpoints.prune();
        let tls_server =
            roots.and_then(|(roots, id)| match crate::tls::config::server(id, &roots) {
                Ok(cfg) => Some(cfg),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the inbound mTLS config");
                    None
                }
            });
        let allow = snapshot
            .inbound
            .as_ref()
            .map(|i| i.allow.iter().map(|a| a.as_str().into()).collect())
            .unwrap_or_default();
        let unrouted = |d: Direction| {
            self.metrics
                .status_metrics([d.as_str(), &service, UNKNOWN, "", ""])
        };
        Compiled {
            version: snapshot.version,
            mtls,
            tls_server,
            allow,
            unrouted_outbound: unrouted(Direction::Outbound),
            unrouted_inbound: unrouted(Direction::Inbound),
            service: service.clone(),
            outbound,
            by_virtual_ip,
            by_endpoint_ip,
            inbound,
            snapshot: Arc::new(snapshot),
        }
    }

    /// Every DNS name the snapshot gives an endpoint (or the app) by is resolved from now on;
    /// names it no longer has stop being resolved.
    fn track_names(&self, snapshot: &Snapshot) {
        let endpoints = snapshot
            .destinations
            .iter()
            .flat_map(|d| d.endpoints.iter().map(|e| &e.address));
        let app = snapshot.inbound.iter().filter_map(|i| i.app.as_ref());
        let names: HashSet<&NamedAddress> = endpoints
            .chain(app)
            .filter_map(EndpointAddress::name)
            .collect();
        self.endpoints.names().track(names);
    }

    /// The endpoints by socket address: an IP literal as it is, a name as every address it
    /// last resolved to (none before its first answer), each with the version the name was
    /// given. An address a name adds that the destination already has is not added twice.
    fn socket_addresses<'s>(
        &self,
        configured: impl Iterator<Item = (&'s EndpointAddress, &'s str)> + Clone,
    ) -> Vec<(SocketAddr, &'s str)> {
        let mut seen: HashSet<SocketAddr> =
            configured.clone().filter_map(|(a, _)| a.ip()).collect();
        let mut out = Vec::new();
        for (address, version) in configured {
            match address {
                EndpointAddress::Ip(a) => out.push((*a, version)),
                EndpointAddress::Name(n) => {
                    let resolved = self.endpoints.names().addresses(n);
                    for a in resolved.iter().flat_map(|r| r.iter()) {
                        if seen.insert(*a) {
                            out.push((*a, version));
                        }
                    }
                }
            }
        }
        out
    }

    fn dest(&self, service: &str, spec: DestSpec<'_>) -> Dest {
        let mut versions: Vec<&str> = Vec::new();
        let endpoints: Box<[EndpointTarget]> = spec
            .endpoints
            .iter()
            .map(|&(addr, version)| {
                let version = versions
                    .iter()
                    .position(|v| *v == version)
                    .unwrap_or_else(|| {
                        versions.push(version);
                        versions.len() - 1
                    });
                let state = self.endpoints.get(spec.name, addr, spec.ewma.default_rtt);
                EndpointTarget::with_tls(addr, version, state, spec.tls.as_ref())
            })
            .collect();
        let dir = spec.direction.as_str();
        let m = self.metrics;
        let routes = spec
            .routes
            .iter()
            .map(|r| {
                let mut metrics: Vec<_> = versions
                    .iter()
                    .map(|v| m.status_metrics([dir, service, spec.name, v, &r.name]))
                    .collect();
                metrics.push(m.status_metrics([dir, service, spec.name, "", &r.name]));
                let labels = [dir, service, spec.name, r.name.as_str()];
                let outcome = |o: &str| {
                    m.retries
                        .with_label_values(&[dir, service, spec.name, &r.name, o])
                };
                let fault = |k: &str| {
                    m.faults
                        .with_label_values(&[dir, service, spec.name, &r.name, k])
                };
                RouteEntry {
                    name: r.name.as_str().into(),
                    matcher: RouteMatcher::compile(&r.matches),
                    timeout: r.timeout,
                    per_try_timeout: r.per_try_timeout,
                    retry: CompiledRetry::new(&r.retries),
                    fault: r.fault.clone(),
                    rate_limit: r.rate_limit.as_ref().map(TokenBucket::new),
                    split: Split::compile(
                        if r.split.is_empty() {
                            &spec.split
                        } else {
                            &r.split
                        },
                        r.sticky_header.as_deref().or(spec.sticky.as_deref()),
                        &versions,
                        |v| {
                            m.split_decisions
                                .with_label_values(&[dir, service, spec.name, &r.name, v])
                        },
                    ),
                    counters: RouteCounters {
                        retry: RetryCounters {
                            retried: outcome("retried"),
                            budget_exhausted: outcome("budget_exhausted"),
                            not_retryable: outcome("not_retryable"),
                            body_too_large: outcome("body_too_large"),
                        },
                        per_try_timeouts: m.per_try_timeouts.with_label_values(&labels),
                        fault_delays: fault("delay"),
                        fault_aborts: fault("abort"),
                        rate_limited: m.rate_limited.with_label_values(&labels),
                    },
                    metrics: metrics.into(),
                }
            })
            .collect();
        let (concurrency, budget) =
            self.dests
                .get(spec.direction, spec.name, &spec.limits, &spec.budget);
        let overload = |l: &str| m.overloads.with_label_values(&[dir, service, spec.name, l]);
        let ejected = m.ejected.with_label_values(&[service, spec.name]);
        ejected.set(
            endpoints
                .iter()
                .filter(|e| e.state.outlier.is_ejected())
                .count() as i64,
        );
        Dest {
            name: spec.name.into(),
            direction: spec.direction,
            protocol: spec.protocol,
            client: self.clients.get(ClientKey {
                destination: format!("{dir}/{}", spec.name),
                protocol: spec.protocol,
                connect_timeout: spec.connect_timeout,
                tls_handshake_timeout: spec.tls_handshake_timeout,
                max_connections: spec.limits.max_connections,
            }),
            endpoints,
            versions: versions.iter().map(|v| Arc::from(*v)).collect(),
            routes,
            stats: self.stats.get(spec.direction, spec.name),
            lb: spec.lb,
            rr: AtomicUsize::new(0),
            ewma_decay: spec.ewma.decay,
            outlier: spec.outlier,
            concurrency,
            budget,
            eject_lock: Mutex::new(()),
            tunnels: Tunnels {
                opaque_ports: spec.opaque_ports.into(),
                opaque_tls: spec
                    .tls
                    .as_ref()
                    .map(|t| with_alpn(t, crate::tls::OPAQUE_ALPN)),
                upgrade_tls: spec.tls.as_ref().map(|t| with_alpn(t, b"http/1.1")),
                connect_timeout: spec.connect_timeout,
                tls_handshake_timeout: spec.tls_handshake_timeout,
            },
            counters: DestCounters {
                tls_handshakes: m.tls_handshakes.with_label_values(&[dir, "ok"]),
                tls_failures: m.tls_handshakes.with_label_values(&[dir, "error"]),
                overload_pending: overload("pending"),
                overload_deadline: overload("deadline"),
                overload_connections: overload("connections"),
                ejections: m.ejections.with_label_values(&[service, spec.name]),
                ejected,
            },
        }
    }
}

/// The destination's mTLS client configuration, negotiating `alpn` instead of h2.
fn with_alpn(tls: &ClientTls, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*tls.config).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

fn outbound_spec(d: &Destination) -> DestSpec<'_> {
    let mut routes = d.routes.clone();
    routes.push(Route::catch_all());
    DestSpec {
        name: &d.name,
        direction: Direction::Outbound,
        protocol: d.protocol,
        connect_timeout: d.connect_timeout,
        tls_handshake_timeout: d.tls_handshake_timeout,
        // Filled in by `Compiler::addresses`, which resolves names.
        endpoints: Vec::new(),
        routes,
        lb: d.load_balancer,
        ewma: d.ewma.clone(),
        outlier: d.outlier_detection.clone(),
        limits: d.limits.clone(),
        budget: d.retry_budget.clone(),
        split: d.split.clone(),
        sticky: d.sticky_header.clone(),
        tls: None,
        opaque_ports: d
            .ports
            .iter()
            .filter(|p| p.opaque)
            .map(|p| p.port)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::resolve::tests::{ip, lookups, Script};
    use crate::endpoint::resolve::REFRESH;

    /// What compiling reuses from one snapshot to the next, with names resolved by `script`.
    struct Parts {
        metrics: Metrics,
        stats: StatsRegistry,
        clients: Clients,
        endpoints: EndpointRegistry,
        dests: DestRegistry,
    }

    impl Parts {
        fn new(script: Arc<Script>) -> Self {
            Self {
                metrics: Metrics::new(),
                stats: StatsRegistry::new(Duration::from_secs(60)),
                clients: Clients::default(),
                endpoints: EndpointRegistry::with_lookup(script),
                dests: DestRegistry::default(),
            }
        }

        fn compile(&self, yaml: &str) -> Compiled {
            let snapshot = outrigger_config::from_yaml(yaml).expect("test snapshot");
            Compiler {
                metrics: &self.metrics,
                stats: &self.stats,
                clients: &self.clients,
                endpoints: &self.endpoints,
                dests: &self.dests,
                identity: None,
            }
            .compile(snapshot)
        }
    }

    /// The destination's endpoints as (address, version).
    fn endpoints(c: &Compiled, host: &str) -> Vec<(SocketAddr, String)> {
        let d = c.outbound.lookup(Some(host)).expect("destination");
        d.endpoints
            .iter()
            .map(|e| (e.addr, d.versions[e.version].to_string()))
            .collect()
    }

    fn state(c: &Compiled, host: &str, addr: SocketAddr) -> Arc<EndpointState> {
        let d = c.outbound.lookup(Some(host)).expect("destination");
        d.endpoints
            .iter()
            .find(|e| e.addr == addr)
            .map(|e| e.state.clone())
            .expect("endpoint")
    }

    const SNAPSHOT: &str = "\
service: web
destinations:
  - name: payment
    endpoints:
      - {address: '10.0.0.9:80', version: v1}
      - {address: 'pay.svc:80', version: v2}
      - {address: 'gone.svc:80', version: v3}
";

    #[tokio::test(start_paused = true)]
    async fn every_address_of_a_name_is_an_endpoint_that_keeps_its_state() {
        let script = Arc::new(Script::default());
        let (a, b, c, literal) = (
            ip("10.0.0.1:80"),
            ip("10.0.0.2:80"),
            ip("10.0.0.3:80"),
            ip("10.0.0.9:80"),
        );
        script.answer("pay.svc", Ok(vec![b, a]));
        script.answer("pay.svc", Ok(vec![c, b, literal]));
        script.answer("gone.svc", Err("no such host".into()));
        let parts = Parts::new(script.clone());

        // Before the first answer a name has no endpoints; the literal needs no resolver.
        let first = parts.compile(SNAPSHOT);
        assert_eq!(endpoints(&first, "payment"), [(literal, "v1".to_string())]);

        lookups(&script, "pay.svc", 1).await;
        let second = parts.compile(SNAPSHOT);
        assert_eq!(
            endpoints(&second, "payment"),
            [
                (literal, "v1".to_string()),
                (a, "v2".to_string()),
                (b, "v2".to_string())
            ],
            "one endpoint per address, with the name's version; the name that never resolved adds none"
        );
        let kept = state(&second, "payment", b);
        let eject_at_once = OutlierDetection {
            consecutive_failures: 1,
            ..OutlierDetection::default()
        };
        kept.outlier.record(&eject_at_once, true, false, || true);
        assert!(kept.outlier.is_ejected());

        lookups(&script, "pay.svc", 2).await;
        let third = parts.compile(SNAPSHOT);
        assert_eq!(
            endpoints(&third, "payment"),
            [
                (literal, "v1".to_string()),
                (b, "v2".to_string()),
                (c, "v2".to_string())
            ],
            "a gone, c new, and the literal's address not added twice"
        );
        assert!(
            Arc::ptr_eq(&kept, &state(&third, "payment", b)),
            "an address that stays keeps its state (EWMA, ejection, pools)"
        );
        assert!(state(&third, "payment", b).outlier.is_ejected());
        drop((first, second));

        // A snapshot without the names stops resolving them.
        let fourth = parts.compile("service: web\ndestinations:\n  - name: payment\n");
        assert!(endpoints(&fourth, "payment").is_empty());
        let before = script.calls("pay.svc").len();
        tokio::time::sleep(REFRESH * 3).await;
        assert_eq!(script.calls("pay.svc").len(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn the_app_may_be_a_name() {
        let script = Arc::new(Script::default());
        script.answer("app.local", Ok(vec![ip("127.0.0.1:8080")]));
        let parts = Parts::new(script.clone());
        let yaml = "service: web\ninbound: {app: 'app.local:8080', version: v7}\n";
        let before = parts.compile(yaml);
        assert_eq!(before.inbound.as_ref().map(|d| d.endpoints.len()), Some(0));
        lookups(&script, "app.local", 1).await;
        let after = parts.compile(yaml);
        let inbound = after.inbound.as_ref().expect("inbound");
        let eps: Vec<_> = inbound.endpoints.iter().map(|e| e.addr).collect();
        assert_eq!(eps, [ip("127.0.0.1:8080")]);
        assert_eq!(&*inbound.versions[0], "v7");
    }
}
