//! Semantic validation: each type checks itself and reports problems by field path. Problems
//! refuse the config; warnings do not (the config is legal but probably not what was meant),
//! and are handed back for whoever applies it to log or show.

use crate::duration::{display, Family};
use crate::path::FieldPath;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Validator {
    pub problems: Vec<(FieldPath, String)>,
    pub warnings: Vec<(FieldPath, String)>,
}

impl Validator {
    pub fn fail(&mut self, at: FieldPath, reason: impl Into<String>) {
        self.problems.push((at, reason.into()));
    }

    pub fn warn(&mut self, at: FieldPath, reason: impl Into<String>) {
        self.warnings.push((at, reason.into()));
    }

    pub fn ensure(&mut self, ok: bool, at: impl FnOnce() -> FieldPath, reason: &str) {
        if !ok {
            self.fail(at(), reason);
        }
    }

    /// A duration within its family's bound (see [`crate::duration`]).
    pub fn duration(&mut self, d: Duration, family: Family, at: impl FnOnce() -> FieldPath) {
        let max = family.max();
        if d > max {
            self.fail(at(), format!("must be at most {}", display(max)));
        }
    }

    /// A duration greater than zero and within its family's bound.
    pub fn positive_duration(
        &mut self,
        d: Duration,
        family: Family,
        at: impl FnOnce() -> FieldPath,
    ) {
        if d.is_zero() {
            self.fail(at(), "must be greater than zero");
        } else {
            self.duration(d, family, at);
        }
    }

    /// Service, route and version names become metric labels and DNS-like identifiers, so they
    /// are short lowercase tokens.
    pub fn name(&mut self, value: &str, at: FieldPath) {
        let ok = !value.is_empty()
            && value.len() <= 63
            && value.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
            })
            && !value.starts_with('-');
        if !ok {
            self.fail(
                at,
                format!("{value:?} is not a valid name: use 1-63 lowercase letters, digits, '-', '_' or '.'"),
            );
        }
    }
}

pub trait Validate {
    fn validate(&self, at: &FieldPath, v: &mut Validator);
}

/// The warnings validating `value` gives, by field path from its root. For an applier that has
/// already refused it on its problems (or knows it has none) and wants to log or show the rest.
pub fn warnings<T: Validate + ?Sized>(value: &T) -> Vec<(FieldPath, String)> {
    let mut v = Validator::default();
    value.validate(&FieldPath::root(), &mut v);
    v.warnings
}
