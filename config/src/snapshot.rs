//! The sidecar `Snapshot`: everything one sidecar needs to route, as pushed by the control
//! plane or read from a static file. The proxy compiles it once when it arrives.

use crate::duration::{display, Family};
use crate::path::FieldPath;
use crate::resilience::{
    Ewma, Fault, Limits, LoadBalancer, OutlierDetection, RateLimit, RetryBudget, RetryPolicy,
};
use crate::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

mod address;
pub mod virtual_service;
pub use address::{check_host_name, AddressError, EndpointAddress, NamedAddress};
pub use virtual_service::ServicePort;

pub const DEFAULT_ROUTE: &str = "default";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Envoy sets no bound of its own on the upstream TLS handshake (only the connection's idle
/// timeout, an hour); Linkerd bounds TCP and TLS together by its 1 s connect timeout. Ours is
/// separate and longer than the TCP one: a handshake costs a signature on each side, and a
/// CPU-starved peer may take a while to make it, but a peer that accepts and never answers
/// fails over after 3 s, well inside the default 15 s request timeout.
const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Set by the source (control plane or file watcher); monotonically increasing.
    #[serde(default)]
    pub version: u64,
    /// The service this sidecar runs beside; the `service` label of every metric.
    pub service: String,
    /// Where inbound requests go: the local app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Inbound>,
    /// Services this sidecar's app may call.
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// Mutual TLS between sidecars: mode, trust domain and the trusted roots.
    #[serde(default)]
    pub mtls: Mtls,
}

/// How inbound connections are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Plaintext only (static files and quick starts, where there is no CA).
    #[default]
    Off,
    /// mTLS and plaintext both accepted (for migrating); metrics say which was which.
    Permissive,
    /// Only mTLS with a client certificate from the mesh CA.
    Strict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mtls {
    pub mode: MtlsMode,
    /// Identities are `spiffe://<trust_domain>/service/<name>`.
    pub trust_domain: String,
    /// PEM root certificates to trust; more than one while a root rotates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_bundle: Vec<String>,
}

impl Default for Mtls {
    fn default() -> Self {
        Self {
            mode: MtlsMode::Off,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            trust_bundle: Vec::new(),
        }
    }
}

pub const DEFAULT_TRUST_DOMAIN: &str = "outrigger.local";

/// The SPIFFE identity of a service in a trust domain.
pub fn identity(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/service/{service}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 to the endpoint (requests that arrived as HTTP/2 are translated).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c) to the endpoint; required for gRPC.
    Http2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// The local app's address. Required in a static file; a sidecar fed by the control
    /// plane fills it in from its `--app` flag. A DNS name is resolved like an endpoint's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<EndpointAddress>,
    #[serde(default)]
    pub protocol: Protocol,
    /// This instance's version: the `dst_version` label of inbound metrics.
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Token bucket in front of the app; over it, 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub limits: Limits,
    /// Caller identities (`spiffe://…`) allowed to call this service; empty = any caller the
    /// mTLS mode admits. A caller not on a non-empty list gets 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub name: String,
    /// Authorities (`Host` / `:authority`, port ignored) that select this destination. Empty
    /// means just `name`. `"*"` makes it the catch-all for unknown authorities.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "default_connect_timeout", with = "crate::duration")]
    pub connect_timeout: Duration,
    /// Bounds the mTLS handshake after TCP connects (only used when `identity` is set).
    #[serde(default = "default_tls_handshake_timeout", with = "crate::duration")]
    pub tls_handshake_timeout: Duration,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Tried in order; the first match wins. A catch-all `default` route is implied last.
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default)]
    pub ewma: Ewma,
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Traffic split across endpoint versions for routes without their own (canary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedVersion>,
    /// Header whose value is hashed onto the split, so one user stays on one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    /// The peer identity (`spiffe://…`) the endpoints must prove. When set, the sidecar talks
    /// to them over mTLS (HTTP/2, ALPN h2), whatever the app's protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The service's virtual IP: intercepted connections to it are this destination's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_ip: Option<std::net::IpAddr>,
    /// Ports apps dial on the virtual IP; `opaque` ones skip protocol detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
}

