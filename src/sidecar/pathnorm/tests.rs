use super::*;

/// Normalised path of `raw`, panicking with the input on refusal.
fn norm(raw: &str) -> String {
    match normalize_path(raw) {
        Ok(n) => n.as_path().to_owned(),
        Err(e) => panic!("{raw:?} refused: {e}"),
    }
}

fn refused(raw: &str) -> PathError {
    match normalize_path(raw) {
        Ok(n) => panic!("{raw:?} accepted as {:?}", n.as_path()),
        Err(e) => e,
    }
}

#[test]
fn already_normal_paths_are_borrowed_not_copied() {
    for raw in [
        "/",
        "/a",
        "/a/b/",
        "/api/v1/users",
        "/a%20b",
        "/a:b@c!$&'()*+,=",
        "/~user/x.y-z_",
        "/a%3Ab",
        "/admin.",
        "/a%252e",
    ] {
        let n = normalize_path(raw).unwrap();
        assert_eq!(n.as_path(), raw);
        assert!(!n.is_rewritten(), "{raw:?}");
        assert!(matches!(n.to_request_target(), Cow::Borrowed(t) if t == raw));
    }
}

#[test]
fn single_dot_segments_are_removed() {
    assert_eq!(norm("/a/./b"), "/a/b");
    assert_eq!(norm("/./a"), "/a");
    assert_eq!(norm("/."), "/");
    assert_eq!(norm("/a/."), "/a/");
    assert_eq!(norm("/a/./"), "/a/");
}

#[test]
fn double_dot_segments_never_climb_above_root() {
    assert_eq!(norm("/a/b/../c"), "/a/c");
    assert_eq!(norm("/a/b/../../.."), "/");
    assert_eq!(norm("/../a"), "/a");
    assert_eq!(norm("/.."), "/");
    assert_eq!(norm("/../../../etc/passwd"), "/etc/passwd");
    assert_eq!(norm("/a/.."), "/");
    assert_eq!(norm("/a/b/.."), "/a/");
    assert_eq!(norm("/a/b/../"), "/a/");
}

#[test]
fn encoded_dots_are_decoded_before_dot_segments_are_resolved() {
    assert_eq!(norm("/a/%2e%2e/b"), "/b");
    assert_eq!(norm("/a/b/%2E%2e/"), "/a/");
    assert_eq!(norm("/a/.%2e/b"), "/b");
    assert_eq!(norm("/a/%2e/b"), "/a/b");
    assert_eq!(norm("/a/%2e"), "/a/");
    assert_eq!(norm("/%2e%2e/%2e%2e/etc/passwd"), "/etc/passwd");
    assert_eq!(norm("/public/%2E%2E/admin"), "/admin");
}

#[test]
fn duplicate_slashes_are_merged() {
    assert_eq!(norm("//"), "/");
    assert_eq!(norm("///"), "/");
    assert_eq!(norm("//a//b//"), "/a/b/");
    assert_eq!(norm("/a//../b"), "/b");
    assert_eq!(norm("//admin"), "/admin");
}

#[test]
fn trailing_slash_is_kept_but_never_invented() {
    assert_eq!(norm("/a/"), "/a/");
    assert_eq!(norm("/a"), "/a");
    assert_eq!(norm("/a//"), "/a/");
    assert_eq!(norm("/a/b/./c"), "/a/b/c");
}

#[test]
fn encoded_slash_and_backslash_are_refused() {
    assert_eq!(refused("/a%2Fb"), PathError::EncodedSlash);
    assert_eq!(refused("/a%2fb"), PathError::EncodedSlash);
    assert_eq!(refused("/admin%2f..%2f"), PathError::EncodedSlash);
    assert_eq!(refused("/a/..%2f..%2fetc"), PathError::EncodedSlash);
    assert_eq!(refused("/a%5Cb"), PathError::EncodedBackslash);
    assert_eq!(refused("/a%5cb"), PathError::EncodedBackslash);
}

#[test]
fn raw_backslash_is_refused() {
    assert_eq!(refused("/a\\b"), PathError::Backslash);
    assert_eq!(refused("/..\\admin"), PathError::Backslash);
}

#[test]
fn nul_and_control_characters_are_refused() {
    assert_eq!(refused("/a%00"), PathError::EncodedNul);
    assert_eq!(refused("/a%00.jpg"), PathError::EncodedNul);
    assert_eq!(refused("/a\0b"), PathError::ControlChar(0));
    assert_eq!(refused("/a\nb"), PathError::ControlChar(b'\n'));
    assert_eq!(
        refused("/a\r\nX-Injected: 1"),
        PathError::ControlChar(b'\r')
    );
    assert_eq!(refused("/a\tb"), PathError::ControlChar(b'\t'));
    assert_eq!(refused("/a\x7fb"), PathError::ControlChar(0x7f));
    assert_eq!(refused("/a?x=\0"), PathError::ControlChar(0));
}

