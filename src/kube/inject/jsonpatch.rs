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
mod tests {
    use super::*;

    /// Applies with an independent implementation (the json-patch crate).
    fn check(from: Value, to: Value) -> Vec<Value> {
        let ops = diff(&from, &to);
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops.clone())).expect("valid RFC 6902 operations");
        let mut doc = from.clone();
        json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{e}: {ops:?}"));
        assert_eq!(doc, to, "{ops:#?}");
        ops
    }

    #[test]
    fn equal_values_give_no_operations() {
        let v = json!({"a": [1, {"b": null}], "c": "d"});
        assert!(check(v.clone(), v).is_empty());
    }

    #[test]
    fn object_keys_are_added_removed_and_replaced() {
        let ops = check(
            json!({"keep": 1, "gone": 2, "change": {"x": 1}, "type": [1]}),
            json!({"keep": 1, "change": {"x": 2, "y": 3}, "type": {"now": "a map"}, "new": true}),
        );
        assert!(ops.contains(&json!({"op": "remove", "path": "/gone"})));
        assert!(ops.contains(&json!({"op": "replace", "path": "/change/x", "value": 2})));
        assert!(ops.contains(&json!({"op": "add", "path": "/change/y", "value": 3})));
        assert!(ops.contains(&json!({"op": "add", "path": "/new", "value": true})));
        assert_eq!(ops.len(), 5);
    }

    #[test]
    fn keys_with_slash_and_tilde_are_escaped() {
        let ops = check(
            json!({"metadata": {"annotations": {"a/b": "1", "~1": "x"}}}),
            json!({"metadata": {"annotations": {"a/b": "2", "~1": "y", "meshguard.io/injected": "native", "~/": ""}}}),
        );
        for path in [
            "/metadata/annotations/a~1b",
            "/metadata/annotations/~01",
            "/metadata/annotations/meshguard.io~1injected",
            "/metadata/annotations/~0~1",
        ] {
            assert!(ops.iter().any(|o| o["path"] == path), "{path}: {ops:?}");
        }
        assert_eq!(escape("~1/~"), "~01~1~0");
    }

    #[test]
    fn arrays_of_equal_length_are_patched_in_place_others_replaced() {
        let ops = check(
            json!({"c": [{"name": "a", "p": 1}, {"name": "b"}], "v": [1, 2]}),
            json!({"c": [{"name": "a", "p": 2}, {"name": "b"}], "v": [0, 1, 2]}),
        );
        assert_eq!(
            ops,
            vec![
                json!({"op": "replace", "path": "/c/0/p", "value": 2}),
                json!({"op": "replace", "path": "/v", "value": [0, 1, 2]}),
            ]
        );
        check(json!([1, 2, 3]), json!([]));
        check(json!({"a": []}), json!({"a": [[], {}]}));
    }

    #[test]
    fn the_empty_key_and_scalars_at_the_root() {
        check(json!({"": 1}), json!({"": 2, "x": {"": []}}));
        check(json!(1), json!("one"));
        check(json!({"a": 1}), json!(null));
    }
}
