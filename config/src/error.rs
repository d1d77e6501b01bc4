//! Config errors always say where (field path, line, column) and why.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Deserialize too: the CLI reads the API's `details` back into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Index of the document in a multi-document stream, when there is more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = self.document {
            write!(f, "document {d}: ")?;
        }
        write!(
            f,
            "{} (line {}, column {}): {}",
            self.path, self.line, self.column, self.reason
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(e: FieldError) -> Self {
        Self { errors: vec![e] }
    }
}
