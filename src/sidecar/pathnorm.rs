//! Request path normalisation, so that path rules match what the app serves.
//!
//! A path rule is only as good as the path it is matched against. Envoy
//! (CVE-2019-9901), Istio (istio#27409) and again Envoy/Istio
//! (CVE-2021-31920) shipped path authorisation that could be bypassed with
//! `..`, `%2e%2e`, `//` or escaped slashes, because the proxy matched one
//! spelling of a path while the app resolved another. meshguard therefore
//! matches rules only against the RFC 3986 normal form built here, refuses
//! spellings whose meaning differs between apps, and forwards exactly the
//! target it authorised ([`NormalizedPath::to_request_target`]).
//!
//! The steps, in order:
//! 1. The query (after the first `?`) is split off and kept verbatim; it is
//!    never matched. A `#` anywhere is refused: fragments are never sent.
//! 2. Each segment loses its `;` parameters (`/a;x=1/b` → `/a/b`). Servlet
//!    containers (Tomcat, Jetty) drop them before routing, so
//!    `/public/..;/admin` *is* `/admin` to them; other apps would see a
//!    segment `..;`. Dropping them makes both readings agree once meshguard
//!    forwards the normal form. Apps that give meaning to matrix parameters
//!    lose them; that is the price of one unambiguous path. An escaped
//!    `%3B` is data, not a delimiter, and is kept.
//! 3. Escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!    (RFC 3986 §6.2.2.2), so `%61dmin` is `admin` and `%2e%2e` is `..`;
//!    other escapes stay escaped with uppercase hex (`%3a` → `%3A`). Bytes
//!    that may not appear raw in a path (space, `{`, non-ASCII, ...) are
//!    escaped, so `/a{` and `/a%7B` are one name.
//! 4. Empty segments are merged (`//` → `/`), then `.` and `..` are resolved
//!    without ever climbing above the root (`/../a` → `/a`).
//! 5. A trailing slash is kept (`/a/` and `/a` are different resources), and
//!    so are trailing dots inside a segment: `/admin.` is not `/admin`, so a
//!    rule for `/admin` does not match it. Apps that strip such dots (some
//!    Windows servers) must be protected by rules on both names.
//!
//! Refused outright (each a [`PathError`] variant): escaped `/` (`%2F`) or
//! `\` (`%5C`), because apps disagree on whether they separate segments;
//! `%00` and raw control characters, which truncate or split paths in C
//! code and logs; a raw `\`, which some servers treat as `/`; malformed
//! escapes; and anything that is not origin-form (including `*`).
//!
//! Not handled, and why: escapes of reserved characters other than `/` and
//! `\` (`%21` vs `!`) are kept distinct as RFC 3986 requires, so a rule on a
//! path containing a sub-delimiter names one spelling only; and double
//! encoding (`%252e`) stays `%252e`, which only an app that decodes twice
//! would read as `.` (the opt-in strict profile, [`strict`], refuses such
//! spellings). Escaped control characters other than `%00` (such as
//! `%0A`) stay escaped: they are data to the app, which must not decode
//! them into logs or headers.

use std::borrow::Cow;

pub mod strict;

/// Why a request target cannot be normalised. Each variant is one rule, so a
/// refusal can be logged and counted precisely. Any of them means the request
/// is malformed or hostile; the caller answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request target is not an absolute path (origin-form): it must start with '/'")]
    NotOriginForm,
    #[error("request target contains a fragment ('#')")]
    Fragment,
    #[error("request target contains control character 0x{0:02X}")]
    ControlChar(u8),
    #[error("path contains a raw backslash")]
    Backslash,
    #[error("path contains an encoded slash (%2F)")]
    EncodedSlash,
    #[error("path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    #[error("path contains an encoded NUL (%00)")]
    EncodedNul,
    #[error("path contains an invalid percent-encoding")]
    InvalidPercentEncoding,
}

/// A request target split into its normalised path and its verbatim query.
///
/// Borrows from the input and allocates only when the path had to change,
/// which well-behaved clients never cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    /// The whole input, returned by `to_request_target` when nothing changed.
    raw: &'a str,
    path: Cow<'a, str>,
    query: Option<&'a str>,
}

impl<'a> NormalizedPath<'a> {
    /// The normalised path: starts with `/`, the form policy rules match.
    pub fn as_path(&self) -> &str {
        &self.path
    }

    /// The query without its `?`, exactly as received (`Some("")` for a
    /// bare `?`, so that the forwarded target keeps it).
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// True when the normal form differs from what the client sent, i.e. the
    /// forwarded request must carry a rebuilt target.
    pub fn is_rewritten(&self) -> bool {
        matches!(self.path, Cow::Owned(_))
    }

    /// The target to forward: the normalised path plus `?query` if any.
    /// Forwarding this, not the raw target, guarantees the app serves the
    /// very path that was authorised.
    pub fn to_request_target(&self) -> Cow<'a, str> {
        match (&self.path, self.query) {
            (Cow::Borrowed(_), _) => Cow::Borrowed(self.raw),
            (Cow::Owned(path), None) => Cow::Owned(path.clone()),
            (Cow::Owned(path), Some(query)) => {
                let mut target = String::with_capacity(path.len() + 1 + query.len());
                target.push_str(path);
                target.push('?');
                target.push_str(query);
                Cow::Owned(target)
            }
        }
    }
}

