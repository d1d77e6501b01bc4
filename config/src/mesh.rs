//! Mesh resources: what operators write and apply to the control plane, one YAML document per
//! resource (`kind`, `metadata.name`, `spec`). The control plane compiles them, with the
//! registry's endpoints, into one [`crate::Snapshot`] per sidecar.

use crate::duration::Family;
use crate::error::{ConfigError, FieldError};
use crate::load::{check, from_yaml_doc};
use crate::path::FieldPath;
use crate::resilience::{
    Ewma, Fault, Limits, LoadBalancer, OutlierDetection, RateLimit, RetryBudget, RetryPolicy,
};
use crate::snapshot::{validate_split, Protocol, Route, RouteMatch, WeightedVersion};
use crate::validate::{Validate, Validator};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    Route,
    Policy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Route => "Route",
            Kind::Policy => "Policy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    Service(Document<ServiceSpec>),
    Route(Document<RouteSpec>),
    Policy(Document<PolicySpec>),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::Route(_) => Kind::Route,
            Resource::Policy(_) => Kind::Policy,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::Service(d) => &d.metadata.name,
            Resource::Route(d) => &d.metadata.name,
            Resource::Policy(d) => &d.metadata.name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document<S> {
    pub metadata: Metadata,
    pub spec: S,
}

/// A service of the mesh: how its instances speak, which names reach it, which services it
/// calls (its sidecars get only those), and its canary split.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub protocol: Protocol,
    /// Extra authorities besides the service name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Services this one may call: the destinations its sidecars receive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<String>,
    /// Weighted split across versions for routes without their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
}

/// One route to a service, tried in `priority` order (lowest first, then by name). The
/// fields after `match` mean what they mean in the snapshot's routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub service: String,
    #[serde(default)]
    pub priority: u32,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
}

impl RouteSpec {
    /// The snapshot route this resource becomes.
    pub fn to_route(&self, name: &str) -> Route {
        let d = Route::catch_all();
        Route {
            name: name.to_string(),
            matches: self.matches.clone(),
            timeout: self.timeout.unwrap_or(d.timeout),
            per_try_timeout: self.per_try_timeout,
            retries: self.retries.clone().unwrap_or(d.retries),
            fault: self.fault.clone(),
            rate_limit: self.rate_limit.clone(),
            split: self.split.clone(),
            sticky_header: self.sticky_header.clone(),
        }
    }
}

/// How callers treat a service (balancing, ejection, limits, retry budget) and how its own
/// sidecars guard it (inbound timeout, rate limit, limits). Unset fields keep their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub service: String,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ewma: Option<Ewma>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundPolicy>,
    /// Services allowed to call this one (their mTLS identities); empty = any mesh caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPolicy {
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// Only the envelope, to learn a document's kind before parsing its spec precisely.
#[derive(Deserialize)]
struct Envelope {
    kind: Kind,
    #[allow(dead_code)]
    metadata: IgnoredAny,
    #[allow(dead_code)]
    spec: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Typed<S> {
    #[allow(dead_code)]
    kind: Kind,
    metadata: Metadata,
    spec: S,
}

/// Parses and validates a multi-document stream of resources (YAML, or a JSON object).
/// Errors name the document (0-based), field path, line, column and reason; nothing is
/// returned unless every document is valid.
pub fn parse_resources(text: &str) -> Result<Vec<Resource>, ConfigError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (doc, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // After a syntax error the stream cannot find the next document (and the parser's
        // iterator would go on yielding the error for ever): report it and stop.
        let syntax_ok = serde_yaml_ng::Value::deserialize(de).is_ok();
        match parse_one(text, doc) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => errors.extend(e.errors),
        }
        if !syntax_ok || doc >= MAX_DOCUMENTS {
            break;
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError { errors })
    }
}

/// More documents than any mesh needs; beyond it the rest is not read.
const MAX_DOCUMENTS: usize = 10_000;

fn parse_one(text: &str, doc: usize) -> Result<Option<Resource>, ConfigError> {
    // An empty document (a trailing `---`) is not a resource.
    let raw: serde_yaml_ng::Value = from_yaml_doc(text, doc, Some(doc))?;
    if raw.is_null() {
        return Ok(None);
    }
    let env: Envelope = from_yaml_doc(text, doc, Some(doc))?;
    let r = match env.kind {
        Kind::Service => Resource::Service(typed(text, doc)?),
        Kind::Route => Resource::Route(typed(text, doc)?),
        Kind::Policy => Resource::Policy(typed(text, doc)?),
    };
    check(&r, text, doc, Some(doc))?;
    Ok(Some(r))
}

fn typed<S: serde::de::DeserializeOwned>(
    text: &str,
    doc: usize,
) -> Result<Document<S>, ConfigError> {
    let t: Typed<S> = from_yaml_doc(text, doc, Some(doc))?;
    Ok(Document {
        metadata: t.metadata,
        spec: t.spec,
    })
}

impl Validate for Resource {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.name(self.name(), at.key("metadata").key("name"));
        let spec = at.key("spec");
        match self {
            Resource::Service(d) => {
                for (i, h) in d.spec.hosts.iter().enumerate() {
                    v.ensure(
                        !h.is_empty() && !h.contains(':'),
                        || spec.key("hosts").index(i),
                        "must be a host name without port",
                    );
                }
                for (i, c) in d.spec.calls.iter().enumerate() {
                    v.name(c, spec.key("calls").index(i));
                }
                validate_split(&d.spec.split, &d.spec.sticky_header, &spec, v);
            }
            Resource::Route(d) => {
                v.name(&d.spec.service, spec.key("service"));
                d.spec.to_route(&d.metadata.name).validate_rule(&spec, v);
            }
            Resource::Policy(d) => {
                let p = &d.spec;
                v.name(&p.service, spec.key("service"));
                for (i, a) in p.allow.iter().enumerate() {
                    v.name(a, spec.key("allow").index(i));
                }
                if let Some(t) = p.connect_timeout {
                    v.positive_duration(t, Family::Timeout, || spec.key("connect_timeout"));
                }
                if let Some(e) = &p.ewma {
                    e.validate(&spec.key("ewma"), v);
                }
                if let Some(o) = &p.outlier_detection {
                    o.validate(&spec.key("outlier_detection"), v);
                }
                if let Some(l) = &p.limits {
                    l.validate(&spec.key("limits"), v);
                }
                if let Some(b) = &p.retry_budget {
                    b.validate(&spec.key("retry_budget"), v);
                }
                if let Some(i) = &p.inbound {
                    let at = spec.key("inbound");
                    if let Some(t) = i.timeout {
                        v.positive_duration(t, Family::Timeout, || at.key("timeout"));
                    }
                    if let Some(r) = &i.rate_limit {
                        r.validate(&at.key("rate_limit"), v);
                    }
                    if let Some(l) = &i.limits {
                        l.validate(&at.key("limits"), v);
                    }
                }
            }
        }
    }
}

/// Builds a document error by hand (for cross-document checks done by the control plane).
pub fn document_error(text: &str, doc: usize, path: FieldPath, reason: String) -> FieldError {
    let (line, column) = crate::locate::locate(text, doc, &path.0).unwrap_or((1, 1));
    FieldError {
        document: Some(doc),
        path: path.to_string(),
        line,
        column,
        reason,
    }
}
