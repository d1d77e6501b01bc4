//! Parsing YAML (or JSON, which is YAML) into config types, with errors that carry the field
//! path, line, column and reason whether they come from the parser or from validation.

use crate::error::{ConfigError, FieldError};
use crate::locate::locate;
use crate::path::FieldPath;
use crate::validate::{Validate, Validator};
use serde::de::DeserializeOwned;

/// Parses one document; errors name the field path, line and column.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    from_yaml_doc(text, 0, None)
}

/// Parses and validates one document.
pub fn from_yaml_validated<T: DeserializeOwned + Validate>(text: &str) -> Result<T, ConfigError> {
    let value: T = from_yaml(text)?;
    check(&value, text, 0, None)?;
    Ok(value)
}

/// Runs validation and places every problem in `text`.
pub fn check<T: Validate>(
    value: &T,
    text: &str,
    doc: usize,
    doc_label: Option<usize>,
) -> Result<(), ConfigError> {
    let mut v = Validator::default();
    value.validate(&FieldPath::root(), &mut v);
    if v.problems.is_empty() {
        return Ok(());
    }
    let errors = v
        .problems
        .into_iter()
        .map(|(path, reason)| {
            let (line, column) = locate(text, doc, &path.0).unwrap_or((1, 1));
            FieldError {
                document: doc_label,
                path: path.to_string(),
                line,
                column,
                reason,
            }
        })
        .collect();
    Err(ConfigError { errors })
}

/// Parses document `doc` of the multi-document stream `text`.
pub(crate) fn from_yaml_doc<T: DeserializeOwned>(
    text: &str,
    doc: usize,
    doc_label: Option<usize>,
) -> Result<T, ConfigError> {
    // An empty stream is an empty mapping, so that "missing field" errors say which field.
    let result = match serde_yaml_ng::Deserializer::from_str(text).nth(doc) {
        Some(d) => serde_path_to_error::deserialize(d),
        None => serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str("{}")),
    };
    result.map_err(|e| {
        let path = FieldPath::parse(&e.path().to_string());
        let inner = e.into_inner();
        let (line, column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .or_else(|| locate(text, doc, &path.0))
            .unwrap_or((1, 1));
        ConfigError::single(FieldError {
            document: doc_label,
            path: path.to_string(),
            line,
            column,
            reason: bare_reason(&inner.to_string(), &path),
        })
    })
}

/// The parser's message without the location and path it repeats (we report those apart).
fn bare_reason(msg: &str, path: &FieldPath) -> String {
    let mut m = msg;
    if let Some(i) = m.rfind(" at line ") {
        m = &m[..i];
    }
    let p = path.to_string();
    if let Some(rest) = m
        .strip_prefix(p.as_str())
        .and_then(|r| r.strip_prefix(": "))
    {
        m = rest;
    }
    m.to_string()
}
