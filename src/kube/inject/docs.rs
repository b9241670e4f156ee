//! A multi-document YAML stream cut into its documents as text, so that a
//! document we do not change is written back byte for byte (comments,
//! quoting and all), and every error can name the document and the line.

use super::InjectError;
use serde_norway::Value;

/// One document's text, from its `---` line (if it has one) up to the next.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk<'a> {
    pub text: &'a str,
    /// Whether `text` starts with a `---` line.
    pub has_marker: bool,
    /// 1-based line of the input where `text` starts.
    pub first_line: usize,
}

impl Chunk<'_> {
    /// The text as it should be written back: unchanged, newline-ended.
    pub fn verbatim(&self) -> String {
        let mut s = self.text.to_owned();
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }

    /// 1-based line of the first occurrence of `needle`, for pointing at an
    /// annotation; the document's first line when it cannot be found.
    pub fn line_of(&self, needle: &str) -> usize {
        match self.text.find(needle) {
            Some(pos) => self.first_line + self.text[..pos].matches('\n').count(),
            None => self.content_line(),
        }
    }

    /// The comment lines at the top of the document (after its marker), so
    /// that a rewritten document keeps the description its author wrote.
    pub fn leading_comments(&self) -> &str {
        let body = if self.has_marker {
            self.text.split_once('\n').map_or("", |(_, rest)| rest)
        } else {
            self.text
        };
        let mut end = 0;
        for line in body.split_inclusive('\n') {
            let t = line.trim();
            if !t.is_empty() && !t.starts_with('#') {
                break;
            }
            end += line.len();
        }
        // Blank lines around the comment belong to the old layout.
        body[..end].trim()
    }

    /// The line where the document's content starts (after its marker).
    pub fn content_line(&self) -> usize {
        self.first_line + usize::from(self.has_marker)
    }
}

/// `---` at the start of a line, alone or followed by blanks or content,
/// starts a document. YAML forbids that sequence at column 0 inside any
/// scalar, so cutting here agrees with the parser.
fn is_marker(line: &str) -> bool {
    match line.strip_prefix("---") {
        Some(rest) => rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']),
        None => false,
    }
}

/// Cuts the stream before every `---` line. The first piece (before any
/// marker) is kept even if it holds only comments, so nothing is lost.
pub(super) fn split(input: &str) -> Vec<Chunk<'_>> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut start_marked = false;
    let mut pos = 0;
    for (i, line) in input.split_inclusive('\n').enumerate() {
        if is_marker(line) && pos > start {
            chunks.push(Chunk {
                text: &input[start..pos],
                has_marker: start_marked,
                first_line: start_line,
            });
        }
        if is_marker(line) {
            start = pos;
            start_line = i + 1;
            start_marked = true;
        }
        pos += line.len();
    }
    if pos > start {
        chunks.push(Chunk {
            text: &input[start..pos],
            has_marker: start_marked,
            first_line: start_line,
        });
    }
    chunks
}

/// Parses one chunk. `doc` is the 1-based number the document would get.
/// An empty or comment-only chunk parses to `Value::Null`.
pub(super) fn parse(chunk: &Chunk<'_>, doc: usize) -> Result<Value, InjectError> {
    serde_norway::from_str::<Value>(chunk.text).map_err(|e| {
        let message = strip_location(&e.to_string());
        let (line, column) = match e.location() {
            Some(loc) => {
                // For a duplicate key the parser points at the mapping;
                // the second occurrence of the key is what to fix.
                let line = duplicate_key_line(chunk.text, &message, loc.line(), loc.column())
                    .unwrap_or(loc.line());
                (chunk.first_line + line - 1, loc.column())
            }
            None => (chunk.content_line(), 1),
        };
        InjectError::Yaml {
            doc,
            line,
            column,
            message,
        }
    })
}

/// serde_norway appends " at line L column C" (relative to the chunk); the
/// error prints the absolute position itself.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// The chunk line (1-based) of the second `key:` at the mapping's column,
/// at or after the mapping's line, for a "duplicate entry" error.
fn duplicate_key_line(text: &str, message: &str, from: usize, column: usize) -> Option<usize> {
    let key = message
        .strip_prefix("duplicate entry with key \"")?
        .strip_suffix('"')?;
    let indent = column.saturating_sub(1);
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .filter(|(_, l)| {
            l.get(..indent)
                .is_some_and(|p| p.trim().is_empty() || p.trim() == "-")
                && l[indent..]
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with(':'))
        })
        .nth(1)
        .map(|(i, _)| i + 1)
}
