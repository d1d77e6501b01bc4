//! Root rotation: when a root may leave the trust bundle.
//!
//! A root is dropped only once no unexpired leaf chains to it, so no sidecar is left holding a
//! certificate its peers no longer trust; `force` overrides that (those sidecars fail mTLS
//! until they renew). The active root, the one that signs, is never dropped: rotate first.

use crate::clock;

/// The leaves of one root that have not expired yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unexpired {
    pub count: usize,
    /// Unix seconds: when the last of them expires.
    pub last_not_after: u64,
}

/// The leaves among `not_afters` (Unix seconds) still valid at `now_unix`. A certificate is
/// valid through its notAfter second (RFC 5280), so it has expired only after it.
pub fn unexpired<'a>(
    not_afters: impl IntoIterator<Item = &'a u64>,
    now_unix: u64,
) -> Option<Unexpired> {
    let mut out: Option<Unexpired> = None;
    for &n in not_afters.into_iter().filter(|&&n| n >= now_unix) {
        let u = out.get_or_insert(Unexpired {
            count: 0,
            last_not_after: n,
        });
        u.count += 1;
        u.last_not_after = u.last_not_after.max(n);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropRefusal {
    #[error("root {0:?} is not known")]
    Unknown(String),
    #[error(
        "root {0} is the active signer and cannot be dropped; rotate first (POST /v1/ca/roots)"
    )]
    Active(String),
    #[error("root {id} still has {count} unexpired leaf certificate(s), the last expiring at {last}; wait until then or drop it with force=true (their sidecars then fail mTLS until they renew)")]
    InUse {
        id: String,
        count: usize,
        last: String,
    },
}

/// What dropping a root means, given what is known about it.
pub struct DropCheck<'a> {
    pub id: &'a str,
    pub known: bool,
    pub active: bool,
    pub unexpired: Option<Unexpired>,
    pub force: bool,
}

/// Whether the root may go: `Ok(Some(..))` when `force` drops it over unexpired leaves.
pub fn check_drop(c: &DropCheck<'_>) -> Result<Option<Unexpired>, DropRefusal> {
    if !c.known {
        return Err(DropRefusal::Unknown(c.id.to_string()));
    }
    if c.active {
        return Err(DropRefusal::Active(c.id.to_string()));
    }
    match c.unexpired {
        Some(u) if !c.force => Err(DropRefusal::InUse {
            id: c.id.to_string(),
            count: u.count,
            last: clock::rfc3339(u.last_not_after),
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(known: bool, active: bool, leaves: &[u64], now: u64, force: bool) -> String {
        let c = DropCheck {
            id: "r1",
            known,
            active,
            unexpired: unexpired(leaves, now),
            force,
        };
        match check_drop(&c) {
            Ok(None) => "drop".into(),
            Ok(Some(u)) => format!("forced over {}", u.count),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn counts_leaves_valid_through_their_last_second() {
        assert_eq!(unexpired(&[], 100), None);
        assert_eq!(unexpired(&[99, 98], 100), None);
        assert_eq!(
            unexpired(&[99, 100, 130, 120], 100),
            Some(Unexpired {
                count: 3,
                last_not_after: 130
            })
        );
    }

    #[test]
    fn a_root_with_unexpired_leaves_stays_unless_forced() {
        let refused = check(true, false, &[50, 200, 150], 100, false);
        assert_eq!(
            refused,
            "root r1 still has 2 unexpired leaf certificate(s), the last expiring at 1970-01-01T00:03:20Z; wait until then or drop it with force=true (their sidecars then fail mTLS until they renew)"
        );
        assert_eq!(check(true, false, &[50, 200], 100, true), "forced over 1");
        assert_eq!(check(true, false, &[50, 200], 201, false), "drop");
        assert_eq!(check(true, false, &[], 0, false), "drop");
    }

    #[test]
    fn the_active_root_and_unknown_roots_are_never_dropped() {
        assert!(check(true, true, &[], 100, true).contains("active signer"));
        assert!(check(true, true, &[], 100, false).contains("rotate first"));
        assert_eq!(
            check(false, false, &[], 0, true),
            "root \"r1\" is not known"
        );
    }
}
