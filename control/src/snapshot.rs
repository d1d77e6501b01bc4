//! Compiling one sidecar's [`Snapshot`] from the mesh resources, the live registry and the
//! CA's trust settings: a pure function, so what a sidecar gets depends only on what is stored
//! and registered.

use crate::registry::Instance;
use crate::resources::Resources;
use outrigger_config::mesh::{Document, PolicySpec, ServiceSpec};
use outrigger_config::{identity, Destination, Endpoint, Inbound, Mtls, MtlsMode, Route, Snapshot};

/// The snapshot for the sidecars of `service` at `revision`. Only the services it calls
/// become destinations, so a sidecar's config grows with its own calls, not with the mesh.
/// With mTLS on, each destination names the identity its endpoints must prove, and the
/// inbound side lists the identities its Policy allows to call.
pub fn compile(
    service: &str,
    revision: u64,
    resources: &Resources,
    instances: &[Instance],
    mtls: &Mtls,
) -> Snapshot {
    let spec = resources.services.get(service).map(|d| &d.spec);
    let destinations = spec
        .map(|s| {
            let mut seen = Vec::new();
            s.calls
                .iter()
                .filter(|c| {
                    // A name listed twice would make the snapshot invalid; keep the first.
                    let new = !seen.contains(c);
                    seen.push(*c);
                    new
                })
                .filter_map(|callee| resources.services.get(callee.as_str()))
                .map(|d| destination(d, resources, instances, mtls))
                .collect()
        })
        .unwrap_or_default();
    Snapshot {
        version: revision,
        service: service.to_string(),
        inbound: Some(inbound(
            spec,
            resources.policy_for(service).map(|p| &p.spec),
            &mtls.trust_domain,
        )),
        destinations,
        mtls: mtls.clone(),
    }
}

fn inbound(spec: Option<&ServiceSpec>, policy: Option<&PolicySpec>, trust_domain: &str) -> Inbound {
    let inbound = policy.and_then(|p| p.inbound.as_ref());
    Inbound {
        // The sidecar knows its app's address and its own version; it fills both in.
        app: None,
        protocol: spec.map(|s| s.protocol).unwrap_or_default(),
        version: "v1".to_string(),
        // The contract's default request deadline, which inbound shares with routes.
        timeout: inbound
            .and_then(|i| i.timeout)
            .unwrap_or_else(|| Route::catch_all().timeout),
        rate_limit: inbound.and_then(|i| i.rate_limit.clone()),
        limits: inbound.and_then(|i| i.limits.clone()).unwrap_or_default(),
        // Sent whatever the mode: the sidecar, not the control plane, decides what an
        // allow-list means when it cannot see identities.
        allow: policy
            .map(|p| p.allow.iter().map(|s| identity(trust_domain, s)).collect())
            .unwrap_or_default(),
    }
}

