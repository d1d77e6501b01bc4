//! Semantic validation: each type checks itself and reports problems by field path.

use crate::path::FieldPath;

#[derive(Debug, Default)]
pub struct Validator {
    pub problems: Vec<(FieldPath, String)>,
}

impl Validator {
    pub fn fail(&mut self, at: FieldPath, reason: impl Into<String>) {
        self.problems.push((at, reason.into()));
    }

    pub fn ensure(&mut self, ok: bool, at: impl FnOnce() -> FieldPath, reason: &str) {
        if !ok {
            self.fail(at(), reason);
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
