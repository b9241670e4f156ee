//! Reading the policy file: YAML into validated rules, every error with the
//! file name and line.
//!
//! Two passes over the text. The first is an ordinary serde pass; every
//! value is validated inside its own `Deserialize`, so serde_norway reports
//! a bad value at its own line and column. The second finds the line of
//! each rule, which messages about whole rules (duplicate names, lint
//! findings) need and which serde only ever reveals inside an error.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::boundary::{Boundary, RawBoundary};
use super::pattern::{
    deserialize_parsed, MethodName, MethodSet, NonEmpty, PathPattern, Port, Source,
};
use super::{Action, Mode, Rule};

/// Why a policy cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read policy: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Malformed YAML, a wrong type, an unknown key or an invalid value.
    #[error("{file}{}: {message}", Loc(*.line, *.column))]
    Invalid {
        file: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error(
        "{file}{}: rules[{index}]: rule name {name:?} is already used by rules[{first_index}]{}",
        Loc(*.line, None),
        At(*.first_line)
    )]
    DuplicateRuleName {
        file: String,
        name: String,
        index: usize,
        line: Option<usize>,
        first_index: usize,
        first_line: Option<usize>,
    },
}

impl PolicyError {
    /// The 1-based line the error is about, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Read { .. } => None,
            PolicyError::Invalid { line, .. } | PolicyError::DuplicateRuleName { line, .. } => {
                *line
            }
        }
    }
}

/// `:line:column` in the style compilers use, so editors can jump to it.
struct Loc(Option<usize>, Option<usize>);

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc(Some(line), Some(column)) => write!(f, ":{line}:{column}"),
            Loc(Some(line), None) => write!(f, ":{line}"),
            Loc(None, _) => Ok(()),
        }
    }
}

/// ` (line N)` when known.
struct At(Option<usize>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, " (line {line})"),
            None => Ok(()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    mode: Mode,
    rules: Vec<RawRule>,
    // The boundary sections (`boundary.rs`); not flattened, since serde
    // cannot flatten under `deny_unknown_fields`.
    #[serde(default)]
    limits: Vec<super::limits::RawLimit>,
    #[serde(default)]
    claim_headers: Option<super::claims::RawClaimHeaders>,
    #[serde(default)]
    path_profile: super::boundary::PathProfile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: RuleName,
    action: Action,
    from: NonEmpty<Source>,
    #[serde(default)]
    ports: Option<NonEmpty<Port>>,
    #[serde(default)]
    methods: Option<NonEmpty<MethodName>>,
    #[serde(default)]
    paths: Option<NonEmpty<PathPattern>>,
    #[serde(default)]
    jwt: Option<super::jwt::RawJwt>,
}

/// Rule names end up in logs and as a metric label, so they are kept short
/// and free of characters that need quoting anywhere.
pub(super) struct RuleName(pub(super) Box<str>);

const MAX_RULE_NAME_LEN: usize = 128;

impl FromStr for RuleName {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("must not be empty");
        }
        if s.len() > MAX_RULE_NAME_LEN {
            return Err("must be at most 128 bytes");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err("may only contain A-Z, a-z, 0-9, '-', '_' and '.'");
        }
        Ok(RuleName(s.into()))
    }
}

impl<'de> Deserialize<'de> for RuleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, "rule name")
    }
}

/// Parses and validates `text`; rules come back in file order.
pub(super) fn parse(text: &str, file: &str) -> Result<(Mode, Vec<Rule>, Boundary), PolicyError> {
    let raw: RawPolicy = serde_norway::from_str(text).map_err(|e| invalid(file, &e))?;
    let mut lines = rule_lines(text);
    lines.resize(raw.rules.len(), None);

    let mut first_use: HashMap<&str, usize> = HashMap::with_capacity(raw.rules.len());
    for (index, rule) in raw.rules.iter().enumerate() {
        if let Some(&first_index) = first_use.get(&*rule.name.0) {
            return Err(PolicyError::DuplicateRuleName {
                file: file.to_owned(),
                name: rule.name.0.to_string(),
                index,
                line: lines[index],
                first_index,
                first_line: lines[first_index],
            });
        }
        first_use.insert(&rule.name.0, index);
    }

    let mut rules: Vec<Rule> = raw
        .rules
        .into_iter()
        .zip(lines)
        .enumerate()
        .map(|(position, (raw, line))| build_rule(raw, position, line))
        .collect();
    if raw.path_profile.case_insensitive() {
        rules.iter_mut().for_each(super::boundary::fold_path_case);
    }
    let boundary = RawBoundary {
        limits: raw.limits,
        claim_headers: raw.claim_headers,
        path_profile: raw.path_profile,
    }
    .build(&rules, text, file)?;
    Ok((raw.mode, rules, boundary))
}

