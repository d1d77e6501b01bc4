//! Mesh resources: what operators write and apply to the control plane, one YAML document per
//! resource (`kind`, `metadata.name`, `spec`). The control plane compiles them, with the
//! registry's endpoints, into one [`crate::Snapshot`] per sidecar.

use crate::error::{ConfigError, FieldError};
use crate::load::{check, from_yaml_doc};
use crate::path::FieldPath;
use crate::snapshot::{Protocol, RouteMatch};
use crate::validate::{Validate, Validator};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    Route,
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
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::Route(_) => Kind::Route,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::Service(d) => &d.metadata.name,
            Resource::Route(d) => &d.metadata.name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document<S> {
    pub metadata: Metadata,
    pub spec: S,
}

/// A service of the mesh: how its instances speak and which names reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub protocol: Protocol,
    /// Extra authorities besides the service name.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// One route to a service, tried in `priority` order (lowest first, then by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub service: String,
    #[serde(default)]
    pub priority: u32,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    #[serde(default, with = "crate::duration::option")]
    pub timeout: Option<Duration>,
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
    let count = serde_yaml_ng::Deserializer::from_str(text).count();
    let mut out = Vec::with_capacity(count);
    let mut errors = Vec::new();
    for doc in 0..count {
        match parse_one(text, doc) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => errors.extend(e.errors),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError { errors })
    }
}

fn parse_one(text: &str, doc: usize) -> Result<Option<Resource>, ConfigError> {
    // An empty document (a trailing `---`) is not a resource.
    let raw: serde_yaml_ng::Value = from_yaml_doc(text, doc, Some(doc))?;
    if raw.is_null() {
        return Ok(None);
    }
    let env: Envelope = from_yaml_doc(text, doc, Some(doc))?;
    let r = match env.kind {
        Kind::Service => {
            let t: Typed<ServiceSpec> = from_yaml_doc(text, doc, Some(doc))?;
            Resource::Service(Document {
                metadata: t.metadata,
                spec: t.spec,
            })
        }
        Kind::Route => {
            let t: Typed<RouteSpec> = from_yaml_doc(text, doc, Some(doc))?;
            Resource::Route(Document {
                metadata: t.metadata,
                spec: t.spec,
            })
        }
    };
    check(&r, text, doc, Some(doc))?;
    Ok(Some(r))
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
            }
            Resource::Route(d) => {
                v.name(&d.spec.service, spec.key("service"));
                if let Some(t) = d.spec.timeout {
                    v.ensure(
                        !t.is_zero(),
                        || spec.key("timeout"),
                        "must be greater than zero",
                    );
                }
                d.spec.matches.validate(&spec.key("match"), v);
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
