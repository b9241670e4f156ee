use super::super::normalize_path;
use super::*;

/// The strict check of `raw` after normalisation, as the inbound runs it.
fn strict(raw: &str, fold: bool) -> Result<String, StrictPathError> {
    let n = normalize_path(raw).unwrap_or_else(|e| panic!("{raw:?} not normal: {e}"));
    check_strict(n.as_path(), fold).map(Cow::into_owned)
}

#[test]
fn double_encoding_is_refused_in_every_spelling() {
    // Each of these is `/admin/x` or `/admin.` or `..` to an app that
    // decodes twice.
    for (raw, decoded) in [
        ("/a%252Fb", '/'),
        ("/a%252fb", '/'),
        ("/%252e%252e/admin", '.'),
        ("/%25%32%65%25%32%65/admin", '.'),
        ("/%2561dmin", 'a'),
        ("/a%255Cb", '\\'),
        ("/x/%2500", '\0'),
    ] {
        match strict(raw, false) {
            Err(StrictPathError::DoubleEncoded(_, _, c)) => assert_eq!(c, decoded, "{raw}"),
            other => panic!("{raw:?}: {other:?}"),
        }
    }
}

#[test]
fn a_percent_sign_that_is_not_a_double_escape_passes() {
    for raw in ["/100%25", "/100%25/x", "/a%25z", "/a%25%25"] {
        assert!(strict(raw, false).is_ok(), "{raw}");
    }
}

#[test]
fn windows_trailing_characters_are_refused() {
    for raw in ["/admin.", "/admin..", "/admin./x", "/a/admin.?q=1"] {
        assert_eq!(
            strict(raw, false),
            Err(StrictPathError::TrailingDot),
            "{raw}"
        );
    }
    for (raw, ws) in [
        ("/admin%20", "20"),
        ("/admin%20/x", "20"),
        ("/a%09", "09"),
        ("/a%0d", "0D"),
    ] {
        assert_eq!(
            strict(raw, false),
            Err(StrictPathError::TrailingWhitespace(ws)),
            "{raw}"
        );
    }
    for raw in [
        "/admin::$DATA",
        "/admin%3A%3A$DATA",
        "/admin:%3A%24DATA",
        "/web.config::$INDEX_ALLOCATION",
    ] {
        assert_eq!(
            strict(raw, false),
            Err(StrictPathError::NtfsStream),
            "{raw}"
        );
    }
}

#[test]
fn ordinary_paths_pass_unchanged_and_borrowed() {
    for raw in [
        "/",
        "/api/v1/users",
        "/a/b/",
        "/file.txt",
        "/a%20b",
        "/v1/things:batchGet",
        "/.well-known/x",
    ] {
        let n = normalize_path(raw).unwrap();
        let checked = check_strict(n.as_path(), false).unwrap();
        assert!(matches!(checked, Cow::Borrowed(p) if p == raw), "{raw}");
    }
}

#[test]
fn case_folding_lowercases_for_matching_only_when_asked() {
    assert_eq!(strict("/ADMIN/Users", true).unwrap(), "/admin/users");
    assert_eq!(strict("/ADMIN/Users", false).unwrap(), "/ADMIN/Users");
    assert_eq!(strict("/a%3Ab", true).unwrap(), "/a%3ab");
    let n = normalize_path("/lower/case").unwrap();
    assert!(matches!(
        check_strict(n.as_path(), true).unwrap(),
        Cow::Borrowed(_)
    ));
}

#[test]
fn the_standard_profile_already_refuses_backslashes() {
    // Strict needs no rule of its own for them: they never normalise.
    assert!(normalize_path("/a\\b").is_err());
    assert!(normalize_path("/a%5Cb").is_err());
}