#[test]
fn malformed_percent_encoding_is_refused() {
    for raw in [
        "/%", "/a%", "/a%4", "/a%G1", "/a%4g", "/%%41", "/a%-1", "/a% 1",
    ] {
        assert_eq!(refused(raw), PathError::InvalidPercentEncoding, "{raw:?}");
    }
}

#[test]
fn only_origin_form_is_accepted() {
    for raw in ["", "*", "a/b", "http://host/a", "?a=1", "%2Fa", ".."] {
        assert_eq!(refused(raw), PathError::NotOriginForm, "{raw:?}");
    }
}

#[test]
fn fragments_are_refused_wherever_they_are() {
    assert_eq!(refused("/a#b"), PathError::Fragment);
    assert_eq!(refused("/a?b#c"), PathError::Fragment);
    assert_eq!(refused("#"), PathError::Fragment);
    assert_eq!(refused("/a;x#/b"), PathError::Fragment);
}

#[test]
fn path_parameters_are_stripped_from_every_segment() {
    assert_eq!(norm("/a;x=1/b"), "/a/b");
    assert_eq!(norm("/a;x=1;y=2/b;z"), "/a/b");
    assert_eq!(norm("/a;x/"), "/a/");
    assert_eq!(norm("/admin;"), "/admin");
    assert_eq!(norm("/admin;jsessionid=abc"), "/admin");
    assert_eq!(norm("/;x/a"), "/a");
    assert_eq!(norm("/a/;x"), "/a/");
}

#[test]
fn tomcat_style_semicolon_dot_dot_resolves_like_the_app_does() {
    assert_eq!(norm("/public/..;/admin"), "/admin");
    assert_eq!(norm("/public/..;x=y/admin"), "/admin");
    assert_eq!(norm("/public/.;/admin"), "/public/admin");
    assert_eq!(norm("/public/%2e%2e;/admin"), "/admin");
}

#[test]
fn escaped_semicolon_is_data_not_a_parameter() {
    assert_eq!(norm("/a%3Bb"), "/a%3Bb");
    assert_eq!(norm("/a%3bb"), "/a%3Bb");
}

#[test]
fn parameters_are_still_checked_before_being_dropped() {
    assert_eq!(refused("/a;p=%2F/b"), PathError::EncodedSlash);
    assert_eq!(refused("/a;p=\x01"), PathError::ControlChar(1));
    assert_eq!(refused("/a;p=%zz"), PathError::InvalidPercentEncoding);
    assert_eq!(refused("/a;p=\\"), PathError::Backslash);
}

#[test]
fn escape_hex_is_uppercased() {
    assert_eq!(norm("/a%3ab"), "/a%3Ab");
    assert_eq!(norm("/%e2%82%ac"), "/%E2%82%AC");
    assert_eq!(norm("/%aB%Cd"), "/%AB%CD");
}

#[test]
fn escaped_unreserved_characters_are_decoded() {
    assert_eq!(norm("/%61dmin"), "/admin");
    assert_eq!(norm("/%41%42%43"), "/ABC");
    assert_eq!(norm("/a%2Db%5Fc%7Ed%2Ee"), "/a-b_c~d.e");
    assert_eq!(norm("/%7e"), "/~");
    assert_eq!(norm("/%30%39"), "/09");
}

#[test]
fn escaped_reserved_characters_stay_escaped() {
    assert_eq!(norm("/a%21b"), "/a%21b");
    assert_eq!(norm("/a%3fb"), "/a%3Fb");
    assert_eq!(norm("/a%23b"), "/a%23b");
    assert_eq!(norm("/100%25"), "/100%25");
}

#[test]
fn lowercase_escapes_of_reserved_characters_stay_escaped() {
    // Rewriting the hex must not decode: `%3a` is `%3A`, never `:`.
    for &b in b"!$&'()*+,;=:@?#[]" {
        let raw = format!("/a%{b:02x}");
        assert_eq!(norm(&raw), format!("/a%{b:02X}"), "{raw:?}");
        let raw = format!("/a%{b:02X}");
        assert_eq!(norm(&raw), raw, "{raw:?}");
    }
}

#[test]
fn trailing_dots_inside_a_segment_are_kept() {
    assert_eq!(norm("/admin."), "/admin.");
    assert_eq!(norm("/admin.."), "/admin..");
    assert_eq!(norm("/admin%2E"), "/admin.");
    assert_eq!(norm("/a./b"), "/a./b");
    assert_eq!(norm("/..."), "/...");
    assert_ne!(norm("/admin."), "/admin");
}

