//! A credential held in memory: a bootstrap or operator token. Its `Debug` never shows the
//! value, so a struct that holds one can derive `Debug` and be logged safely.

use std::sync::Arc;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place it is sent (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("otb_very_secret");
        assert_eq!(s.expose(), "otb_very_secret");
        let shown = format!("{s:?} {:?}", Some(s.clone()));
        assert!(!shown.contains("very_secret"), "{shown}");
    }
}
