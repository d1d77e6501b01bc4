//! The service registry: live instances held by leases that sidecars renew with heartbeats.
//! Instances are also stored (by the state task), and a restarted control plane gives each a
//! fresh lease: were the registry rebuilt from heartbeats alone, every sidecar would be pushed
//! empty endpoint lists until its callees' next heartbeats, and fail requests meanwhile.
//! Instances that died while the control plane was down expire one TTL after the restart.

use outrigger_config::path::FieldPath;
use outrigger_config::Validator;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

pub const DEFAULT_TTL_SECS: u64 = 10;
const MAX_TTL_SECS: u64 = 3600;

/// The body of `POST /v1/registry/instances`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub service: String,
    #[serde(default = "default_version")]
    pub version: String,
    pub address: IpAddr,
    /// Named ports; callers use `inbound` (the sidecar), else `http`, else the smallest.
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

fn default_version() -> String {
    "v1".to_string()
}

/// A registered instance, as listed by `GET /v1/registry/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub version: String,
    pub address: IpAddr,
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub ttl_secs: u64,
    /// Where callers send requests for this instance.
    pub endpoint: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RegistrationError {
    pub field: String,
    pub reason: String,
}

#[derive(Debug)]
struct Lease {
    instance: Instance,
    expires: Instant,
}

#[derive(Debug, Default)]
pub struct Registry {
    leases: HashMap<String, Lease>,
}

impl Registration {
    /// Checks the registration and picks the endpoint callers will use.
    fn check(&self) -> Result<(u64, SocketAddr), RegistrationError> {
        let mut v = Validator::default();
        v.name(&self.service, FieldPath::root().key("service"));
        v.name(&self.version, FieldPath::root().key("version"));
        if let Some((path, reason)) = v.problems.into_iter().next() {
            return Err(RegistrationError {
                field: path.to_string(),
                reason,
            });
        }
        let bad = |field: &str, reason: &str| RegistrationError {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if let Some((name, _)) = self.ports.iter().find(|(_, p)| **p == 0) {
            return Err(bad(&format!("ports.{name}"), "port 0 is not reachable"));
        }
        if self.labels.keys().any(|k| k.is_empty()) {
            return Err(bad("labels", "label names must not be empty"));
        }
        let ttl = self.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(bad("ttl_secs", "must be between 1 and 3600"));
        }
        let port = self
            .ports
            .get("inbound")
            .or_else(|| self.ports.get("http"))
            .copied()
            .or_else(|| self.ports.values().min().copied())
            .ok_or_else(|| bad("ports", "at least one port is needed"))?;
        Ok((ttl, SocketAddr::new(self.address, port)))
    }
}

impl Registry {
    /// Gives stored instances (from before a restart) a fresh lease each.
    pub fn restore(&mut self, instances: Vec<Instance>, now: Instant) {
        for instance in instances {
            let expires = now + Duration::from_secs(instance.ttl_secs);
            self.leases
                .insert(instance.id.clone(), Lease { instance, expires });
        }
    }

