//! Checking an apply: parsing the body (multi-document YAML, or a JSON object or array of
//! resources) with errors that point into the text the operator sent, the checks that span
//! resources (references, one policy per service, unique hosts), and what each resource's
//! apply will do.

use crate::resources::Resources;
use outrigger_config::documents::Documents;
use outrigger_config::error::FieldError;
use outrigger_config::locate::locate;
use outrigger_config::mesh::{
    document_error, parse_resources, parse_stream, too_many, Kind, Resource, MAX_DOCUMENTS,
};
use outrigger_config::path::{FieldPath, Segment};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A parsed apply body: its resources and where each came from, to place later errors.
#[derive(Debug, Clone)]
pub struct Parsed {
    text: String,
    /// Where each document of `text` lies, so placing an error reads only its document.
    documents: Documents,
    shape: Shape,
    pub resources: Vec<Resource>,
    /// For each resource, the document (or array element) it came from.
    origins: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A stream of YAML documents (a JSON object is one of those).
    Documents,
    /// One document holding a sequence of resources (a JSON array).
    Sequence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
}

/// Parses and validates each resource on its own; errors name document, path, line, column.
pub fn parse(text: &str) -> Result<Parsed, Vec<FieldError>> {
    let docs = scan(text)?;
    if let [serde_yaml_ng::Value::Sequence(items)] = docs.as_slice() {
        return parse_sequence(text, items.clone());
    }
    let stream = parse_stream(text).map_err(|e| e.errors)?;
    Ok(Parsed {
        text: text.to_string(),
        documents: stream.documents,
        shape: Shape::Documents,
        origins: stream.origins,
        resources: stream.resources,
    })
}

/// Reads every document as plain YAML, stopping at the first syntax error. After a syntax
/// error serde_yaml_ng's document iterator never ends, so nothing may iterate the documents
/// of a text (as `parse_resources` does) before this has passed.
fn scan(text: &str) -> Result<Vec<serde_yaml_ng::Value>, Vec<FieldError>> {
    let mut docs = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match <serde_yaml_ng::Value as serde::Deserialize>::deserialize(d) {
            Ok(v) => docs.push(v),
            Err(e) => {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                let msg = e.to_string();
                let reason = msg
                    .rfind(" at line ")
                    .map_or(msg.as_str(), |cut| &msg[..cut])
                    .to_string();
                return Err(vec![FieldError {
                    document: Some(i),
                    path: FieldPath::root().to_string(),
                    line,
                    column,
                    reason,
                }]);
            }
        }
    }
    Ok(docs)
}

/// Each item is parsed on its own; errors are placed back into the original text by path.
fn parse_sequence(text: &str, items: Vec<serde_yaml_ng::Value>) -> Result<Parsed, Vec<FieldError>> {
    if items.len() > MAX_DOCUMENTS {
        let (line, column) = locate(text, 0, &[Segment::Index(MAX_DOCUMENTS)]).unwrap_or((1, 1));
        return Err(vec![too_many(items.len(), (line, column))]);
    }
    let mut resources = Vec::new();
    let mut origins = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if item.is_null() {
            continue;
        }
        let item_text = match serde_yaml_ng::to_string(&item) {
            Ok(t) => t,
            Err(e) => {
                errors.push(sequence_error(text, i, FieldPath::root(), e.to_string()));
                continue;
            }
        };
        match parse_resources(&item_text) {
            Ok(rs) => {
                for r in rs {
                    resources.push(r);
                    origins.push(i);
                }
            }
            Err(e) => errors.extend(e.errors.into_iter().map(|fe| {
                let path = if fe.path == FieldPath::root().to_string() {
                    FieldPath::root()
                } else {
                    FieldPath::parse(&fe.path)
                };
                sequence_error(text, i, path, fe.reason)
            })),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Parsed {
        text: text.to_string(),
        documents: Documents::default(),
        shape: Shape::Sequence,
        resources,
        origins,
    })
}

