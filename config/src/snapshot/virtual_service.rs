//! How apps address a service without knowing of the mesh: a virtual IP (like a Kubernetes
//! ClusterIP) and the ports they dial on it, some marked opaque. The same two fields appear on
//! a mesh `Service` and on the snapshot's destination it becomes.

use crate::path::FieldPath;
use crate::validate::Validator;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::IpAddr;

/// A port apps dial on the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    /// Opaque TCP: no protocol detection, so a server-first protocol (MySQL, SMTP) waits for
    /// nothing. Carried between sidecars over mTLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opaque: bool,
}

/// Checks `virtual_ip` (at `at.virtual_ip`) and `ports` (at `at.ports`).
pub fn validate(
    virtual_ip: Option<IpAddr>,
    ports: &[ServicePort],
    at: &FieldPath,
    v: &mut Validator,
) {
    if let Some(ip) = virtual_ip {
        v.ensure(
            !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast()),
            || at.key("virtual_ip"),
            "must be a unicast address that is not loopback or unspecified",
        );
    }
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let here = || at.key("ports").index(i).key("port");
        v.ensure(p.port != 0, here, "0 is not a port");
        if !seen.insert(p.port) {
            v.fail(here(), format!("port {} is listed twice", p.port));
        }
    }
}

/// Whether connections to `port` skip detection.
pub fn is_opaque(ports: &[ServicePort], port: u16) -> bool {
    ports.iter().any(|p| p.port == port && p.opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(ip: Option<&str>, ports: &[ServicePort]) -> Vec<String> {
        let mut v = Validator::default();
        let ip = ip.map(|s| s.parse().unwrap_or_else(|e| panic!("{e}")));
        validate(ip, ports, &FieldPath::root().key("spec"), &mut v);
        v.problems
            .into_iter()
            .map(|(path, reason)| format!("{path}: {reason}"))
            .collect()
    }

    #[test]
    fn addresses_and_ports_are_checked_where_they_are() {
        let p = |port, opaque| ServicePort { port, opaque };
        assert!(errors(Some("10.96.0.10"), &[p(80, false), p(5432, true)]).is_empty());
        assert_eq!(
            errors(Some("127.0.0.1"), &[]),
            ["spec.virtual_ip: must be a unicast address that is not loopback or unspecified"]
        );
        assert_eq!(
            errors(None, &[p(0, false), p(80, false), p(80, true)]),
            [
                "spec.ports[0].port: 0 is not a port",
                "spec.ports[2].port: port 80 is listed twice"
            ]
        );
        assert!(is_opaque(&[p(80, false), p(5432, true)], 5432));
        assert!(!is_opaque(&[p(80, false)], 80));
    }
}
