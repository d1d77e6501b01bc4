//! Authority → destination lookup. Hosts are matched without their port and without case;
//! a `*` destination catches every authority nothing else claims. The table does not know
//! what a destination is (the compiler's `Dest`), only how to find one.

use std::collections::HashMap;
use std::sync::Arc;

pub struct AuthorityTable<D> {
    by_host: HashMap<Box<str>, Arc<D>>,
    wildcard: Option<Arc<D>>,
}

impl<D> Default for AuthorityTable<D> {
    fn default() -> Self {
        Self {
            by_host: HashMap::new(),
            wildcard: None,
        }
    }
}

impl<D> AuthorityTable<D> {
    pub fn insert(&mut self, host: &str, dest: Arc<D>) {
        if host == "*" {
            self.wildcard = Some(dest);
        } else {
            self.by_host.insert(host.into(), dest);
        }
    }

    /// Every destination, once per host that selects it.
    pub fn values(&self) -> impl Iterator<Item = &Arc<D>> {
        self.by_host.values().chain(self.wildcard.iter())
    }

    pub fn lookup(&self, authority: Option<&str>) -> Option<&Arc<D>> {
        let found = authority.map(host_of).and_then(|h| {
            if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(h.to_ascii_lowercase().as_str())
            } else {
                self.by_host.get(h)
            }
        });
        found.or(self.wildcard.as_ref())
    }
}

/// The host part of an authority: no port, no userinfo, IPv6 brackets kept.
pub fn host_of(authority: &str) -> &str {
    let a = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if a.starts_with('[') {
        return a.find(']').map_or(a, |i| &a[..=i]);
    }
    a.split_once(':').map_or(a, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_userinfo() {
        assert_eq!(host_of("payment"), "payment");
        assert_eq!(host_of("payment:8080"), "payment");
        assert_eq!(host_of("u:p@payment:80"), "payment");
        assert_eq!(host_of("[::1]:80"), "[::1]");
    }
}