/// Normalises an origin-form request target (`/path?query`). See the module
/// documentation for the rules.
pub fn normalize_path(raw: &str) -> Result<NormalizedPath<'_>, PathError> {
    let (path, query) = match raw.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (raw, None),
    };
    if let Some(query) = query {
        check_query(query)?;
    }
    if !path.starts_with('/') {
        // Also refuses `*` (asterisk-form, OPTIONS) and absolute-form: the
        // caller deals with those before asking for a path.
        return Err(if path.contains('#') {
            PathError::Fragment
        } else {
            PathError::NotOriginForm
        });
    }
    let path = if is_normal(path) {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normalize_slow(path)?)
    };
    Ok(NormalizedPath { raw, path, query })
}

/// The query is never matched, so only what makes the whole target
/// malformed is refused: a fragment and control characters.
fn check_query(query: &str) -> Result<(), PathError> {
    for &b in query.as_bytes() {
        match b {
            b'#' => return Err(PathError::Fragment),
            b if b.is_ascii_control() => return Err(PathError::ControlChar(b)),
            _ => {}
        }
    }
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes kept raw in the normal form: RFC 3986 `pchar` minus `%` (escapes
/// are handled apart) and minus `;` (parameters are stripped).
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the escape starting at `bytes[i] == b'%'`.
fn decode_escape(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    match (bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(&hi), Some(&lo)) => match (hex_value(hi), hex_value(lo)) {
            (Some(hi), Some(lo)) => Ok((hi << 4) | lo),
            _ => Err(PathError::InvalidPercentEncoding),
        },
        _ => Err(PathError::InvalidPercentEncoding),
    }
}

/// The fast path: true only if `path` (starting with '/') is valid and
/// already in normal form, so it can be used without copying. Anything
/// unusual answers false and is left to `normalize_slow`, which alone
/// decides between rewriting and refusing.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut segment_start = 1;
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'/' => {
                if is_removable_segment(&bytes[segment_start..i]) {
                    return false;
                }
                segment_start = i + 1;
            }
            b'%' => {
                let upper_hex = |b: u8| b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
                match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&hi), Some(&lo)) if upper_hex(hi) && upper_hex(lo) => {}
                    _ => return false,
                }
                match decode_escape(bytes, i) {
                    Ok(v) if !is_unreserved(v) && !matches!(v, b'/' | b'\\' | 0) => {}
                    _ => return false,
                }
                i += 3;
                continue;
            }
            b if is_plain(b) => {}
            _ => return false,
        }
        i += 1;
    }
    // A final empty segment is a trailing slash and stays; `.`/`..` do not.
    !matches!(&bytes[segment_start..], b"." | b"..")
}

/// Empty, `.` and `..` segments never appear in the normal form.
fn is_removable_segment(segment: &[u8]) -> bool {
    matches!(segment, b"" | b"." | b"..")
}

/// Full normalisation; `path` starts with '/'.
fn normalize_slow(path: &str) -> Result<String, PathError> {
    check_path_bytes(path)?;
    // `out` holds "/seg" pieces; popping a segment truncates at its slash.
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    for raw_segment in path[1..].split('/') {
        let segment = raw_segment.split(';').next().unwrap_or_default();
        let start = out.len();
        out.push('/');
        push_segment(&mut out, segment);
        let (dot, dotdot) = match &out[start + 1..] {
            "" | "." => (true, false),
            ".." => (true, true),
            _ => (false, false),
        };
        // A removed last segment leaves the path pointing at a directory,
        // as RFC 3986 §5.2.4 does (`/a/b/..` → `/a/`).
        trailing_slash = dot;
        if dot {
            out.truncate(start);
            if dotdot {
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Refuses what no rewriting can make safe, anywhere in the path (the `;`
/// parameters that are about to be dropped included: a malformed request is
/// refused whole).
fn check_path_bytes(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => return Err(PathError::Fragment),
            b'\\' => return Err(PathError::Backslash),
            b if b.is_ascii_control() => return Err(PathError::ControlChar(b)),
            b'%' => {
                match decode_escape(bytes, i)? {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0 => return Err(PathError::EncodedNul),
                    _ => {}
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Appends one segment (without parameters, already checked) in normal
/// form: unreserved escapes decoded, other escapes uppercased, bytes not
/// allowed raw escaped.
fn push_segment(out: &mut String, segment: &str) {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            // check_path_bytes has validated every escape. Only unreserved
            // characters leave their escape: `%3A` and `:` may differ to
            // the app (RFC 3986 §6.2.2.2).
            if let Ok(v) = decode_escape(bytes, i) {
                if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    push_escaped(out, v);
                }
            }
            i += 3;
        } else {
            push_byte(out, b);
            i += 1;
        }
    }
}

/// Appends a raw byte: kept if a path may carry it raw, escaped otherwise.
fn push_byte(out: &mut String, b: u8) {
    if is_plain(b) {
        out.push(char::from(b));
    } else {
        push_escaped(out, b);
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xF)]));
}

#[cfg(test)]
mod tests;