fn destination(
    d: &Document<ServiceSpec>,
    resources: &Resources,
    instances: &[Instance],
    mtls: &Mtls,
) -> Destination {
    let name = &d.metadata.name;
    let mut hosts = vec![name.clone()];
    hosts.extend(d.spec.hosts.iter().filter(|h| *h != name).cloned());
    let mut endpoints: Vec<Endpoint> = instances
        .iter()
        .filter(|i| &i.service == name)
        .map(|i| Endpoint {
            address: i.endpoint.into(),
            version: i.version.clone(),
            labels: i.labels.clone(),
        })
        .collect();
    endpoints.sort_by(|a, b| (&a.address, &a.version).cmp(&(&b.address, &b.version)));
    let routes = resources
        .routes_for(name)
        .into_iter()
        .map(|r| r.spec.to_route(&r.metadata.name))
        .collect();
    let mut out = Destination {
        hosts,
        protocol: d.spec.protocol,
        endpoints,
        routes,
        split: d.spec.split.clone(),
        sticky_header: d.spec.sticky_header.clone(),
        identity: (mtls.mode != MtlsMode::Off).then(|| identity(&mtls.trust_domain, name)),
        virtual_ip: d.spec.virtual_ip,
        ports: d.spec.ports.clone(),
        ..Destination::new(name)
    };
    if let Some(p) = resources.policy_for(name).map(|p| &p.spec) {
        if let Some(t) = p.connect_timeout {
            out.connect_timeout = t;
        }
        if let Some(t) = p.tls_handshake_timeout {
            out.tls_handshake_timeout = t;
        }
        if let Some(lb) = p.load_balancer {
            out.load_balancer = lb;
        }
        if let Some(e) = &p.ewma {
            out.ewma = e.clone();
        }
        if let Some(o) = &p.outlier_detection {
            out.outlier_detection = o.clone();
        }
        if let Some(l) = &p.limits {
            out.limits = l.clone();
        }
        if let Some(b) = &p.retry_budget {
            out.retry_budget = b.clone();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registration, Registry};
    use outrigger_config::mesh::parse_resources;
    use outrigger_config::path::FieldPath;
    use outrigger_config::{Protocol, Validate, Validator};
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tokio::time::Instant;

    const SHOP: &str = include_str!("../../config/examples/shop.yaml");

    fn shop() -> Result<Resources, outrigger_config::ConfigError> {
        Ok(Resources::from_list(parse_resources(SHOP)?))
    }

    fn instances(list: &[(&str, &str, u16)]) -> Result<Vec<Instance>, Box<dyn std::error::Error>> {
        let mut r = Registry::default();
        for (service, version, port) in list {
            r.register(
                Registration {
                    service: service.to_string(),
                    version: version.to_string(),
                    address: [127, 0, 0, 1].into(),
                    ports: BTreeMap::from([("inbound".to_string(), *port)]),
                    labels: BTreeMap::new(),
                    ttl_secs: None,
                },
                Instant::now(),
            )?;
        }
        Ok(r.instances())
    }

    fn valid(s: &Snapshot) -> Vec<(FieldPath, String)> {
        let mut v = Validator::default();
        s.validate(&FieldPath::root(), &mut v);
        v.problems
    }

    #[test]
    fn every_shop_snapshot_is_valid() -> Result<(), Box<dyn std::error::Error>> {
        let res = shop()?;
        let inst = instances(&[
            ("payment", "v1", 15106),
            ("payment", "v2", 15107),
            ("catalog", "v1", 15102),
            ("inventory", "v1", 15103),
            ("user", "v1", 15101),
            ("order", "v1", 15104),
        ])?;
        for name in res.services.keys().map(String::as_str).chain(["unknown"]) {
            let s = compile(name, 42, &res, &inst, &Mtls::default());
            assert_eq!(s.version, 42);
            assert_eq!(s.service, name);
            assert!(valid(&s).is_empty(), "{name}: {:?}", valid(&s));
        }
        Ok(())
    }

    #[test]
    fn a_sidecar_gets_only_the_services_it_calls() -> Result<(), Box<dyn std::error::Error>> {
        let res = shop()?;
        let inst = instances(&[("payment", "v1", 15106), ("user", "v1", 15101)])?;
        let names = |s: &Snapshot| {
            s.destinations
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&compile("order", 1, &res, &inst, &Mtls::default())),
            ["catalog", "inventory", "payment"]
        );
        assert_eq!(
            names(&compile("storefront", 1, &res, &inst, &Mtls::default())),
            ["user", "catalog", "order"]
        );
        assert!(compile("payment", 1, &res, &inst, &Mtls::default())
            .destinations
            .is_empty());
        let unknown = compile("nobody", 1, &res, &inst, &Mtls::default());
        assert!(unknown.destinations.is_empty());
        assert!(
            unknown.inbound.is_some(),
            "unknown services still get an inbound"
        );
        Ok(())
    }

    #[test]
    fn destinations_carry_hosts_endpoints_routes_split_and_policy(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let res = shop()?;
        let inst = instances(&[
            ("payment", "v2", 15107),
            ("payment", "v1", 15106),
            ("catalog", "v1", 15102),
        ])?;
        let s = compile("order", 1, &res, &inst, &Mtls::default());
        let pay = s
            .destinations
            .iter()
            .find(|d| d.name == "payment")
            .ok_or("no payment destination")?;
        assert_eq!(pay.hosts, ["payment", "payment.shop.svc.cluster.local"]);
        assert_eq!(pay.protocol, Protocol::Http1);
        let eps: Vec<_> = pay
            .endpoints
            .iter()
            .map(|e| (e.address.port(), e.version.as_str()))
            .collect();
        assert_eq!(eps, [(15106, "v1"), (15107, "v2")], "sorted by address");
        let routes: Vec<_> = pay.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(routes, ["charge-canary-testers", "charge"]);
        assert_eq!(pay.routes[1].timeout, Duration::from_secs(3));
        assert_eq!(pay.split.len(), 2);
        assert_eq!(pay.sticky_header.as_deref(), Some("x-user-id"));
        assert_eq!(pay.outlier_detection.base_ejection, Duration::from_secs(10));
        assert_eq!(pay.limits.max_requests, 1000);
        let inv = s
            .destinations
            .iter()
            .find(|d| d.name == "inventory")
            .ok_or("no inventory destination")?;
        assert!(inv.endpoints.is_empty());
        assert_eq!(inv.connect_timeout, Destination::new("x").connect_timeout);
        assert_eq!(
            inv.tls_handshake_timeout,
            Destination::new("x").tls_handshake_timeout
        );

        // order's own Policy shapes its inbound side.
        let inbound = s.inbound.ok_or("no inbound")?;
        assert_eq!(inbound.timeout, Duration::from_secs(10));
        assert_eq!(inbound.limits.max_requests, 1000);
        assert_eq!(inbound.app, None);
        Ok(())
    }

    #[test]
    fn a_policy_sets_its_callers_connect_and_handshake_deadlines(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut res = shop()?;
        for r in parse_resources(
            "kind: Policy\nmetadata: {name: inventory-callers}\nspec: {service: inventory, allow: [order], connect_timeout: 250ms, tls_handshake_timeout: 700ms}\n",
        )? {
            res.put(r);
        }
        let s = compile("order", 1, &res, &[], &Mtls::default());
        let inv = s
            .destinations
            .iter()
            .find(|d| d.name == "inventory")
            .ok_or("no inventory destination")?;
        assert_eq!(inv.connect_timeout, Duration::from_millis(250));
        assert_eq!(inv.tls_handshake_timeout, Duration::from_millis(700));
        Ok(())
    }

    #[test]
    fn mtls_settings_destination_identities_and_the_inbound_allow_list(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut res = shop()?;
        // Whatever the example says: payment allows two callers, order anyone.
        for r in parse_resources(
            "kind: Policy\nmetadata: {name: payment-callers}\nspec: {service: payment, allow: [order, storefront]}\n---\nkind: Policy\nmetadata: {name: order-inbound}\nspec: {service: order}\n",
        )? {
            res.put(r);
        }
        let mtls = Mtls {
            mode: MtlsMode::Strict,
            trust_domain: "shop.example".into(),
            trust_bundle: vec!["root-1".into(), "root-2".into()],
        };
        let inst = instances(&[("payment", "v1", 15106)])?;

        let order = compile("order", 3, &res, &inst, &mtls);
        assert_eq!(order.mtls, mtls);
        let ids: Vec<_> = order
            .destinations
            .iter()
            .map(|d| d.identity.as_deref())
            .collect();
        assert_eq!(
            ids,
            [
                Some("spiffe://shop.example/service/catalog"),
                Some("spiffe://shop.example/service/inventory"),
                Some("spiffe://shop.example/service/payment")
            ]
        );
        let pay = &order.destinations[2];
        assert_eq!(
            pay.endpoints[0].address.port(),
            15106,
            "endpoints stay the sidecars' inbound addresses"
        );
        assert!(
            order.inbound.as_ref().is_some_and(|i| i.allow.is_empty()),
            "no allow-list: any mesh caller"
        );
        assert!(valid(&order).is_empty(), "{:?}", valid(&order));

        let payment = compile("payment", 3, &res, &inst, &mtls);
        assert_eq!(
            payment.inbound.ok_or("no inbound")?.allow,
            [
                "spiffe://shop.example/service/order",
                "spiffe://shop.example/service/storefront"
            ]
        );

        let off = Mtls {
            mode: MtlsMode::Off,
            ..mtls
        };
        let plain = compile("order", 3, &res, &inst, &off);
        assert!(plain.destinations.iter().all(|d| d.identity.is_none()));
        assert_eq!(plain.mtls.mode, MtlsMode::Off);
        Ok(())
    }
}
