//! An input field that is wrong, named by its path in the document: what every inject error
//! points at.

/// A field of the input that is wrong, by its path in the document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {reason}")]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: &str, reason: &str) -> Self {
        FieldError {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }
}
