//! Weighted traffic split across endpoint versions (canary releases). A sticky header's value
//! is hashed onto the split so one user stays on one version; without it each request draws.

use http::{HeaderMap, HeaderName};
use outrigger_config::WeightedVersion;
use prometheus::IntCounter;

#[derive(Debug)]
pub struct Split {
    /// Cumulative upper bounds, the version index each range selects (`None`: that version
    /// has no endpoints, so any endpoint will do), and the count of first-attempt choices of
    /// it: the canary share as the split decided it, whatever retries did next.
    ranges: Box<[(u32, Option<usize>, IntCounter)]>,
    total: u32,
    sticky: Option<HeaderName>,
}

impl Split {
    /// `versions` are the destination's endpoint versions, by index; `counter` gives the
    /// decision counter for a version name.
    pub fn compile(
        split: &[WeightedVersion],
        sticky: Option<&str>,
        versions: &[&str],
        counter: impl Fn(&str) -> IntCounter,
    ) -> Option<Self> {
        let mut total = 0u32;
        let ranges: Box<[_]> = split
            .iter()
            .filter(|w| w.weight > 0)
            .map(|w| {
                total = total.saturating_add(w.weight);
                (
                    total,
                    versions.iter().position(|v| *v == w.version),
                    counter(&w.version),
                )
            })
            .collect();
        if total == 0 {
            return None;
        }
        let sticky = sticky.and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        Some(Self {
            ranges,
            total,
            sticky,
        })
    }

    /// The version for a first attempt: by the sticky header's hash when present.
    pub fn choose(&self, headers: &HeaderMap) -> Option<usize> {
        let point = match self.sticky.as_ref().and_then(|h| headers.get(h)) {
            Some(v) => (fnv1a(v.as_bytes()) % u64::from(self.total)) as u32,
            None => fastrand::u32(..self.total),
        };
        let range = self.range(point)?;
        range.2.inc();
        range.1
    }

    /// The version for a retry: a fresh draw, so a failing canary's retries mostly land on
    /// the stable version.
    pub fn redraw(&self) -> Option<usize> {
        self.range(fastrand::u32(..self.total)).and_then(|r| r.1)
    }

    fn range(&self, point: u32) -> Option<&(u32, Option<usize>, IntCounter)> {
        self.ranges.iter().find(|(upper, ..)| point < *upper)
    }
}

/// FNV-1a: stable across processes and releases, so stickiness survives restarts.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(v: &str) -> IntCounter {
        IntCounter::new(format!("decisions_{v}"), "test").unwrap()
    }

    fn wv(v: &str, w: u32) -> WeightedVersion {
        WeightedVersion {
            version: v.into(),
            weight: w,
        }
    }

    #[test]
    fn draws_follow_the_weights() {
        let v2_decisions = counter("v2");
        let c = v2_decisions.clone();
        let s = Split::compile(&[wv("v1", 90), wv("v2", 10)], None, &["v1", "v2"], |v| {
            if v == "v2" {
                c.clone()
            } else {
                counter(v)
            }
        })
        .expect("split");
        let h = HeaderMap::new();
        let v2 = (0..20_000).filter(|_| s.choose(&h) == Some(1)).count();
        assert!((1700..2300).contains(&v2), "{v2}");
        assert_eq!(
            v2_decisions.get(),
            v2 as u64,
            "every first-attempt choice is counted"
        );
        let _ = s.redraw();
        assert_eq!(v2_decisions.get(), v2 as u64, "redraws for retries are not");
    }

    #[test]
    fn sticky_header_keeps_a_user_on_one_version() {
        let s = Split::compile(
            &[wv("v1", 50), wv("v2", 50)],
            Some("x-user-id"),
            &["v1", "v2"],
            counter,
        )
        .expect("split");
        let mut seen = [0usize; 2];
        for user in 0..200 {
            let mut h = HeaderMap::new();
            h.insert("x-user-id", user.to_string().parse().unwrap());
            let first = s.choose(&h);
            assert!((0..20).all(|_| s.choose(&h) == first), "user {user} moved");
            seen[first.unwrap()] += 1;
        }
        assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
    }

    #[test]
    fn unknown_versions_and_zero_weights() {
        let s = Split::compile(&[wv("v3", 1)], None, &["v1"], counter).expect("split");
        assert_eq!(s.choose(&HeaderMap::new()), None);
        assert!(Split::compile(&[wv("v1", 0)], None, &["v1"], counter).is_none());
        assert!(Split::compile(&[], None, &["v1"], counter).is_none());
    }
}