fn build_rule(raw: RawRule, position: usize, line: Option<usize>) -> Rule {
    let ports = raw.ports.map(|NonEmpty(ports)| {
        let mut ports: Vec<u16> = ports.into_iter().map(|Port(p)| p).collect();
        ports.sort_unstable();
        ports.dedup();
        ports.into_boxed_slice()
    });
    Rule {
        name: raw.name.0,
        position,
        action: raw.action,
        line,
        sources: raw.from.0.into_boxed_slice(),
        ports,
        methods: raw.methods.map(|NonEmpty(m)| MethodSet::from_methods(&m)),
        paths: raw.paths.map(|NonEmpty(p)| p.into_boxed_slice()),
        jwt: raw.jwt.map(|j| Box::new(j.into())),
    }
}

fn invalid(file: &str, err: &serde_norway::Error) -> PolicyError {
    let location = err.location();
    let mut message = err.to_string();
    // serde_norway ends its message with the position, which the error
    // already shows in front.
    if let Some(loc) = &location {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if message.ends_with(&suffix) {
            message.truncate(message.len() - suffix.len());
        }
    }
    PolicyError::Invalid {
        file: file.to_owned(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message,
    }
}

/// The line of each rule's `name` value, in rule order (`None` where it
/// cannot be found). serde_norway reveals positions only in errors, so this
/// pass makes deserialising each name fail on purpose, reads the position
/// from that error, and goes on: a failed scalar has been consumed whole, so
/// the rest of the document is still read correctly. Run only on text that
/// has passed `parse`'s first pass.
fn rule_lines(text: &str) -> Vec<Option<usize>> {
    serde_norway::from_str::<RuleLines>(text)
        .map(|RuleLines(lines)| lines)
        .unwrap_or_default()
}

struct RuleLines(Vec<Option<usize>>);

/// The message of the deliberate error; never shown to anyone.
const PROBE: &str = "meshguard line probe";

/// Reads `N` from the `... at line N column M` ending of a serde_norway
/// error made by the probe.
fn probe_line(err: &impl fmt::Display) -> Option<usize> {
    let text = err.to_string();
    let (message, position) = text.rsplit_once(" at line ")?;
    if !message.ends_with(PROBE) {
        return None;
    }
    position.split_once(" column ")?.0.parse().ok()
}

impl<'de> Deserialize<'de> for RuleLines {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = RuleLines;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a policy")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RuleLines, A::Error> {
        let mut lines = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "rules" {
                lines = map.next_value_seed(RulesSeed)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(RuleLines(lines))
    }
}

struct RulesSeed;

impl<'de> DeserializeSeed<'de> for RulesSeed {
    type Value = Vec<Option<usize>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RulesSeed {
    type Value = Vec<Option<usize>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of rules")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut lines = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(line) = seq.next_element_seed(RuleSeed)? {
            lines.push(line);
        }
        Ok(lines)
    }
}

struct RuleSeed;

impl<'de> DeserializeSeed<'de> for RuleSeed {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RuleSeed {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a rule")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut line = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "name" {
                if let Err(probe) = map.next_value_seed(NameProbe) {
                    line = probe_line(&probe);
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(line)
    }
}

/// Consumes the name scalar and fails, so the error carries its position.
struct NameProbe;

impl<'de> DeserializeSeed<'de> for NameProbe {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for NameProbe {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a rule name")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(PROBE))
    }
}
