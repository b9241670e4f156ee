//! Parse errors name the file, line and column of the offending value.

use super::*;

fn error(yaml: &str) -> PolicyError {
    match Policy::from_yaml(yaml, "policy.yaml") {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

/// (line, column, message) of an `Invalid` error.
fn invalid(yaml: &str) -> (Option<usize>, Option<usize>, String) {
    match error(yaml) {
        PolicyError::Invalid {
            file,
            line,
            column,
            message,
        } => {
            assert_eq!(file, "policy.yaml");
            (line, column, message)
        }
        other => panic!("unexpected error: {other}"),
    }
}

/// A one-rule policy whose rule has `extra` as its last lines (rule keys at
/// column 5, the first extra line is line 6).
fn rule_with(extra: &str) -> String {
    format!("rules:\n  - name: r\n    action: allow\n    from: [\"*\"]\n    # extra\n{extra}")
}

#[test]
fn unknown_rule_key_is_reported_at_the_key() {
    let (line, column, message) = invalid(&rule_with("    method: [GET]\n"));
    assert_eq!((line, column), (Some(6), Some(5)));
    assert!(message.contains("unknown field `method`"), "{message}");
    assert!(message.contains("methods"), "{message}");
}

#[test]
fn unknown_top_level_key_is_reported() {
    let (line, _, message) = invalid("mode: audit\ndefault: allow\nrules: []\n");
    assert_eq!(line, Some(2));
    assert!(message.contains("unknown field `default`"), "{message}");
}

#[test]
fn invalid_source_is_reported_at_the_value_in_a_flow_list() {
    let yaml = "rules:\n  - name: r\n    action: allow\n    from: [\"*\", spiffe://Cluster.local/ns/a/sa/b]\n";
    let (line, column, message) = invalid(yaml);
    assert_eq!((line, column), (Some(4), Some(17)));
    assert!(
        message.starts_with("rules[0].from[1]: invalid source"),
        "{message}"
    );
}

#[test]
fn invalid_source_is_reported_at_the_value_in_a_block_list() {
    let yaml = "rules:\n  - name: r\n    action: allow\n    from:\n      - \"*\"\n      - spiffe://td/ns/a/*/x\n";
    let (line, column, message) = invalid(yaml);
    assert_eq!((line, column), (Some(6), Some(9)));
    assert!(message.contains("'*' may only end a pattern"), "{message}");
}

#[test]
fn source_pattern_errors() {
    let cases: &[(&str, &str)] = &[
        ("spiffe://td/ns/a/sa/*", "may end in \"/*\""),
        ("spiffe://td/foo/*", "may end in \"/*\""),
        ("spiffe://*/ns/a/*", "trust domain cannot be a wildcard"),
        ("spiffe://td*", "may only end a pattern"),
        ("spiffe://td/a*", "may only end a pattern"),
        ("spiffe://td", "trust-domain ID"),
        ("spiffe://td/", "must not end with '/'"),
        ("http://td/a", "scheme"),
        ("", "empty"),
        ("**", "may only end a pattern"),
    ];
    for (source, expected) in cases {
        let (line, _, message) = invalid(&rule_with(&format!(
            "    paths: [/a]\n  - name: s\n    action: deny\n    from: [{source:?}]\n"
        )));
        assert_eq!(line, Some(9), "{source:?}: {message}");
        assert!(message.contains(expected), "{source:?}: {message}");
    }
}

#[test]
fn accepted_source_forms() {
    let ok = |s: &str| s.parse::<Source>().unwrap();
    assert_eq!(ok("*"), Source::Any);
    assert_eq!(ok("spiffe://td/*"), Source::TrustDomain("td".into()));
    assert_eq!(
        ok("spiffe://td/ns/shop/*"),
        Source::Namespace {
            trust_domain: "td".into(),
            namespace: "shop".into()
        }
    );
    assert!(matches!(ok("spiffe://td/ns/shop/sa/x"), Source::Id(_)));
    assert!(matches!(ok("spiffe://td/anything/else"), Source::Id(_)));
}

#[test]
fn methods_must_be_uppercase_standard_methods() {
    let (line, column, message) = invalid(&rule_with("    methods: [GET, post]\n"));
    assert_eq!((line, column), (Some(6), Some(20)));
    assert!(message.contains("uppercase: POST"), "{message}");

    let (_, _, message) = invalid(&rule_with("    methods: [GTE]\n"));
    assert!(message.contains("unknown method"), "{message}");
    let (_, _, message) = invalid(&rule_with("    methods: [PROPFIND]\n"));
    assert!(message.contains("unknown method"), "{message}");
}

#[test]
fn path_pattern_errors() {
    let cases: &[(&str, &str)] = &[
        ("api/*", "must start with '/'"),
        ("/api*", "may only end a path"),
        ("/*/x", "may only end a path"),
        ("/a/*/b/*", "may only end a path"),
        ("/a/../b", "normal form; requests are matched as \"/b\""),
        ("/%61dmin", "matched as \"/admin\""),
        ("/a//*", "matched as \"/a/*\""),
        ("/a;x/*", "matched as \"/a/*\""),
        ("/a?x=1", "must not contain a query"),
        ("/a%2Fb", "encoded slash"),
        ("/a\\\\b", "backslash"),
    ];
    for (path, expected) in cases {
        let (line, column, message) = invalid(&rule_with(&format!("    paths: [\"{path}\"]\n")));
        assert_eq!((line, column), (Some(6), Some(13)), "{path}");
        assert!(message.contains(expected), "{path}: {message}");
    }
}

#[test]
fn accepted_path_forms() {
    let ok = |s: &str| s.parse::<PathPattern>().unwrap();
    assert_eq!(ok("/"), PathPattern::Exact("/".into()));
    assert_eq!(ok("/*"), PathPattern::Prefix("".into()));
    assert_eq!(ok("/api/*"), PathPattern::Prefix("/api".into()));
    assert_eq!(ok("/a/"), PathPattern::Exact("/a/".into()));
    assert_eq!(ok("/a%20b/*"), PathPattern::Prefix("/a%20b".into()));
}

#[test]
fn ports_must_be_1_to_65535_and_lists_non_empty() {
    let (line, column, message) = invalid(&rule_with("    ports: [80, 0]\n"));
    assert_eq!((line, column), (Some(6), Some(17)));
    assert!(message.contains("port number from 1 to 65535"), "{message}");
    let (_, _, message) = invalid(&rule_with("    ports: [65536]\n"));
    assert!(message.contains("port number"), "{message}");
    let (_, _, message) = invalid(&rule_with("    ports: [-1]\n"));
    assert!(message.contains("port number"), "{message}");
    let (line, column, message) = invalid(&rule_with("    ports: []\n"));
    assert_eq!((line, column), (Some(6), Some(12)));
    assert!(message.contains("must not be empty"), "{message}");
    let (_, _, message) = invalid("rules:\n  - name: r\n    action: allow\n    from: []\n");
    assert!(message.contains("must not be empty"), "{message}");
}

#[test]
fn missing_required_keys_are_reported_at_the_rule() {
    let (line, _, message) = invalid("rules:\n  - name: a\n    action: allow\n    from: [\"*\"]\n  - name: b\n    action: deny\n");
    assert_eq!(line, Some(5));
    assert!(message.contains("missing field `from`"), "{message}");
    let (_, _, message) = invalid("mode: audit\n");
    assert!(message.contains("missing field `rules`"), "{message}");
}

#[test]
fn enum_values_are_checked() {
    let (line, _, message) = invalid("mode: warn\nrules: []\n");
    assert_eq!(line, Some(1));
    assert!(message.contains("unknown variant `warn`"), "{message}");
    let (line, _, message) =
        invalid("rules:\n  - name: a\n    action: permit\n    from: [\"*\"]\n");
    assert_eq!(line, Some(3));
    assert!(message.contains("expected `allow` or `deny`"), "{message}");
}

#[test]
fn rule_names_are_label_safe() {
    for name in ["\"\"", "\"a b\"", "\"x\\u00e9\"", "a/b", "\"a\\\"b\""] {
        let (line, _, message) = invalid(&format!(
            "rules:\n  - name: {name}\n    action: allow\n    from: [\"*\"]\n"
        ));
        assert_eq!(line, Some(2), "{name}: {message}");
        assert!(message.contains("invalid rule name"), "{name}: {message}");
    }
    let long = "x".repeat(129);
    let (_, _, message) = invalid(&format!(
        "rules:\n  - name: {long}\n    action: allow\n    from: [\"*\"]\n"
    ));
    assert!(message.contains("at most 128"), "{message}");
}

#[test]
fn duplicate_rule_names_name_both_lines() {
    let yaml = "rules:\n  - name: a\n    action: allow\n    from: [\"*\"]\n  - name: b\n    action: allow\n    from: [\"*\"]\n  - {name: a, action: deny, from: [\"*\"]}\n";
    let err = error(yaml);
    assert_eq!(err.line(), Some(8));
    let PolicyError::DuplicateRuleName {
        ref name,
        index,
        first_index,
        first_line,
        ..
    } = err
    else {
        panic!("{err}");
    };
    assert_eq!(
        (name.as_str(), index, first_index, first_line),
        ("a", 2, 0, Some(2))
    );
    assert_eq!(
        err.to_string(),
        "policy.yaml:8: rules[2]: rule name \"a\" is already used by rules[0] (line 2)"
    );
}

#[test]
fn yaml_syntax_errors_carry_a_line() {
    let err = error("rules:\n  - name: a\n   action: allow\n");
    assert!(err.line().is_some(), "{err}");
    // An unquoted `*` is a YAML alias, not a string.
    let err = error("rules:\n  - name: a\n    action: allow\n    from: [*]\n");
    assert_eq!(err.line(), Some(4), "{err}");
}

#[test]
fn error_display_is_file_line_column_then_message() {
    let err = error(&rule_with("    methods: [get]\n"));
    assert_eq!(
        err.to_string(),
        "policy.yaml:6:15: rules[0].methods[0]: invalid method \"get\": methods are written in uppercase: GET"
    );
}

#[test]
fn rule_lines_follow_block_and_flow_styles() {
    let p = policy(
        "# comment\nrules:\n  - name: a\n    action: allow\n    from: [\"*\"]\n  - {action: deny, from: [\"*\"],\n     name: b}\n  -\n    action: allow\n    name: c\n    from: [\"*\"]\n",
    );
    let lines: Vec<_> = p.rules().iter().map(Rule::line).collect();
    assert_eq!(lines, [Some(3), Some(7), Some(10)]);
}

#[test]
fn load_reads_a_file_and_reports_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "mode: audit\nrules: []\n").unwrap();
    let p = Policy::load(&path).unwrap();
    assert_eq!(p.mode(), Mode::Audit);
    assert_eq!(p.file_name(), path.display().to_string());

    let missing = dir.path().join("absent.yaml");
    let err = Policy::load(&missing).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err}");
    assert!(err.to_string().contains("absent.yaml"), "{err}");

    std::fs::write(&path, "rules:\n  - name: x\n").unwrap();
    let err = Policy::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2", path.display())),
        "{err}"
    );
}