/// One version's share of a split. Weights are relative (90/10, or 9/1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedVersion {
    pub version: String,
    pub weight: u32,
}

impl Destination {
    /// A destination with every setting at its default and no endpoints.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            hosts: Vec::new(),
            protocol: Protocol::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            endpoints: Vec::new(),
            routes: Vec::new(),
            load_balancer: LoadBalancer::default(),
            ewma: Ewma::default(),
            outlier_detection: OutlierDetection::default(),
            limits: Limits::default(),
            retry_budget: RetryBudget::default(),
            split: Vec::new(),
            sticky_header: None,
            identity: None,
            virtual_ip: None,
            ports: Vec::new(),
        }
    }

    /// The authorities that select this destination, lowercased.
    pub fn authorities(&self) -> Vec<String> {
        if self.hosts.is_empty() {
            vec![self.name.to_ascii_lowercase()]
        } else {
            self.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:PORT`, or `NAME:PORT` for a DNS name, each address of which is an endpoint.
    pub address: EndpointAddress,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Deadline for the response headers, retries included.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Deadline for one attempt's response headers; the last attempt runs to `timeout`.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub retries: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Overrides the destination's split for this route (e.g. a header match sending testers
    /// to v2: `split: [{version: v2, weight: 1}]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
}

impl Route {
    /// The route every destination ends with: matches everything, default timeout.
    pub fn catch_all() -> Self {
        Route {
            name: DEFAULT_ROUTE.to_string(),
            matches: RouteMatch::default(),
            timeout: DEFAULT_TIMEOUT,
            per_try_timeout: None,
            retries: RetryPolicy::default(),
            fault: None,
            rate_limit: None,
            split: Vec::new(),
            sticky_header: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// Upper-case method names; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Every listed header must be present with exactly this value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

fn default_tls_handshake_timeout() -> Duration {
    DEFAULT_TLS_HANDSHAKE_TIMEOUT
}

fn default_version() -> String {
    "v1".to_string()
}

impl Validate for Snapshot {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.name(&self.service, at.key("service"));
        if let Some(inbound) = &self.inbound {
            inbound.validate(&at.key("inbound"), v);
        }
        let mut names = HashSet::new();
        let mut hosts = HashSet::new();
        let mut vips = HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let here = at.key("destinations").index(i);
            if let Some(ip) = d.virtual_ip {
                if !vips.insert(ip) {
                    v.fail(
                        here.key("virtual_ip"),
                        format!("{ip} is another destination's virtual IP"),
                    );
                }
            }
            if !names.insert(d.name.as_str()) {
                v.fail(
                    here.key("name"),
                    format!("destination {:?} is defined twice", d.name),
                );
                continue;
            }
            for (j, h) in d.authorities().into_iter().enumerate() {
                if !hosts.insert(h.clone()) {
                    v.fail(
                        here.key("hosts").index(j),
                        format!("host {h:?} already selects another destination"),
                    );
                }
            }
        }
        for (i, d) in self.destinations.iter().enumerate() {
            d.validate(&at.key("destinations").index(i), v);
        }
    }
}

impl Validate for Inbound {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.name(&self.version, at.key("version"));
        if let Some(r) = &self.rate_limit {
            r.validate(&at.key("rate_limit"), v);
        }
        self.limits.validate(&at.key("limits"), v);
        v.positive_duration(self.timeout, Family::Timeout, || at.key("timeout"));
    }
}

impl Validate for Destination {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.name(&self.name, at.key("name"));
        virtual_service::validate(self.virtual_ip, &self.ports, at, v);
        for (j, h) in self.hosts.iter().enumerate() {
            let ok = h == "*"
                || (!h.is_empty()
                    && h.len() <= 253
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            v.ensure(
                ok,
                || at.key("hosts").index(j),
                "must be a host name (no port, no scheme) or \"*\"",
            );
        }
        v.positive_duration(self.connect_timeout, Family::Timeout, || {
            at.key("connect_timeout")
        });
        v.positive_duration(self.tls_handshake_timeout, Family::Timeout, || {
            at.key("tls_handshake_timeout")
        });
        for (j, e) in self.endpoints.iter().enumerate() {
            let here = at.key("endpoints").index(j);
            v.name(&e.version, here.key("version"));
            if e.address.port() == 0 {
                v.fail(here.key("address"), "port 0 is not a reachable endpoint");
            }
        }
        self.ewma.validate(&at.key("ewma"), v);
        self.outlier_detection
            .validate(&at.key("outlier_detection"), v);
        self.limits.validate(&at.key("limits"), v);
        self.retry_budget.validate(&at.key("retry_budget"), v);
        validate_split(&self.split, &self.sticky_header, at, v);
        let mut routes = HashSet::new();
        for (j, r) in self.routes.iter().enumerate() {
            let here = at.key("routes").index(j);
            if !routes.insert(r.name.as_str()) {
                v.fail(
                    here.key("name"),
                    format!("route {:?} is defined twice", r.name),
                );
            }
            r.validate(&here, v);
        }
    }
}

impl Validate for Route {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.name(&self.name, at.key("name"));
        self.validate_rule(at, v);
    }
}

