//! Small helpers over `serde_yaml_ng::Value`: building the injected containers in a fixed key
//! order (the order a person would write them in, and stable for the golden files), and
//! walking the input with field paths for the errors.

use super::field::FieldError;
use serde_yaml_ng::{Mapping, Value};

pub fn s(text: &str) -> Value {
    Value::String(text.to_string())
}

pub fn int(n: i64) -> Value {
    Value::Number(n.into())
}

pub fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

pub fn seq(items: impl IntoIterator<Item = Value>) -> Value {
    Value::Sequence(items.into_iter().collect())
}

pub fn strs<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    seq(items.into_iter().map(|x| s(x.as_ref())))
}

/// The string at `key` of a mapping, if `v` is one and the value is a string.
pub fn str_at<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a str> {
    v?.get(key)?.as_str()
}

/// The mapping at `key` of `parent`, created (empty) when missing or null; an error naming
/// `path` when it is something else.
pub fn map_mut<'a>(
    parent: &'a mut Mapping,
    key: &str,
    path: &str,
) -> Result<&'a mut Mapping, FieldError> {
    let slot = parent.entry(s(key)).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut()
        .ok_or_else(|| FieldError::new(path, "must be a mapping"))
}

/// The sequence at `key` of `parent`, created (empty) when missing or null.
pub fn seq_mut<'a>(
    parent: &'a mut Mapping,
    key: &str,
    path: &str,
) -> Result<&'a mut Vec<Value>, FieldError> {
    let slot = parent.entry(s(key)).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Sequence(Vec::new());
    }
    slot.as_sequence_mut()
        .ok_or_else(|| FieldError::new(path, "must be a list"))
}