#[test]
fn double_encoding_is_not_decoded_twice() {
    assert_eq!(norm("/%252e%252e/admin"), "/%252e%252e/admin");
    assert_eq!(norm("/%252f"), "/%252f");
}

#[test]
fn bytes_not_allowed_raw_are_escaped() {
    assert_eq!(norm("/a b"), "/a%20b");
    assert_eq!(norm("/a{b}"), "/a%7Bb%7D");
    assert_eq!(norm("/a\"<>^`|[]"), "/a%22%3C%3E%5E%60%7C%5B%5D");
    assert_eq!(norm("/caf\u{e9}"), "/caf%C3%A9");
    assert_eq!(norm("/caf\u{e9}"), norm("/caf%c3%a9"));
}

#[test]
fn query_is_split_off_verbatim_and_never_normalised() {
    let n = normalize_path("/a/../b?x=../y&z=%2F&w=%2e#").unwrap_err();
    assert_eq!(n, PathError::Fragment);

    let n = normalize_path("/a/../b?x=../y&z=%2F&w=%2e;\\").unwrap();
    assert_eq!(n.as_path(), "/b");
    assert_eq!(n.query(), Some("x=../y&z=%2F&w=%2e;\\"));
    assert_eq!(n.to_request_target(), "/b?x=../y&z=%2F&w=%2e;\\");

    let n = normalize_path("/a?b?c").unwrap();
    assert_eq!((n.as_path(), n.query()), ("/a", Some("b?c")));
}

#[test]
fn bare_question_mark_is_kept_in_the_forwarded_target() {
    let n = normalize_path("/a/./b?").unwrap();
    assert_eq!(n.query(), Some(""));
    assert_eq!(n.to_request_target(), "/a/b?");

    let n = normalize_path("/a/./b").unwrap();
    assert_eq!(n.query(), None);
    assert_eq!(n.to_request_target(), "/a/b");
}

#[test]
fn rewritten_target_is_owned_and_flagged() {
    let n = normalize_path("/a//b?q=1").unwrap();
    assert!(n.is_rewritten());
    assert!(matches!(n.to_request_target(), Cow::Owned(t) if t == "/a/b?q=1"));
}

#[test]
fn errors_explain_themselves() {
    assert_eq!(
        PathError::ControlChar(0).to_string(),
        "request target contains control character 0x00"
    );
    assert!(PathError::EncodedSlash.to_string().contains("%2F"));
}

/// Every string of up to four tokens from an alphabet of path tricks, each
/// behind a leading '/'. Exhaustive over a small alphabet finds more than
/// random sampling over a large one.
fn tricky_paths() -> Vec<String> {
    const TOKENS: &[&str] = &[
        "/", ".", "..", "%2e", "%2E", "a", "B", ";", ";x=1", "%61", "%7e", "%3a", "%3B", "%",
        "%2f", "\\", "~", "\u{e9}", " ", "%25",
    ];
    let mut all = vec![String::from("/")];
    let mut frontier = all.clone();
    for _ in 0..4 {
        let mut next = Vec::with_capacity(frontier.len() * TOKENS.len());
        for prefix in &frontier {
            for token in TOKENS {
                next.push(format!("{prefix}{token}"));
            }
        }
        all.extend(next.iter().cloned());
        frontier = next;
    }
    all
}

#[test]
fn normal_form_is_a_fixed_point() {
    let mut accepted = 0;
    for raw in tricky_paths() {
        let Ok(first) = normalize_path(&raw) else {
            continue;
        };
        accepted += 1;
        let again = normalize_path(first.as_path())
            .unwrap_or_else(|e| panic!("{raw:?} -> {:?} refused: {e}", first.as_path()));
        assert_eq!(again.as_path(), first.as_path(), "input {raw:?}");
        assert!(!again.is_rewritten(), "input {raw:?}");
    }
    assert!(accepted > 50_000, "only {accepted} accepted");
}

#[test]
fn fast_path_agrees_with_full_normalisation() {
    for raw in tricky_paths() {
        if is_normal(&raw) {
            assert_eq!(normalize_slow(&raw).as_deref(), Ok(raw.as_str()));
        }
    }
}

#[test]
fn normal_form_has_no_dot_or_empty_segments_or_parameters() {
    for raw in tricky_paths() {
        let Ok(n) = normalize_path(&raw) else {
            continue;
        };
        let path = n.as_path();
        assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
        assert!(!path.contains(';'), "{raw:?} -> {path:?}");
        assert!(!path.contains("//"), "{raw:?} -> {path:?}");
        let inner = path.trim_end_matches('/');
        for segment in inner.split('/').skip(1) {
            assert!(!matches!(segment, "" | "." | ".."), "{raw:?} -> {path:?}");
        }
    }
}