impl Route {
    /// Everything but the name (a mesh Route resource carries its name in `metadata`).
    pub fn validate_rule(&self, at: &FieldPath, v: &mut Validator) {
        v.positive_duration(self.timeout, Family::Timeout, || at.key("timeout"));
        self.matches.validate(&at.key("match"), v);
        if let Some(t) = self.per_try_timeout {
            v.positive_duration(t, Family::Timeout, || at.key("per_try_timeout"));
            // Legal, but the route's deadline ends every attempt first, so no attempt is
            // ever cut short and retried: the setting does nothing.
            if t > self.timeout {
                v.warn(
                    at.key("per_try_timeout"),
                    format!(
                        "{} is longer than the route's timeout ({}), which ends every attempt first: it never takes effect",
                        display(t),
                        display(self.timeout)
                    ),
                );
            }
        }
        self.retries.validate(&at.key("retries"), v);
        if let Some(f) = &self.fault {
            f.validate(&at.key("fault"), v);
        }
        if let Some(r) = &self.rate_limit {
            r.validate(&at.key("rate_limit"), v);
        }
        validate_split(&self.split, &self.sticky_header, at, v);
    }
}

/// A split names each version once and has some weight; a sticky header is a header name.
pub fn validate_split(
    split: &[WeightedVersion],
    sticky: &Option<String>,
    at: &FieldPath,
    v: &mut Validator,
) {
    let mut seen = HashSet::new();
    for (i, w) in split.iter().enumerate() {
        v.name(&w.version, at.key("split").index(i).key("version"));
        if !seen.insert(w.version.as_str()) {
            v.fail(
                at.key("split").index(i).key("version"),
                format!("version {:?} appears twice", w.version),
            );
        }
    }
    if !split.is_empty() && split.iter().all(|w| w.weight == 0) {
        v.fail(
            at.key("split"),
            "at least one weight must be greater than zero",
        );
    }
    if let Some(h) = sticky {
        let ok = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        v.ensure(
            ok,
            || at.key("sticky_header"),
            "must be a lower-case header name",
        );
    }
}

impl Validate for RouteMatch {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        for (key, p) in [
            ("path_prefix", &self.path_prefix),
            ("path_exact", &self.path_exact),
        ] {
            if let Some(p) = p {
                v.ensure(p.starts_with('/'), || at.key(key), "must start with '/'");
            }
        }
        for (j, method) in self.methods.iter().enumerate() {
            let ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            v.ensure(
                ok,
                || at.key("methods").index(j),
                "must be an upper-case HTTP method such as GET",
            );
        }
        for (j, h) in self.headers.iter().enumerate() {
            let ok = !h.name.is_empty()
                && h.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            v.ensure(
                ok,
                || at.key("headers").index(j).key("name"),
                "must be a lower-case header name",
            );
        }
    }
}