    /// Adds an instance with a fresh lease; returns it and the instances it replaced. An
    /// instance already registered at the same endpoint for the same service (a sidecar that
    /// restarted before its lease ran out) is replaced, so an endpoint is never listed twice.
    pub fn register(
        &mut self,
        reg: Registration,
        now: Instant,
    ) -> Result<(Instance, Vec<Instance>), RegistrationError> {
        let (ttl_secs, endpoint) = reg.check()?;
        let replaced: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.instance.service == reg.service && l.instance.endpoint == endpoint)
            .map(|(id, _)| id.clone())
            .collect();
        let replaced: Vec<Instance> = replaced
            .into_iter()
            .filter_map(|id| self.leases.remove(&id).map(|l| l.instance))
            .collect();
        let id = loop {
            let id = format!("{:016x}", fastrand::u64(..));
            if !self.leases.contains_key(&id) {
                break id;
            }
        };
        let instance = Instance {
            id: id.clone(),
            service: reg.service,
            version: reg.version,
            address: reg.address,
            ports: reg.ports,
            labels: reg.labels,
            ttl_secs,
            endpoint,
        };
        self.leases.insert(
            id,
            Lease {
                instance: instance.clone(),
                expires: now + Duration::from_secs(ttl_secs),
            },
        );
        Ok((instance, replaced))
    }

    /// Renews a lease; false when it is unknown or already expired (the caller registers
    /// again).
    pub fn heartbeat(&mut self, id: &str, now: Instant) -> bool {
        match self.leases.get_mut(id) {
            Some(l) if l.expires > now => {
                l.expires = now + Duration::from_secs(l.instance.ttl_secs);
                true
            }
            _ => false,
        }
    }

    pub fn deregister(&mut self, id: &str) -> Option<Instance> {
        self.leases.remove(id).map(|l| l.instance)
    }

    /// Removes every lease that has run out and returns those instances.
    pub fn reap(&mut self, now: Instant) -> Vec<Instance> {
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.leases.remove(&id).map(|l| l.instance))
            .collect()
    }

    /// Live instances, ordered by service, then endpoint.
    pub fn instances(&self) -> Vec<Instance> {
        let mut out: Vec<_> = self.leases.values().map(|l| l.instance.clone()).collect();
        out.sort_by(|a, b| (&a.service, a.endpoint, &a.id).cmp(&(&b.service, b.endpoint, &b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn reg(service: &str, ports: &[(&str, u16)], ttl: Option<u64>) -> Registration {
        Registration {
            service: service.into(),
            version: "v1".into(),
            address: IpAddr::from([127, 0, 0, 1]),
            ports: ports.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            labels: BTreeMap::new(),
            ttl_secs: ttl,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_unless_renewed() -> Result<(), RegistrationError> {
        let mut r = Registry::default();
        let (a, _) = r.register(
            reg("payment", &[("inbound", 15106)], Some(1)),
            Instant::now(),
        )?;
        let (b, _) = r.register(reg("payment", &[("inbound", 15107)], None), Instant::now())?;
        assert_eq!(b.ttl_secs, DEFAULT_TTL_SECS);

        advance(Duration::from_millis(900)).await;
        assert!(r.reap(Instant::now()).is_empty());
        assert!(r.heartbeat(&a.id, Instant::now()), "renewed before expiry");

        advance(Duration::from_millis(900)).await;
        assert!(
            r.reap(Instant::now()).is_empty(),
            "the heartbeat extended it"
        );

        advance(Duration::from_millis(200)).await;
        assert!(
            !r.heartbeat(&a.id, Instant::now()),
            "expired leases are not renewed"
        );
        let gone = r.reap(Instant::now());
        assert_eq!(gone, vec![a.clone()]);
        assert_eq!(r.instances(), vec![b.clone()]);
        assert!(
            !r.heartbeat(&a.id, Instant::now()),
            "reaped leases are unknown"
        );

        advance(Duration::from_secs(DEFAULT_TTL_SECS)).await;
        assert_eq!(r.reap(Instant::now()), vec![b]);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_prefers_inbound_then_http_then_smallest_port() -> Result<(), RegistrationError>
    {
        let mut r = Registry::default();
        let now = Instant::now();
        let e = |(i, _): (Instance, Vec<Instance>)| i.endpoint.port();
        assert_eq!(
            e(r.register(reg("a", &[("app", 80), ("inbound", 9000)], None), now)?),
            9000
        );
        assert_eq!(
            e(r.register(reg("b", &[("app", 80), ("http", 9001)], None), now)?),
            9001
        );
        assert_eq!(
            e(r.register(reg("c", &[("z", 9003), ("a", 9002)], None), now)?),
            9002
        );
        assert!(r.register(reg("d", &[], None), now).is_err());
        assert!(r.register(reg("d", &[("inbound", 0)], None), now).is_err());
        assert!(r
            .register(reg("Bad!", &[("inbound", 1)], None), now)
            .is_err());
        assert!(r
            .register(reg("d", &[("inbound", 1)], Some(0)), now)
            .is_err());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn re_registering_an_endpoint_replaces_the_old_lease() -> Result<(), RegistrationError> {
        let mut r = Registry::default();
        let (old, _) = r.register(reg("a", &[("inbound", 9000)], None), Instant::now())?;
        let (new, replaced) = r.register(reg("a", &[("inbound", 9000)], None), Instant::now())?;
        assert_ne!(old.id, new.id);
        assert_eq!(replaced, vec![old.clone()]);
        assert_eq!(r.instances(), vec![new]);
        assert!(r.deregister(&old.id).is_none());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn restored_instances_get_a_fresh_lease() -> Result<(), RegistrationError> {
        let mut r = Registry::default();
        let (a, _) = r.register(reg("a", &[("inbound", 9000)], Some(5)), Instant::now())?;
        advance(Duration::from_secs(4)).await;
        let mut restarted = Registry::default();
        restarted.restore(r.instances(), Instant::now());
        advance(Duration::from_secs(4)).await;
        assert!(restarted.reap(Instant::now()).is_empty());
        assert!(
            restarted.heartbeat(&a.id, Instant::now()),
            "the old id still works"
        );
        advance(Duration::from_secs(5)).await;
        assert_eq!(restarted.reap(Instant::now()), vec![a]);
        Ok(())
    }
}
