//! Parsing YAML (or JSON, which is YAML) into config types, with errors that carry the field
//! path, line, column and reason whether they come from the parser or from validation.

use crate::documents::Piece;
use crate::error::{ConfigError, FieldError};
use crate::path::FieldPath;
use crate::validate::{Validate, Validator};
use serde::de::DeserializeOwned;

/// Parses one document; errors name the field path, line and column.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    from_piece(Piece::whole(text))
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
    let warnings = check_warned(&value, Piece::whole(text))?;
    Ok((value, warnings))
}

/// Runs validation and places every problem in the document's text.
pub fn check<T: Validate>(value: &T, piece: Piece<'_>) -> Result<(), ConfigError> {
    let mut v = Validator::default();
    value.validate(&FieldPath::root(), &mut v);
    // Warnings are not placed: nobody here reads them, and each costs a walk of the text.
    match place(piece, v.problems) {
        errors if errors.is_empty() => Ok(()),
        errors => Err(ConfigError { errors }),
    }
}

/// Runs validation and places every problem, or when there are none every warning, in the
/// document's text.
pub fn check_warned<T: Validate>(
    value: &T,
    piece: Piece<'_>,
) -> Result<Vec<FieldError>, ConfigError> {
    let mut v = Validator::default();
    value.validate(&FieldPath::root(), &mut v);
    if v.problems.is_empty() {
        Ok(place(piece, v.warnings))
    } else {
        Err(ConfigError {
            errors: place(piece, v.problems),
        })
    }
}

fn place(piece: Piece<'_>, found: Vec<(FieldPath, String)>) -> Vec<FieldError> {
    found
        .into_iter()
        .map(|(path, reason)| piece.error(&path, reason))
        .collect()
}

/// Parses the first document of `piece`.
pub(crate) fn from_piece<T: DeserializeOwned>(piece: Piece<'_>) -> Result<T, ConfigError> {
    // An empty stream is an empty mapping, so that "missing field" errors say which field.
    let result = match serde_yaml_ng::Deserializer::from_str(piece.text).next() {
        Some(d) => serde_path_to_error::deserialize(d),
        None => serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str("{}")),
    };
    result.map_err(|e| ConfigError::single(yaml_error(piece, e)))
}

/// A parser's error, placed in the whole stream.
pub(crate) fn yaml_error(
    piece: Piece<'_>,
    e: serde_path_to_error::Error<serde_yaml_ng::Error>,
) -> FieldError {
    let path = FieldPath::parse(&e.path().to_string());
    let inner = e.into_inner();
    let (line, column) = inner.location().map_or_else(
        || piece.locate(&path.0),
        |l| (l.line() + piece.lines_before, l.column()),
    );
    FieldError {
        document: piece.document,
        path: path.to_string(),
        line,
        column,
        reason: bare_reason(&inner.to_string(), &path),
    }
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
