//! Mesh resources: what operators write and apply to the control plane, one YAML document per
//! resource (`kind`, `metadata.name`, `spec`). The control plane compiles them, with the
//! registry's endpoints, into one [`crate::Snapshot`] per sidecar.

use crate::documents::{Documents, Piece};
use crate::duration::Family;
use crate::error::{ConfigError, FieldError};
use crate::load::{check, from_piece, yaml_error};
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
    /// A virtual IP apps dial for this service, like a Kubernetes ClusterIP (with interception;
    /// the name resolves to it). Unique across services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_ip: Option<std::net::IpAddr>,
    /// The ports apps dial; `opaque: true` skips protocol detection (server-first protocols,
    /// databases) and is carried between sidecars as TCP over mTLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::snapshot::ServicePort>,
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
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_handshake_timeout: Option<Duration>,
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
    parse_stream(text).map(|s| s.resources)
}

/// The resources of a stream, with the document each came from and where the documents lie
/// (to place errors found later, such as those that span resources).
#[derive(Debug, Clone)]
pub struct Stream {
    pub resources: Vec<Resource>,
    /// For each resource, its document.
    pub origins: Vec<usize>,
    pub documents: Documents,
}

/// [`parse_resources`], keeping where each resource came from. Its cost grows with the size
/// of the text, not its square: each document is parsed from its own piece of it.
pub fn parse_stream(text: &str) -> Result<Stream, ConfigError> {
    let documents = Documents::split(text);
    if documents.len() > MAX_DOCUMENTS {
        let line = documents
            .spans
            .get(MAX_DOCUMENTS)
            .map_or(1, |s| s.lines_before + 1);
        return Err(ConfigError::single(too_many(documents.len(), (line, 1))));
    }
    let mut resources = Vec::new();
    let mut origins = Vec::new();
    let mut errors = Vec::new();
    let mut syntax_error = false;
    for doc in 0..documents.len() {
        let Some(piece) = documents.piece(text, doc) else {
            break;
        };
        match parse_one(piece) {
            Ok(Some(r)) => {
                resources.push(r);
                origins.push(doc);
            }
            Ok(None) => {}
            Err(Failed::Invalid(e)) => errors.extend(e.errors),
            // What follows a syntax error may be read out of step; one report is enough.
            Err(Failed::Syntax(e)) => {
                errors.push(e);
                syntax_error = true;
                break;
            }
        }
    }
    if let Some(u) = documents.unreadable.as_ref().filter(|_| !syntax_error) {
        // The scanner stopped where the parser did not: never accept a stream in which
        // documents might have gone unseen.
        errors.push(FieldError {
            document: Some(u.document),
            path: FieldPath::root().to_string(),
            line: u.line,
            column: u.column,
            reason: u.reason.clone(),
        });
    }
    if errors.is_empty() {
        Ok(Stream {
            resources,
            origins,
            documents,
        })
    } else {
        Err(ConfigError { errors })
    }
}

/// Resources one apply may hold: ten times the largest mesh the tests apply (10,000 services
/// in well under a second), and the bound on the work one request can ask of the control
/// plane. A larger change is applied in parts.
pub const MAX_DOCUMENTS: usize = 100_000;

/// The error for a stream or list of `count` resources, placed at the first one too many.
pub fn too_many(count: usize, (line, column): (usize, usize)) -> FieldError {
    FieldError {
        document: Some(MAX_DOCUMENTS),
        path: FieldPath::root().to_string(),
        line,
        column,
        reason: format!(
            "{count} documents: an apply holds at most {MAX_DOCUMENTS} (MAX_DOCUMENTS); \
             split it into several applies"
        ),
    }
}

enum Failed {
    /// The text is not YAML here.
    Syntax(FieldError),
    /// It is YAML but not a valid resource.
    Invalid(ConfigError),
}