fn sequence_error(text: &str, item: usize, path: FieldPath, reason: String) -> FieldError {
    let mut full = vec![Segment::Index(item)];
    full.extend(path.0.iter().cloned());
    let (line, column) = locate(text, 0, &full).unwrap_or((1, 1));
    FieldError {
        document: Some(item),
        path: path.to_string(),
        line,
        column,
        reason,
    }
}

impl Parsed {
    /// An error about resource `index` at `path`, placed in the text the operator sent.
    fn error(&self, index: usize, path: FieldPath, reason: String) -> FieldError {
        let origin = self.origins.get(index).copied().unwrap_or(index);
        match self.shape {
            Shape::Documents => document_error(&self.text, &self.documents, origin, path, reason),
            Shape::Sequence => sequence_error(&self.text, origin, path, reason),
        }
    }

    /// The checks that need more than one resource, against what is stored plus this apply.
    /// What is valid but probably not meant (a per-try timeout longer than the whole
    /// request's), placed like errors; they do not stop the apply.
    pub fn warnings(&self) -> Vec<FieldError> {
        self.resources
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                outrigger_config::validate::warnings(r)
                    .into_iter()
                    .map(move |(path, reason)| self.error(i, path, reason))
            })
            .collect()
    }

    pub fn check(&self, current: &Resources) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let spec = FieldPath::root().key("spec");
        let mut seen: HashMap<(Kind, &str), usize> = HashMap::new();
        for (i, r) in self.resources.iter().enumerate() {
            if let Some(first) = seen.insert((r.kind(), r.name()), i) {
                errors.push(self.error(
                    i,
                    FieldPath::root().key("metadata").key("name"),
                    format!(
                        "{}/{} is also defined by document {}",
                        r.kind().as_str(),
                        r.name(),
                        self.origins.get(first).copied().unwrap_or(first)
                    ),
                ));
            }
        }
        let mut next = current.clone();
        for r in &self.resources {
            next.put(r.clone());
        }
        // Looked up once, not per resource: an apply of thousands stays linear.
        let mut policy_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for p in next.policies.values() {
            policy_of
                .entry(p.spec.service.as_str())
                .or_default()
                .push(p.metadata.name.as_str());
        }
        for (i, r) in self.resources.iter().enumerate() {
            match r {
                Resource::Service(d) => {
                    for (j, callee) in d.spec.calls.iter().enumerate() {
                        if !next.services.contains_key(callee) {
                            errors.push(self.error(
                                i,
                                spec.key("calls").index(j),
                                format!("service {callee:?} does not exist"),
                            ));
                        }
                    }
                }
                Resource::Route(d) => {
                    if !next.services.contains_key(&d.spec.service) {
                        errors.push(self.error(
                            i,
                            spec.key("service"),
                            format!("service {:?} does not exist", d.spec.service),
                        ));
                    }
                }
                Resource::Policy(d) => {
                    if !next.services.contains_key(&d.spec.service) {
                        errors.push(self.error(
                            i,
                            spec.key("service"),
                            format!("service {:?} does not exist", d.spec.service),
                        ));
                    }
                    let other = policy_of
                        .get(d.spec.service.as_str())
                        .and_then(|names| names.iter().find(|n| **n != d.metadata.name));
                    if let Some(other) = other {
                        errors.push(self.error(
                            i,
                            spec.key("service"),
                            format!(
                                "service {:?} already has policy {:?}; a service has at most one",
                                d.spec.service, other
                            ),
                        ));
                    }
                }
            }
        }
        errors.extend(self.host_conflicts(&next));
        errors.extend(self.virtual_ip_conflicts(&next));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// A name or host selects one service only, or a caller's snapshot could not tell them
    /// apart. Reported on the services of this apply.
    fn host_conflicts(&self, next: &Resources) -> Vec<FieldError> {
        let mut owner: BTreeMap<String, &str> = BTreeMap::new();
        for name in next.services.keys() {
            owner.insert(name.to_ascii_lowercase(), name);
        }
        // Services by each host they claim, in name order (the first other one is named).
        let mut claims: HashMap<String, Vec<&str>> = HashMap::new();
        for (n, s) in &next.services {
            for x in &s.spec.hosts {
                claims.entry(x.to_ascii_lowercase()).or_default().push(n);
            }
        }
        let mut errors = Vec::new();
        for (i, r) in self.resources.iter().enumerate() {
            let Resource::Service(d) = r else { continue };
            for (j, h) in d.spec.hosts.iter().enumerate() {
                let h = h.to_ascii_lowercase();
                let clash = owner
                    .get(&h)
                    .copied()
                    .filter(|o| *o != d.metadata.name)
                    .or_else(|| {
                        claims
                            .get(&h)
                            .and_then(|ns| ns.iter().copied().find(|n| *n != d.metadata.name))
                    });
                if let Some(other) = clash {
                    errors.push(self.error(
                        i,
                        FieldPath::root().key("spec").key("hosts").index(j),
                        format!("host {h:?} already selects service {other:?}"),
                    ));
                }
            }
        }
        errors
    }

    /// A virtual IP names one service only: an intercepted connection to it must have one
    /// destination.
    fn virtual_ip_conflicts(&self, next: &Resources) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, r) in self.resources.iter().enumerate() {
            let Resource::Service(d) = r else { continue };
            let Some(ip) = d.spec.virtual_ip else {
                continue;
            };
            let other = next
                .services
                .iter()
                .find(|(n, s)| **n != d.metadata.name && s.spec.virtual_ip == Some(ip));
            if let Some((other, _)) = other {
                errors.push(self.error(
                    i,
                    FieldPath::root().key("spec").key("virtual_ip"),
                    format!("{ip} is already the virtual IP of service {other:?}"),
                ));
            }
        }
        errors
    }

    /// What applying each resource does to `current`.
    pub fn plan(&self, current: &Resources) -> Vec<Applied> {
        self.resources
            .iter()
            .map(|r| Applied {
                kind: r.kind(),
                name: r.name().to_string(),
                action: match current.get(r.kind(), r.name()) {
                    None => Action::Created,
                    Some(old) if &old == r => Action::Unchanged,
                    Some(_) => Action::Updated,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = include_str!("../../config/examples/shop.yaml");

    #[test]
    fn the_shop_applies_cleanly_and_plans_creates_then_unchanged(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let p = parse(SHOP).map_err(|e| format!("{e:?}"))?;
        p.check(&Resources::default())
            .map_err(|e| format!("{e:?}"))?;
        assert!(p
            .plan(&Resources::default())
            .iter()
            .all(|a| a.action == Action::Created));
        let stored = Resources::from_list(p.resources.clone());
        assert!(p
            .plan(&stored)
            .iter()
            .all(|a| a.action == Action::Unchanged));
        Ok(())
    }

    #[test]
    fn references_are_checked_against_stored_and_applied_services(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let text = "kind: Service\nmetadata: {name: a}\nspec: {calls: [b, c]}\n---\n\n---\nkind: Service\nmetadata: {name: b}\nspec: {}\n---\nkind: Route\nmetadata: {name: r}\nspec:\n  service: zz\n";
        let p = parse(text).map_err(|e| format!("{e:?}"))?;
        let errors = p.check(&Resources::default()).err().ok_or("accepted")?;
        let got: Vec<_> = errors
            .iter()
            .map(|e| (e.document, e.path.as_str(), e.line, e.column))
            .collect();
        assert_eq!(
            got,
            [
                (Some(0), "spec.calls[1]", 3, 19),
                (Some(3), "spec.service", 14, 12)
            ]
        );
        // With c stored, only the route is wrong.
        let stored = Resources::from_list(
            parse("kind: Service\nmetadata: {name: c}\nspec: {}\n")
                .map_err(|e| format!("{e:?}"))?
                .resources,
        );
        assert_eq!(p.check(&stored).err().map(|e| e.len()), Some(1));
        Ok(())
    }

    #[test]
    fn a_virtual_ip_names_one_service() -> Result<(), Box<dyn std::error::Error>> {
        let mut stored = Resources::from_list(parse(SHOP).map_err(|e| format!("{e:?}"))?.resources);
        let redis = parse("kind: Service\nmetadata: {name: redis}\nspec: {virtual_ip: 10.96.0.20, ports: [{port: 6379, opaque: true}]}\n")
            .map_err(|e| format!("{e:?}"))?;
        assert!(redis.check(&stored).is_ok());
        stored = Resources::from_list(
            parse(&format!("{SHOP}\n---\nkind: Service\nmetadata: {{name: redis}}\nspec: {{virtual_ip: 10.96.0.20}}\n"))
                .map_err(|e| format!("{e:?}"))?
                .resources,
        );
        let clash =
            parse("kind: Service\nmetadata: {name: cache}\nspec: {virtual_ip: 10.96.0.20}\n")
                .map_err(|e| format!("{e:?}"))?;
        let errors = clash.check(&stored).err().ok_or("accepted")?;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "spec.virtual_ip");
        assert!(
            errors[0].reason.contains("\"redis\""),
            "{}",
            errors[0].reason
        );
        // The service itself re-applied keeps its address.
        assert!(redis.check(&stored).is_ok());
        Ok(())
    }

    #[test]
    fn one_policy_per_service_and_hosts_are_unique() -> Result<(), Box<dyn std::error::Error>> {
        let stored = Resources::from_list(parse(SHOP).map_err(|e| format!("{e:?}"))?.resources);
        let text = "kind: Policy\nmetadata: {name: second}\nspec: {service: payment}\n---\nkind: Service\nmetadata: {name: fake}\nspec: {hosts: [Payment.shop.svc.cluster.local, catalog]}\n";
        let p = parse(text).map_err(|e| format!("{e:?}"))?;
        let errors = p.check(&stored).err().ok_or("accepted")?;
        let got: Vec<_> = errors
            .iter()
            .map(|e| (e.document, e.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Some(0), "spec.service"),
                (Some(1), "spec.hosts[0]"),
                (Some(1), "spec.hosts[1]")
            ],
            "{errors:?}"
        );
        // Re-applying the same policy under its own name is fine.
        let same =
            parse("kind: Policy\nmetadata: {name: payment-callers}\nspec: {service: payment}\n")
                .map_err(|e| format!("{e:?}"))?;
        assert!(same.check(&stored).is_ok());
        Ok(())
    }

    #[test]
    fn json_arrays_report_the_element_and_its_place() -> Result<(), Box<dyn std::error::Error>> {
        let text = "[\n  {\"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}, \"spec\": {}},\n  {\"kind\": \"Service\", \"metadata\": {\"name\": \"b\"}, \"spec\": {\"protocol\": \"http9\"}}\n]";
        let errors = parse(text).err().ok_or("accepted")?;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, Some(1));
        assert_eq!(errors[0].path, "spec.protocol");
        assert_eq!((errors[0].line, errors[0].column), (3, 71));

        let ok = "[{\"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}, \"spec\": {}}, {\"kind\": \"Route\", \"metadata\": {\"name\": \"r\"}, \"spec\": {\"service\": \"nope\"}}]";
        let p = parse(ok).map_err(|e| format!("{e:?}"))?;
        assert_eq!(p.resources.len(), 2);
        let errors = p.check(&Resources::default()).err().ok_or("accepted")?;
        assert_eq!(errors[0].document, Some(1));
        assert_eq!(errors[0].path, "spec.service");
        assert_eq!(errors[0].line, 1);
        Ok(())
    }

    #[test]
    fn syntax_errors_have_a_place_too() {
        let errors = parse("kind: Service\nmetadata: {name: a\n")
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].line >= 2, "{errors:?}");
        let errors = parse("{\"kind\": \"Service\",").err().unwrap_or_default();
        assert_eq!(errors.len(), 1);
        let errors = parse("kind: Service\nmetadata: {name: a}\nspec: {}\n---\n: : [\n")
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, Some(1));
    }
}
