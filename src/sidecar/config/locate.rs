//! Where in the file a config error is: the line a message is printed
//! with, found from the parser's location or from a piece of the text.

use super::ConfigError;

/// A YAML or type error, at its line (or, for a value refused by its own
/// parser, the line of the quoted value).
pub(super) fn parse_error(text: &str, file: &str, e: &serde_norway::Error) -> ConfigError {
    let Some(loc) = e.location() else {
        return ConfigError::Invalid {
            file: file.into(),
            message: e.to_string(),
        };
    };
    let message = strip_location(&e.to_string());
    // For a value refused by its own parser (a SPIFFE ID, say) the parser
    // reports the enclosing mapping; the line of the quoted value itself is
    // more useful.
    let line = quoted_value(&message)
        .and_then(|v| line_of_from(text, v, loc.line()))
        .unwrap_or(loc.line());
    ConfigError::At {
        file: file.into(),
        line,
        column: loc.column(),
        message,
    }
}

/// A cross-field rule refused by `Config::validate`: its message, at the
/// line of the text it names, if any.
pub(super) fn validation_error(
    text: &str,
    file: &str,
    (message, needle): (String, Option<String>),
) -> ConfigError {
    match needle.and_then(|n| line_of(text, &n)) {
        Some(line) => ConfigError::At {
            file: file.into(),
            line,
            column: 1,
            message,
        },
        None => ConfigError::Invalid {
            file: file.into(),
            message,
        },
    }
}

/// serde_norway appends " at line L column C"; we print the location first.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// The first double-quoted piece of an error message.
fn quoted_value(msg: &str) -> Option<&str> {
    let start = msg.find('"')? + 1;
    let len = msg[start..].find('"')?;
    Some(&msg[start..start + len]).filter(|v| !v.is_empty())
}

/// 1-based line of the first occurrence of `needle` at or after line `from`.
fn line_of_from(text: &str, needle: &str, from: usize) -> Option<usize> {
    let skip: usize = text
        .split_inclusive('\n')
        .take(from.saturating_sub(1))
        .map(str::len)
        .sum();
    let pos = text.get(skip..)?.find(needle)? + skip;
    Some(text[..pos].matches('\n').count() + 1)
}

/// 1-based line of the last occurrence of `needle` (the last, because a
/// duplicate is the later one).
fn line_of(text: &str, needle: &str) -> Option<usize> {
    let pos = text.rfind(needle)?;
    Some(text[..pos].matches('\n').count() + 1)
}
