//! JSON Patch (RFC 6902) from the difference of two JSON values, as a
//! mutating admission webhook returns it: applied to `from`, the patch
//! gives `to`.
//!
//! Objects are compared key by key (`add`, `remove`, `replace`); arrays of
//! the same length element by element; arrays whose length changed are
//! replaced whole. Index arithmetic for inserts into the middle of an
//! array (the capture init container goes first) is where hand-made
//! patches go wrong, and the apiserver applies the patch to exactly the
//! object it sent, so a whole new array is as correct and much simpler.

use serde_json::{json, Value};

/// The operations turning `from` into `to`; empty when they are equal.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    walk(&mut String::new(), from, to, &mut ops);
    ops
}

fn walk(path: &mut String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, old) in a {
                let len = push(path, key);
                match b.get(key) {
                    None => ops.push(json!({"op": "remove", "path": path.as_str()})),
                    Some(new) => walk(path, old, new, ops),
                }
                path.truncate(len);
            }
            for (key, new) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                let len = push(path, key);
                ops.push(json!({"op": "add", "path": path.as_str(), "value": new}));
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (old, new)) in a.iter().zip(b).enumerate() {
                let len = push(path, &i.to_string());
                walk(path, old, new, ops);
                path.truncate(len);
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": to})),
    }
}

/// Appends `/token` to a JSON Pointer; returns the length to cut back to.
fn push(path: &mut String, token: &str) -> usize {
    let len = path.len();
    path.push('/');
    path.push_str(&escape(token));
    len
}

/// One reference token of a JSON Pointer (RFC 6901): `~` is `~0` and `/`
/// is `~1`, in that order so that a `~1` in the key stays itself.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
