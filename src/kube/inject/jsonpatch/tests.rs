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