fn parse_one(piece: Piece<'_>) -> Result<Option<Resource>, Failed> {
    let mut stream = serde_yaml_ng::Deserializer::from_str(piece.text);
    let raw = match stream.next() {
        Some(de) => serde_path_to_error::deserialize::<_, serde_yaml_ng::Value>(de)
            .map_err(|e| Failed::Syntax(yaml_error(piece, e)))?,
        None => serde_yaml_ng::Value::Null,
    };
    // The piece must hold this one document; a second means the splitter missed a boundary
    // the parser sees, and reading on would drop it.
    if let Some(de) = stream.next() {
        let reason = match serde_path_to_error::deserialize::<_, IgnoredAny>(de) {
            Err(e) => return Err(Failed::Syntax(yaml_error(piece, e))),
            Ok(_) => "a second document starts inside this one; put `---` on a line of its \
                      own between documents"
                .to_string(),
        };
        return Err(Failed::Syntax(piece.error(&FieldPath::root(), reason)));
    }
    // An empty document (a trailing `---`) is not a resource.
    if raw.is_null() {
        return Ok(None);
    }
    let env: Envelope = from_piece(piece).map_err(Failed::Invalid)?;
    let r = match env.kind {
        Kind::Service => Resource::Service(typed(piece).map_err(Failed::Invalid)?),
        Kind::Route => Resource::Route(typed(piece).map_err(Failed::Invalid)?),
        Kind::Policy => Resource::Policy(typed(piece).map_err(Failed::Invalid)?),
    };
    check(&r, piece).map_err(Failed::Invalid)?;
    Ok(Some(r))
}

fn typed<S: serde::de::DeserializeOwned>(piece: Piece<'_>) -> Result<Document<S>, ConfigError> {
    let t: Typed<S> = from_piece(piece)?;
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
                crate::snapshot::virtual_service::validate(
                    d.spec.virtual_ip,
                    &d.spec.ports,
                    &spec,
                    v,
                );
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
                if let Some(t) = p.tls_handshake_timeout {
                    v.positive_duration(t, Family::Timeout, || spec.key("tls_handshake_timeout"));
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

/// Builds a document error by hand (for cross-document checks done by the control plane):
/// `documents` is what `text` was split into, so placing it reads only its own document.
pub fn document_error(
    text: &str,
    documents: &Documents,
    doc: usize,
    path: FieldPath,
    reason: String,
) -> FieldError {
    match documents.piece(text, doc) {
        Some(piece) => piece.error(&path, reason),
        None => FieldError {
            document: Some(doc),
            path: path.to_string(),
            line: 1,
            column: 1,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(n: usize) -> String {
        (0..n)
            .map(|i| format!("kind: Service\nmetadata: {{name: s{i}}}\nspec: {{}}\n---\n"))
            .collect()
    }

    #[test]
    fn a_stream_over_the_limit_is_refused_naming_it_not_cut_short() {
        let one = "kind: Service\nmetadata: {name: s}\nspec: {}\n";
        let text = one.to_string() + &"---\n".repeat(MAX_DOCUMENTS);
        let e = parse_resources(&text).expect_err("over the limit");
        assert_eq!(e.errors.len(), 1, "{e}");
        let err = &e.errors[0];
        assert_eq!(err.document, Some(MAX_DOCUMENTS));
        assert_eq!((err.line, err.column), (MAX_DOCUMENTS + 3, 1));
        assert!(
            err.reason
                .starts_with(&format!("{} documents", MAX_DOCUMENTS + 1))
                && err
                    .reason
                    .contains(&format!("at most {MAX_DOCUMENTS} (MAX_DOCUMENTS)")),
            "{err}"
        );
        // At the limit, every document is read.
        let text = one.to_string() + &"---\n".repeat(MAX_DOCUMENTS - 1);
        let got = parse_stream(&text).expect("at the limit");
        assert_eq!(got.documents.len(), MAX_DOCUMENTS);
        assert_eq!(got.resources.len(), 1);
        assert_eq!(got.origins, [0]);
    }

    #[test]
    fn every_document_of_a_long_stream_is_read_and_errors_keep_their_place() {
        let n = 10_002;
        let text = services(n);
        let got = parse_stream(&text).expect("valid");
        assert_eq!(got.resources.len(), n);
        assert_eq!(got.resources.last().map(Resource::name), Some("s10001"));
        let bad = text.clone() + "kind: Service\nmetadata: {name: x}\nspec: {protocol: http9}\n";
        let e = parse_resources(&bad).expect_err("the last one is invalid");
        assert_eq!(e.errors.len(), 1, "{e}");
        let err = &e.errors[0];
        assert_eq!(err.document, Some(n));
        assert_eq!(err.path, "spec.protocol");
        assert_eq!((err.line, err.column), (4 * n + 3, 18));
    }
}
