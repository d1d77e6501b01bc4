//! The set of mesh resources the control plane holds, by kind and name, and the questions
//! asked of it: what exists, what refers to what.

use outrigger_config::mesh::{Document, Kind, PolicySpec, Resource, RouteSpec, ServiceSpec};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub services: BTreeMap<String, Document<ServiceSpec>>,
    pub routes: BTreeMap<String, Document<RouteSpec>>,
    pub policies: BTreeMap<String, Document<PolicySpec>>,
}

impl Resources {
    pub fn from_list(list: impl IntoIterator<Item = Resource>) -> Self {
        let mut out = Self::default();
        for r in list {
            out.put(r);
        }
        out
    }

    pub fn put(&mut self, r: Resource) {
        match r {
            Resource::Service(d) => {
                self.services.insert(d.metadata.name.clone(), d);
            }
            Resource::Route(d) => {
                self.routes.insert(d.metadata.name.clone(), d);
            }
            Resource::Policy(d) => {
                self.policies.insert(d.metadata.name.clone(), d);
            }
        }
    }

    /// Removes a resource; false when there was none.
    pub fn remove(&mut self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Service => self.services.remove(name).is_some(),
            Kind::Route => self.routes.remove(name).is_some(),
            Kind::Policy => self.policies.remove(name).is_some(),
        }
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<Resource> {
        match kind {
            Kind::Service => self.services.get(name).cloned().map(Resource::Service),
            Kind::Route => self.routes.get(name).cloned().map(Resource::Route),
            Kind::Policy => self.policies.get(name).cloned().map(Resource::Policy),
        }
    }

    /// Every resource of `kind`, by name.
    pub fn list(&self, kind: Kind) -> Vec<Resource> {
        match kind {
            Kind::Service => self
                .services
                .values()
                .cloned()
                .map(Resource::Service)
                .collect(),
            Kind::Route => self.routes.values().cloned().map(Resource::Route).collect(),
            Kind::Policy => self
                .policies
                .values()
                .cloned()
                .map(Resource::Policy)
                .collect(),
        }
    }

    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.services.len(),
            Kind::Route => self.routes.len(),
            Kind::Policy => self.policies.len(),
        }
    }

    /// The policy that applies to `service` (there is at most one).
    pub fn policy_for(&self, service: &str) -> Option<&Document<PolicySpec>> {
        self.policies.values().find(|p| p.spec.service == service)
    }

    /// The routes to `service`, in the order they are tried: by priority, then name.
    pub fn routes_for(&self, service: &str) -> Vec<&Document<RouteSpec>> {
        let mut routes: Vec<_> = self
            .routes
            .values()
            .filter(|r| r.spec.service == service)
            .collect();
        routes.sort_by(|a, b| {
            (a.spec.priority, &a.metadata.name).cmp(&(b.spec.priority, &b.metadata.name))
        });
        routes
    }

    /// What refers to the resource `kind`/`name`, as `Kind/name` strings; a referenced
    /// service cannot be deleted without leaving those dangling.
    pub fn referrers(&self, kind: Kind, name: &str) -> Vec<String> {
        if kind != Kind::Service {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (n, s) in &self.services {
            if n != name && s.spec.calls.iter().any(|c| c == name) {
                out.push(format!("Service/{n} (calls)"));
            }
        }
        for (n, r) in &self.routes {
            if r.spec.service == name {
                out.push(format!("Route/{n}"));
            }
        }
        for (n, p) in &self.policies {
            if p.spec.service == name {
                out.push(format!("Policy/{n}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::mesh::parse_resources;

    #[test]
    fn routes_are_ordered_by_priority_then_name_and_references_are_found(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let r = Resources::from_list(parse_resources(include_str!(
            "../../config/examples/shop.yaml"
        ))?);
        let names: Vec<_> = r
            .routes_for("payment")
            .iter()
            .map(|d| d.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["charge-canary-testers", "charge"]);
        assert_eq!(
            r.referrers(Kind::Service, "payment"),
            [
                "Service/order (calls)",
                "Route/charge",
                "Route/charge-canary-testers",
                "Policy/payment-callers"
            ]
        );
        assert!(r.referrers(Kind::Service, "storefront").is_empty());
        Ok(())
    }
}
