//! Canary weight changes: setting some versions' share of a service's split (in percent) and
//! spreading what is left over the other versions in proportion to their old weights.

use outrigger_config::path::FieldPath;
use outrigger_config::{Validator, WeightedVersion};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("give at least one version's weight")]
    Empty,
    #[error("{0}")]
    BadVersion(String),
    #[error("weight of {version} is {weight}: weights are percentages from 0 to 100")]
    OutOfRange { version: String, weight: u32 },
    #[error("weights add up to {sum}, more than 100")]
    OverHundred { sum: u32 },
    #[error(
        "weights add up to {sum}, and the split has no other version to take the remaining {}%: {}",
        100 - sum,
        missing_hint(missing)
    )]
    Unassigned { sum: u32, missing: Vec<String> },
}

fn missing_hint(missing: &[String]) -> String {
    if missing.is_empty() {
        "give weights that add up to 100".to_string()
    } else {
        format!(
            "give the weights of the missing versions too ({})",
            missing.join(", ")
        )
    }
}

/// The split after setting `set` (version → percent). `live` are the versions with registered
/// instances, named in the error when the weights leave a share to nobody.
pub fn reweigh(
    old: &[WeightedVersion],
    set: &BTreeMap<String, u32>,
    live: &[String],
) -> Result<Vec<WeightedVersion>, SplitError> {
    if set.is_empty() {
        return Err(SplitError::Empty);
    }
    let mut v = Validator::default();
    for version in set.keys() {
        v.name(
            version,
            FieldPath::root().key("weights").key(version.clone()),
        );
    }
    if let Some((path, reason)) = v.problems.into_iter().next() {
        return Err(SplitError::BadVersion(format!("{path}: {reason}")));
    }
    if let Some((version, weight)) = set.iter().find(|(_, w)| **w > 100) {
        return Err(SplitError::OutOfRange {
            version: version.clone(),
            weight: *weight,
        });
    }
    let sum: u32 = set.values().sum();
    if sum > 100 {
        return Err(SplitError::OverHundred { sum });
    }
    let others: Vec<&WeightedVersion> = old
        .iter()
        .filter(|w| !set.contains_key(&w.version))
        .collect();
    if others.is_empty() && sum != 100 {
        let mut missing: Vec<String> = live
            .iter()
            .filter(|v| !set.contains_key(*v))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        return Err(SplitError::Unassigned { sum, missing });
    }
    let shares = spread(
        100 - sum,
        &others.iter().map(|w| w.weight).collect::<Vec<_>>(),
    );
    let mut shares = shares.into_iter();
    let mut out: Vec<WeightedVersion> = old
        .iter()
        .map(|w| WeightedVersion {
            version: w.version.clone(),
            weight: match set.get(&w.version) {
                Some(new) => *new,
                None => shares.next().unwrap_or(0),
            },
        })
        .collect();
    for (version, weight) in set {
        if !old.iter().any(|w| &w.version == version) {
            out.push(WeightedVersion {
                version: version.clone(),
                weight: *weight,
            });
        }
    }
    Ok(out)
}

/// Splits `total` in proportion to `weights` (equally if they are all 0) into whole numbers
/// that add up to exactly `total`: floors first, then the largest remainders get one more,
/// earlier versions winning ties.
fn spread(total: u32, weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let weights: Vec<u64> = if weights.iter().all(|w| *w == 0) {
        vec![1; weights.len()]
    } else {
        weights.iter().map(|w| u64::from(*w)).collect()
    };
    let sum: u64 = weights.iter().sum();
    let total = u64::from(total);
    let mut shares: Vec<u64> = weights.iter().map(|w| total * w / sum).collect();
    let mut left = total - shares.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Stable sort: equal remainders keep the split's order.
    order.sort_by_key(|i| std::cmp::Reverse(total * weights[*i] % sum));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    // Each share is at most `total`, which came from a u32.
    shares
        .into_iter()
        .map(|s| u32::try_from(s).unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(list: &[(&str, u32)]) -> Vec<WeightedVersion> {
        list.iter()
            .map(|(v, w)| WeightedVersion {
                version: v.to_string(),
                weight: *w,
            })
            .collect()
    }

    fn set(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(v, w)| (v.to_string(), *w)).collect()
    }

    #[test]
    fn the_rest_goes_to_the_other_versions_by_their_old_weights() {
        let old = split(&[("v1", 90), ("v2", 10)]);
        assert_eq!(
            reweigh(&old, &set(&[("v2", 25)]), &[]),
            Ok(split(&[("v1", 75), ("v2", 25)]))
        );
        let old = split(&[("v1", 60), ("v2", 30), ("v3", 10)]);
        assert_eq!(
            reweigh(&old, &set(&[("v3", 50)]), &[]),
            Ok(split(&[("v1", 33), ("v2", 17), ("v3", 50)])),
            "50 spread 2:1 is 33.3/16.7; the larger remainder gets the extra point"
        );
        let old = split(&[("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(
            reweigh(&old, &set(&[("c", 0)]), &[]),
            Ok(split(&[("a", 50), ("b", 50), ("c", 0)]))
        );
    }

    #[test]
    fn zero_weights_share_equally_and_new_versions_are_appended() {
        let old = split(&[("v1", 0), ("v2", 0), ("v3", 0)]);
        assert_eq!(
            reweigh(&old, &set(&[("v4", 1)]), &[]),
            Ok(split(&[("v1", 33), ("v2", 33), ("v3", 33), ("v4", 1)]))
        );
        let old = split(&[("v1", 100)]);
        assert_eq!(
            reweigh(&old, &set(&[("v2", 10)]), &[]),
            Ok(split(&[("v1", 90), ("v2", 10)]))
        );
    }

    #[test]
    fn shares_always_add_up_to_the_total() {
        for total in 0..=100 {
            for weights in [vec![1, 2, 3], vec![0, 0], vec![7], vec![33, 33, 34, 1]] {
                assert_eq!(spread(total, &weights).iter().sum::<u32>(), total);
            }
        }
    }

    #[test]
    fn without_other_versions_the_weights_must_make_100() {
        assert_eq!(
            reweigh(&[], &set(&[("v2", 25)]), &["v1".into(), "v2".into()]),
            Err(SplitError::Unassigned {
                sum: 25,
                missing: vec!["v1".into()]
            })
        );
        let e = reweigh(&[], &set(&[("v2", 25)]), &["v1".into()]);
        assert!(
            matches!(&e, Err(err) if err.to_string().contains("missing versions too (v1)")),
            "{e:?}"
        );
        assert_eq!(
            reweigh(&[], &set(&[("v1", 40), ("v2", 60)]), &[]),
            Ok(split(&[("v1", 40), ("v2", 60)]))
        );
        let old = split(&[("v2", 100)]);
        assert!(matches!(
            reweigh(&old, &set(&[("v2", 50)]), &[]),
            Err(SplitError::Unassigned { .. })
        ));
    }

    #[test]
    fn weights_are_checked() {
        let old = split(&[("v1", 100)]);
        assert_eq!(reweigh(&old, &set(&[]), &[]), Err(SplitError::Empty));
        assert!(matches!(
            reweigh(&old, &set(&[("v2", 101)]), &[]),
            Err(SplitError::OutOfRange { .. })
        ));
        assert_eq!(
            reweigh(&old, &set(&[("v2", 60), ("v3", 60)]), &[]),
            Err(SplitError::OverHundred { sum: 120 })
        );
        assert!(matches!(
            reweigh(&old, &set(&[("V2!", 10)]), &[]),
            Err(SplitError::BadVersion(_))
        ));
    }
}
