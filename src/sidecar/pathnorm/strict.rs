//! The strict path profile, for apps that read a path differently from its
//! RFC 3986 normal form: apps that percent-decode twice, Windows servers
//! (which drop trailing dots and spaces and open NTFS streams), and apps
//! that route case-insensitively. Standard normalisation keeps such
//! spellings distinct, so a rule on `/admin` does not cover them, while the
//! app may serve `/admin` for them. Under the strict profile they are
//! refused instead, each with its own reason.
//!
//! The check runs on the normal form ([`super::normalize_path`]), where
//! escapes of unreserved characters are already decoded and hex is
//! uppercase, so `%25%32%65` arrives here as `%252E` and one rule catches
//! every spelling. Raw and encoded backslashes are refused by the standard
//! profile already.

use std::borrow::Cow;

/// Why the strict profile refuses a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StrictPathError {
    /// `%25` followed by two hex digits: decoded twice, it is another
    /// character (`%252F` is `/`, `%252E` is `.`, `%2561` is `a`).
    #[error("path contains a double-encoded character (%25{0}{1}, which decodes twice to {2:?})")]
    DoubleEncoded(char, char, char),
    /// `/admin.` or `/admin..`: Windows drops trailing dots.
    #[error("a path segment ends in '.' (read without it on Windows)")]
    TrailingDot,
    /// `/admin%20`: Windows drops trailing spaces; other apps trim whitespace.
    #[error("a path segment ends in whitespace (%{0})")]
    TrailingWhitespace(&'static str),
    /// `/admin::$DATA`: an NTFS stream of the file `/admin`.
    #[error("a path segment names an NTFS stream ('::$')")]
    NtfsStream,
}

/// Escapes of whitespace as the normal form writes them.
const WHITESPACE: [&str; 6] = ["%20", "%09", "%0A", "%0B", "%0C", "%0D"];

/// Checks a normalised path (no query) against the strict profile; returns
/// the path rules are matched against: the same, or its ASCII lowercase
/// when `fold_case` (the policy's patterns are folded the same way).
pub fn check_strict(path: &str, fold_case: bool) -> Result<Cow<'_, str>, StrictPathError> {
    if let Some(at) = path.find("%25") {
        double_encoding(&path[at..])?;
    }
    for segment in path.split('/') {
        check_segment(segment)?;
    }
    if fold_case && path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(Cow::Owned(path.to_ascii_lowercase()));
    }
    Ok(Cow::Borrowed(path))
}

/// Every `%25HH` from the first `%25` on.
fn double_encoding(rest: &str) -> Result<(), StrictPathError> {
    let bytes = rest.as_bytes();
    let mut i = 0;
    while let Some(at) = rest[i..].find("%25") {
        let start = i + at + 3;
        if let (Some(&h), Some(&l)) = (bytes.get(start), bytes.get(start + 1)) {
            if let (Some(hi), Some(lo)) = (hex(h), hex(l)) {
                let decoded = char::from(hi << 4 | lo);
                return Err(StrictPathError::DoubleEncoded(
                    char::from(h),
                    char::from(l),
                    decoded,
                ));
            }
        }
        i = start;
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), StrictPathError> {
    if segment.ends_with('.') {
        return Err(StrictPathError::TrailingDot);
    }
    let bytes = segment.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(3)..];
    if let Some(ws) = WHITESPACE
        .iter()
        .find(|ws| tail.eq_ignore_ascii_case(ws.as_bytes()))
    {
        return Err(StrictPathError::TrailingWhitespace(&ws[1..]));
    }
    // `:` and `$` may arrive escaped (kept so by the normal form, in
    // uppercase hex), and IIS decodes them before opening the file.
    let stream = if segment.contains("%3A") || segment.contains("%24") {
        segment
            .replace("%3A", ":")
            .replace("%24", "$")
            .contains("::$")
    } else {
        segment.contains("::$")
    };
    if stream {
        return Err(StrictPathError::NtfsStream);
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
