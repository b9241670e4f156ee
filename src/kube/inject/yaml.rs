//! Small helpers over `serde_norway::Value` for building and walking
//! Kubernetes objects. Errors are plain messages; the caller adds the
//! document and the path.

use serde_norway::{Mapping, Value};

pub(super) fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

pub(super) fn n(v: impl Into<u64>) -> Value {
    Value::Number(v.into().into())
}

/// A mapping with keys in the given order (the order they are written in).
pub(super) fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(k, v)| (s(k), v))
            .collect::<Mapping>(),
    )
}

pub(super) fn seq_of_str(items: &[&str]) -> Value {
    Value::Sequence(items.iter().map(|i| s(i)).collect())
}

pub(super) fn get_str<'a>(m: &'a Mapping, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// The mapping under `key`, created (empty) when absent or null.
pub(super) fn child_map<'a>(m: &'a mut Mapping, key: &str) -> Result<&'a mut Mapping, String> {
    let slot = m.entry(s(key)).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut()
        .ok_or_else(|| format!("{key}: expected a mapping"))
}

/// The sequence under `key`, created (empty) when absent or null.
pub(super) fn child_seq<'a>(m: &'a mut Mapping, key: &str) -> Result<&'a mut Vec<Value>, String> {
    let slot = m.entry(s(key)).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Sequence(Vec::new());
    }
    slot.as_sequence_mut()
        .ok_or_else(|| format!("{key}: expected a sequence"))
}

/// The mappings of a sequence under `key` (absent or null: none).
pub(super) fn seq_maps<'a>(m: &'a Mapping, key: &str) -> Result<Vec<&'a Mapping>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_mapping()
                    .ok_or_else(|| format!("{key}[{i}]: expected a mapping"))
            })
            .collect(),
        Some(_) => Err(format!("{key}: expected a sequence")),
    }
}

/// Removes `key` when it holds an empty mapping or sequence (or null), so
/// that undoing an injection does not leave `volumes: []` behind.
pub(super) fn drop_if_empty(m: &mut Mapping, key: &str) {
    let empty = match m.get(key) {
        Some(Value::Mapping(x)) => x.is_empty(),
        Some(Value::Sequence(x)) => x.is_empty(),
        Some(Value::Null) => true,
        _ => false,
    };
    if empty {
        m.shift_remove(key);
    }
}

/// Replaces the entry `old` with `new_key: value` at the same position, so
/// a rewritten probe stays where the author put it.
pub(super) fn replace_entry(m: &mut Mapping, old: &str, new_key: &str, value: Value) {
    let entries = std::mem::take(m);
    for (k, v) in entries {
        if k.as_str() == Some(old) {
            m.insert(s(new_key), value.clone());
        } else {
            m.insert(k, v);
        }
    }
}

/// YAML 1.1 (what kubectl reads) takes `defaultMode: 0644` as octal 420;
/// serde_norway, reading YAML 1.2, sees the string "0644", which we would
/// then write back quoted and Kubernetes would refuse. File modes are the
/// one place this idiom is common, so convert them back to numbers.
pub(super) fn fix_octal_modes(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                let is_mode = matches!(k.as_str(), Some("mode" | "defaultMode"));
                if let (true, Value::String(text)) = (is_mode, &*child) {
                    let octal = text.len() > 1
                        && text.starts_with('0')
                        && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
                    if let (true, Ok(n)) = (octal, u64::from_str_radix(text, 8)) {
                        *child = Value::Number(n.into());
                    }
                } else {
                    fix_octal_modes(child);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(fix_octal_modes),
        _ => {}
    }
}
