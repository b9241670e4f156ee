//! Writes a [`Value`] back as block-style YAML that reads the same in a
//! YAML 1.2 parser (serde_norway) and a YAML 1.1 one (kubectl's go-yaml,
//! PyYAML).
//!
//! serde_norway's own serializer follows YAML 1.2 only: it writes the
//! string "on" as a bare `on`, which kubectl reads as the boolean true, and
//! Kubernetes then rejects the manifest (or, worse, reads a different
//! value). So strings are written bare only when they cannot be anything
//! but a string in either version; everything else is quoted.

use serde_norway::{Mapping, Value};

/// Why a value cannot be written as Kubernetes YAML.
pub(super) type EmitError = String;

/// The document body, ending in a newline, without a `---` marker.
pub(super) fn document(value: &Value) -> Result<String, EmitError> {
    let mut out = String::new();
    match value {
        Value::Mapping(m) if !m.is_empty() => map(&mut out, m, 0, false)?,
        Value::Sequence(s) if !s.is_empty() => seq(&mut out, s, 0, false)?,
        other => {
            out.push_str(&inline(other)?);
            out.push('\n');
        }
    }
    Ok(out)
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A mapping whose keys sit at `indent`. `continuing`: the cursor is
/// already after `- ` on the first key's line.
fn map(out: &mut String, m: &Mapping, indent: usize, continuing: bool) -> Result<(), EmitError> {
    for (i, (k, v)) in m.iter().enumerate() {
        if !(continuing && i == 0) {
            pad(out, indent);
        }
        out.push_str(&key(k)?);
        out.push(':');
        child(out, v, indent, false)?;
    }
    Ok(())
}

/// A sequence whose dashes sit at `indent`.
fn seq(out: &mut String, s: &[Value], indent: usize, continuing: bool) -> Result<(), EmitError> {
    for (i, item) in s.iter().enumerate() {
        if !(continuing && i == 0) {
            pad(out, indent);
        }
        out.push_str("- ");
        child(out, item, indent, true)?;
    }
    Ok(())
}

/// The value after `key:` (`after_dash` false) or `- ` (true); `indent`
/// is that of the key or dash.
fn child(out: &mut String, v: &Value, indent: usize, after_dash: bool) -> Result<(), EmitError> {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            if after_dash {
                map(out, m, indent + 2, true)
            } else {
                out.push('\n');
                map(out, m, indent + 2, false)
            }
        }
        Value::Sequence(s) if !s.is_empty() => {
            if after_dash {
                seq(out, s, indent + 2, true)
            } else {
                // kubectl's layout: a sequence under a key is not indented.
                out.push('\n');
                seq(out, s, indent, false)
            }
        }
        Value::String(s) if literal_block_ok(s) => {
            if !after_dash {
                out.push(' ');
            }
            literal_block(out, s, indent + 2);
            Ok(())
        }
        scalar => {
            if !after_dash {
                out.push(' ');
            }
            out.push_str(&inline(scalar)?);
            out.push('\n');
            Ok(())
        }
    }
}

fn key(k: &Value) -> Result<String, EmitError> {
    match k {
        Value::String(s) => Ok(if needs_quotes(s) || s.contains('\n') {
            quoted(s)
        } else {
            s.clone()
        }),
        Value::Mapping(_) | Value::Sequence(_) => {
            Err("a mapping key is itself a mapping or sequence".into())
        }
        other => inline(other),
    }
}

/// A scalar or an empty collection on one line.
fn inline(v: &Value) -> Result<String, EmitError> {
    Ok(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            // serde_norway writes numbers the way YAML reads them back
            // (`.inf`, `1.0e+21`, ...); take its spelling.
            serde_norway::to_string(&Value::Number(n.clone()))
                .map_err(|e| e.to_string())?
                .trim_end()
                .to_owned()
        }
        Value::String(s) if needs_quotes(s) => quoted(s),
        Value::String(s) => s.clone(),
        Value::Mapping(m) if m.is_empty() => "{}".into(),
        Value::Sequence(s) if s.is_empty() => "[]".into(),
        Value::Tagged(t) => return Err(format!("YAML tag {} is not supported", t.tag)),
        Value::Mapping(_) | Value::Sequence(_) => {
            return Err("internal: non-empty collection written inline".into())
        }
    })
}

/// Words YAML 1.1 or 1.2 resolve to booleans or null.
const SPECIAL_WORDS: &[&str] = &[
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
];

/// Whether a string must be quoted to stay a string in YAML 1.1 and 1.2.
pub(super) fn needs_quotes(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return true;
    };
    if SPECIAL_WORDS.contains(&s.to_ascii_lowercase().as_str()) {
        return true;
    }
    let plain_char = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '_' | '.' | '/' | '@' | '+' | '=' | ':' | ',' | '(' | ')' | ' '
            )
    };
    if !s.chars().all(plain_char) {
        return true;
    }
    // Indicators and characters a plain scalar may not start with; '.'
    // because of `.inf`/`.nan`, '=' and '@' because YAML reserves them.
    if matches!(first, '@' | '=' | '.' | ',' | '(' | ')' | ' ' | ':') {
        return true;
    }
    if first == '-' && !s[1..].starts_with(|c: char| c != ' ') {
        return true; // "-" alone or "- x" reads as a sequence entry
    }
    if s.ends_with(' ') || s.ends_with(':') || s.contains(": ") {
        return true;
    }
    // Anything that could be a number or timestamp in either version:
    // 010 (1.1 octal), 1_000, 0x1F, 0o17, 0b11, 1:20 (1.1 base 60),
    // 1e3, 2001-12-14, 2001-12-14T21:59:43Z...
    let numeric_char = |c: char| c.is_ascii_hexdigit() || "_.:+-xXoOtTzZ".contains(c);
    (first.is_ascii_digit() || first == '+' || first == '-') && s.chars().all(numeric_char)
}

/// Characters YAML cannot carry raw inside quotes (non-printable ones, and
/// line separators YAML 1.1 treats as line breaks).
fn must_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn quoted(s: &str) -> String {
    if !s.chars().any(must_escape) {
        // Single quotes read best; double quotes when the text has single
        // quotes of its own and nothing double quotes would need to escape.
        if !s.contains('\'') || s.contains(['"', '\\']) {
            return format!("'{}'", s.replace('\'', "''"));
        }
        return format!("\"{s}\"");
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if must_escape(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Multi-line text reads best as a literal block (`|`); only text whose
/// every character can appear raw, and whose first line does not start
/// with blanks (that would need an indentation indicator), is written so.
fn literal_block_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && !s.chars().any(|c| c != '\n' && must_escape(c))
}

fn literal_block(out: &mut String, s: &str, indent: usize) {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    out.push_str(match trailing {
        0 => "|-\n",
        1 => "|\n",
        _ => "|+\n",
    });
    for line in body.split('\n') {
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
}
