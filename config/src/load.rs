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
    from_yaml_warned(text).map(|(value, _)| value)
}

/// Parses and validates one document; a valid one comes with its warnings, placed like errors.
pub fn from_yaml_warned<T: DeserializeOwned + Validate>(
    text: &str,
) -> Result<(T, Vec<FieldError>), ConfigError> {
    let value: T = from_yaml(text)?;
    let warnings = check_warned(&value, text, 0, None)?;
    Ok((value, warnings))
}

/// Runs validation and places every problem in `text`.
pub fn check<T: Validate>(
    value: &T,
    text: &str,
    doc: usize,
    doc_label: Option<usize>,
) -> Result<(), ConfigError> {
    check_warned(value, text, doc, doc_label).map(drop)
}

/// Runs validation and places every problem, or when there are none every warning, in `text`.
pub fn check_warned<T: Validate>(
    value: &T,
    text: &str,
    doc: usize,
    doc_label: Option<usize>,
) -> Result<Vec<FieldError>, ConfigError> {
    let mut v = Validator::default();
    value.validate(&FieldPath::root(), &mut v);
    let place = |found: Vec<(FieldPath, String)>| -> Vec<FieldError> {
        found
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
            .collect()
    };
    if v.problems.is_empty() {
        Ok(place(v.warnings))
    } else {
        Err(ConfigError {
            errors: place(v.problems),
        })
    }
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
