//! `proxy.interception`: how the outbound listener treats connections the init step's rules
//! redirected to it (the app dialled some address; `SO_ORIGINAL_DST` says which).

use crate::duration::Family;
use crate::path::FieldPath;
use crate::validate::{Validate, Validator};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What happens to a connection whose original destination no service of the mesh claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutboundPolicy {
    /// Passed through to where it was going, and counted (Istio's `ALLOW_ANY`, its default).
    #[default]
    AllowAny,
    /// Refused (closed at once), and counted (Istio's `REGISTRY_ONLY`).
    RegistryOnly,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Interception {
    /// Longest wait for a client's first bytes before the connection is taken as opaque TCP.
    /// 300ms: client-first protocols send at once, so this only delays a server-first
    /// protocol on a port not marked opaque. Linkerd waits 10 s there (its known stall);
    /// Istio's old 100 ms misread slow clients on loaded nodes as opaque.
    #[serde(with = "crate::duration")]
    pub detect_timeout: Duration,
    /// Destination ports that skip detection: server-first protocols (SMTP, MySQL) get no
    /// delay at all. Linkerd's default opaque ports: SMTP 25 and 587, MySQL 3306, Galera
    /// 4444, PostgreSQL 5432, Redis 6379, Elasticsearch 9300, memcached 11211.
    pub opaque_ports: Vec<u16>,
    pub outbound_policy: OutboundPolicy,
    /// TCP connect timeout for passed-through connections. 5s: Envoy's cluster default
    /// (Linkerd uses 1 s inside the mesh; outside it, destinations may be far away).
    #[serde(with = "crate::duration")]
    pub connect_timeout: Duration,
}

impl Default for Interception {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_millis(300),
            opaque_ports: vec![25, 587, 3306, 4444, 5432, 6379, 9300, 11211],
            outbound_policy: OutboundPolicy::AllowAny,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Validate for Interception {
    fn validate(&self, at: &FieldPath, v: &mut Validator) {
        v.ensure(
            self.detect_timeout >= Duration::from_millis(10)
                && self.detect_timeout <= Duration::from_secs(10),
            || at.key("detect_timeout"),
            "must be between 10ms and 10s",
        );
        v.duration(self.detect_timeout, Family::Timeout, || {
            at.key("detect_timeout")
        });
        v.ensure(
            self.connect_timeout >= Duration::from_millis(100),
            || at.key("connect_timeout"),
            "must be at least 100ms",
        );
        v.duration(self.connect_timeout, Family::Timeout, || {
            at.key("connect_timeout")
        });
        for (i, p) in self.opaque_ports.iter().enumerate() {
            v.ensure(
                *p != 0,
                || at.key("opaque_ports").index(i),
                "0 is not a port",
            );
        }
    }
}
