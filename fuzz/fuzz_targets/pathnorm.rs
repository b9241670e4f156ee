//! Path normalisation: never a panic; the normal form is a fixed point (as a
//! path and as a whole forwarded target), has no empty, `.` or `..`
//! segment but a final one, no parameter, no escape of an unreserved byte;
//! and what hyper accepted as a target stays acceptable once rewritten.
//! The strict profile on top of it never panics and keeps its promises.
#![no_main]

use http::uri::PathAndQuery;
use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::pathnorm::normalize_path;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn check_shape(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    assert!(path.is_ascii(), "{path:?}");
    for b in path.bytes() {
        assert!(
            !b.is_ascii_control() && !matches!(b, b'#' | b';' | b'\\' | b'?' | b' '),
            "{path:?} has raw byte {b:#04x}"
        );
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(*segment != "." && *segment != "..", "{path:?}");
        assert!(!segment.is_empty() || last, "empty segment in {path:?}");
    }
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = &bytes[i + 1..i + 3];
        assert!(
            hex.iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{path:?}"
        );
        let v = u8::from_str_radix(std::str::from_utf8(hex).expect("ascii"), 16).expect("hex");
        assert!(!unreserved(v) && !matches!(v, 0 | b'/' | b'\\'), "{path:?}");
    }
}

/// The strict profile on a normal form: never a panic; what it accepts has
/// no `%25HH`, no segment ending in `.`; folded, it is the lowercase path.
fn check_strict_profile(path: &str) {
    use meshguard::sidecar::pathnorm::strict::check_strict;
    let Ok(kept) = check_strict(path, false) else {
        assert!(check_strict(path, true).is_err(), "{path:?}");
        return;
    };
    assert_eq!(kept, path);
    assert!(path.split('/').all(|s| !s.ends_with('.')), "{path:?}");
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices("%25") {
        let next = &bytes[i + 3..];
        assert!(
            next.len() < 2 || !next[..2].iter().all(u8::is_ascii_hexdigit),
            "{path:?}"
        );
    }
    let folded = check_strict(path, true).expect("folding refuses nothing more");
    assert_eq!(folded, path.to_ascii_lowercase());
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize_path(raw) else {
        return;
    };
    let path = normal.as_path();
    check_shape(path);
    check_strict_profile(path);

    let again = normalize_path(path).expect("the normal form is a valid path");
    assert_eq!(again.as_path(), path, "not a fixed point: {raw:?}");
    assert!(
        !again.is_rewritten(),
        "normal form {path:?} is rewritten again"
    );

    let target = normal.to_request_target();
    let reparsed = normalize_path(&target).expect("the forwarded target is valid");
    assert_eq!(reparsed.as_path(), path);
    assert_eq!(reparsed.query(), normal.query());
    assert!(!reparsed.is_rewritten());
    if !normal.is_rewritten() {
        assert_eq!(&*target, raw);
    }
    if PathAndQuery::try_from(raw).is_ok() {
        assert!(
            PathAndQuery::try_from(&*target).is_ok(),
            "hyper accepted {raw:?} but not its normal form {target:?}"
        );
    }
});
