//! Compiles a [`Snapshot`] into the structures the request path reads: lookup tables, route
//! matchers, endpoint URIs and pre-resolved metric handles. Done once per snapshot, so the
//! request path does one `ArcSwap` load and no string building.

use super::matcher::RouteMatcher;
use super::table::AuthorityTable;
use crate::client::{Clients, HttpClient};
use crate::telemetry::metrics::{Metrics, StatusMetrics};
use crate::telemetry::stats::{SlidingHistogram, StatsRegistry};
use crate::Direction;
use http::uri::Authority;
use outrigger_config::{Protocol, Route, Snapshot};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The label used when there is no destination (unknown authority) or no endpoint yet.
pub const UNKNOWN: &str = "unknown";

pub struct Compiled {
    pub version: u64,
    pub snapshot: Arc<Snapshot>,
    pub service: Arc<str>,
    pub outbound: AuthorityTable,
    pub inbound: Option<Arc<Dest>>,
    /// Metrics for requests that never reached a destination, per direction.
    pub unrouted_outbound: Arc<StatusMetrics>,
    pub unrouted_inbound: Arc<StatusMetrics>,
}

pub struct Dest {
    pub name: Arc<str>,
    pub direction: Direction,
    pub protocol: Protocol,
    pub client: HttpClient,
    pub endpoints: Box<[EndpointTarget]>,
    pub routes: Box<[RouteEntry]>,
    pub stats: Arc<SlidingHistogram>,
    next: AtomicUsize,
}

pub struct EndpointTarget {
    pub addr: SocketAddr,
    pub authority: Authority,
    /// Index into each route's per-version metrics.
    pub version: usize,
}

pub struct RouteEntry {
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    pub timeout: Duration,
    /// One per distinct endpoint version, then one for "no endpoint chosen".
    metrics: Box<[Arc<StatusMetrics>]>,
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

    /// Round robin over the endpoints.
    pub fn pick(&self) -> Option<&EndpointTarget> {
        if self.endpoints.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(n % self.endpoints.len())
    }
}

pub struct Compiler<'a> {
    pub metrics: &'a Metrics,
    pub stats: &'a StatsRegistry,
    pub clients: &'a Clients,
}

struct DestSpec<'a> {
    name: &'a str,
    direction: Direction,
    protocol: Protocol,
    connect_timeout: Duration,
    endpoints: Vec<(SocketAddr, &'a str)>,
    routes: Vec<Route>,
}

impl Compiler<'_> {
    pub fn compile(&self, snapshot: Snapshot) -> Compiled {
        let service: Arc<str> = snapshot.service.as_str().into();
        let mut outbound = AuthorityTable::default();
        for d in &snapshot.destinations {
            let mut routes = d.routes.clone();
            routes.push(Route::catch_all());
            let dest = Arc::new(
                self.dest(
                    &service,
                    DestSpec {
                        name: &d.name,
                        direction: Direction::Outbound,
                        protocol: d.protocol,
                        connect_timeout: d.connect_timeout,
                        endpoints: d
                            .endpoints
                            .iter()
                            .map(|e| (e.address, e.version.as_str()))
                            .collect(),
                        routes,
                    },
                ),
            );
            for host in d.authorities() {
                outbound.insert(&host, dest.clone());
            }
        }
        let inbound = snapshot.inbound.as_ref().map(|i| {
            let mut route = Route::catch_all();
            route.timeout = i.timeout;
            Arc::new(self.dest(
                &service,
                DestSpec {
                    name: &snapshot.service,
                    direction: Direction::Inbound,
                    protocol: i.protocol,
                    connect_timeout: Duration::from_secs(1),
                    endpoints: vec![(i.app, i.version.as_str())],
                    routes: vec![route],
                },
            ))
        });
        let unrouted = |d: Direction| {
            self.metrics
                .status_metrics([d.as_str(), &service, UNKNOWN, "", ""])
        };
        Compiled {
            version: snapshot.version,
            unrouted_outbound: unrouted(Direction::Outbound),
            unrouted_inbound: unrouted(Direction::Inbound),
            service: service.clone(),
            outbound,
            inbound,
            snapshot: Arc::new(snapshot),
        }
    }

    fn dest(&self, service: &str, spec: DestSpec<'_>) -> Dest {
        let mut versions: Vec<&str> = Vec::new();
        let endpoints = spec
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
                EndpointTarget {
                    addr,
                    // A socket address always forms a valid authority.
                    authority: Authority::try_from(addr.to_string().as_str())
                        .unwrap_or_else(|_| Authority::from_static("0.0.0.0")),
                    version,
                }
            })
            .collect();
        let dir = spec.direction.as_str();
        let routes = spec
            .routes
            .iter()
            .map(|r| {
                let mut metrics: Vec<_> = versions
                    .iter()
                    .map(|v| {
                        self.metrics
                            .status_metrics([dir, service, spec.name, v, &r.name])
                    })
                    .collect();
                metrics.push(
                    self.metrics
                        .status_metrics([dir, service, spec.name, "", &r.name]),
                );
                RouteEntry {
                    name: r.name.as_str().into(),
                    matcher: RouteMatcher::compile(&r.matches),
                    timeout: r.timeout,
                    metrics: metrics.into(),
                }
            })
            .collect();
        Dest {
            name: spec.name.into(),
            direction: spec.direction,
            protocol: spec.protocol,
            client: self.clients.get(spec.protocol, spec.connect_timeout),
            endpoints,
            routes,
            stats: self.stats.get(spec.direction, spec.name),
            next: AtomicUsize::new(0),
        }
    }
}
