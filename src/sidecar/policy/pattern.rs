//! What one rule matches: sources, ports, methods and paths.
//!
//! Each pattern is validated as it is deserialised, so a mistake is reported
//! by serde with the line and column of the offending value.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use http::Method;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

use crate::sidecar::identity::{SpiffeId, SpiffeIdError};
use crate::sidecar::pathnorm::{normalize_path, PathError};

/// The peers a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `spiffe://td/ns/shop/sa/orders`: exactly this workload.
    Id(SpiffeId),
    /// `spiffe://td/ns/shop/*`: every Kubernetes-convention ID
    /// (`spiffe://td/ns/<ns>/sa/<sa>`) in namespace `shop` of `td`. IDs of
    /// another shape are not in any namespace, even if their path starts
    /// with `/ns/shop/`.
    Namespace {
        trust_domain: Box<str>,
        namespace: Box<str>,
    },
    /// `spiffe://td/*`: every ID in trust domain `td`.
    TrustDomain(Box<str>),
    /// `"*"`: every authenticated peer, whatever its trust domain.
    Any,
}

/// Why a `from` entry is not a source pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Id(#[from] SpiffeIdError),
    #[error("'*' may only end a pattern, as \"/*\"")]
    WildcardNotAtEnd,
    #[error("the trust domain cannot be a wildcard; use \"*\" for any authenticated peer")]
    WildcardTrustDomain,
    #[error("only \"spiffe://<td>/*\" and \"spiffe://<td>/ns/<namespace>/*\" may end in \"/*\"")]
    UnsupportedWildcard,
    #[error("a workload never has a trust-domain ID; use \"{0}/*\" for the whole trust domain")]
    RootId(String),
}

impl Source {
    /// The trust domain the pattern is confined to; `None` for `Any`.
    pub fn trust_domain(&self) -> Option<&str> {
        match self {
            Source::Id(id) => Some(id.trust_domain()),
            Source::Namespace { trust_domain, .. } | Source::TrustDomain(trust_domain) => {
                Some(trust_domain)
            }
            Source::Any => None,
        }
    }

    /// True if every peer `other` matches also matches `self`.
    pub fn covers(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Any, _) => true,
            (_, Source::Any) => false,
            (Source::TrustDomain(td), other) => other.trust_domain() == Some(&**td),
            (Source::Namespace { .. }, Source::TrustDomain(_)) => false,
            (
                Source::Namespace {
                    trust_domain,
                    namespace,
                },
                Source::Namespace {
                    trust_domain: td,
                    namespace: ns,
                },
            ) => trust_domain == td && namespace == ns,
            (
                Source::Namespace {
                    trust_domain,
                    namespace,
                },
                Source::Id(id),
            ) => id.trust_domain() == &**trust_domain && id.k8s_namespace() == Some(&**namespace),
            (Source::Id(a), Source::Id(b)) => a == b,
            (Source::Id(_), _) => false,
        }
    }
}

impl FromStr for Source {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, SourceError> {
        if s == "*" {
            return Ok(Source::Any);
        }
        if s.starts_with("spiffe://*") {
            return Err(SourceError::WildcardTrustDomain);
        }
        let Some(base) = s.strip_suffix("/*") else {
            if s.contains('*') {
                return Err(SourceError::WildcardNotAtEnd);
            }
            let id = SpiffeId::parse(s)?;
            if id.is_root() {
                return Err(SourceError::RootId(s.to_owned()));
            }
            return Ok(Source::Id(id));
        };
        if base.contains('*') {
            return Err(SourceError::WildcardNotAtEnd);
        }
        let id = SpiffeId::parse(base)?;
        if id.is_root() {
            return Ok(Source::TrustDomain(id.trust_domain().into()));
        }
        match id.path().strip_prefix("/ns/") {
            Some(namespace) if !namespace.contains('/') => Ok(Source::Namespace {
                trust_domain: id.trust_domain().into(),
                namespace: namespace.into(),
            }),
            _ => Err(SourceError::UnsupportedWildcard),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Id(id) => f.write_str(id.as_str()),
            Source::Namespace {
                trust_domain,
                namespace,
            } => write!(f, "spiffe://{trust_domain}/ns/{namespace}/*"),
            Source::TrustDomain(td) => write!(f, "spiffe://{td}/*"),
            Source::Any => f.write_str("*"),
        }
    }
}

/// A path pattern, matched against the normalised request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `/healthz`: this path only (`/healthz/` is another path).
    Exact(Box<str>),
    /// `/api/*`, stored as `/api`: `/api`, `/api/` and everything below,
    /// but not `/apix`. The directory itself matches so that a deny rule on
    /// `/admin/*` also covers `/admin`, which many apps serve as the index of
    /// the subtree. `/*` (stored empty) matches every path.
    Prefix(Box<str>),
}

/// Why a `paths` entry is not a path pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathPatternError {
    #[error("a path must start with '/'")]
    NotAbsolute,
    #[error("'*' may only end a path, as \"/*\" (prefix match)")]
    WildcardNotAtEnd,
    #[error("a path pattern must not contain a query ('?')")]
    Query,
    #[error("{0}")]
    Invalid(#[from] PathError),
    #[error("path is not in normal form; requests are matched as {0:?}")]
    NotNormal(String),
}

impl PathPattern {
    /// Matches an already normalised request path.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(exact) => path == &**exact,
            PathPattern::Prefix(dir) => path
                .strip_prefix(&**dir)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }

    /// True if every path `other` matches also matches `self`.
    pub fn covers(&self, other: &PathPattern) -> bool {
        match (self, other) {
            (PathPattern::Exact(a), PathPattern::Exact(b)) => a == b,
            (PathPattern::Exact(_), PathPattern::Prefix(_)) => false,
            // A prefix covers a narrower prefix iff it matches its directory
            // (the empty directory of `/*` only by the empty prefix).
            (PathPattern::Prefix(_), PathPattern::Exact(p) | PathPattern::Prefix(p)) => {
                self.matches(p)
            }
        }
    }
}

impl FromStr for PathPattern {
    type Err = PathPatternError;

    fn from_str(s: &str) -> Result<Self, PathPatternError> {
        if !s.starts_with('/') {
            return Err(PathPatternError::NotAbsolute);
        }
        let (path, prefix) = match s.strip_suffix("/*") {
            Some(dir) => (dir, true),
            None => (s, false),
        };
        if path.contains('*') {
            return Err(PathPatternError::WildcardNotAtEnd);
        }
        if prefix && path.is_empty() {
            return Ok(PathPattern::Prefix("".into()));
        }
        // Rules are written in the form requests are matched in, so that
        // what a rule says is what it matches: `/%61dmin` or `/a/../b` in a
        // policy would hide what the rule really covers.
        let normal = normalize_path(path)?;
        if normal.query().is_some() {
            return Err(PathPatternError::Query);
        }
        let trailing_slash_before_star = prefix && path.ends_with('/');
        if normal.is_rewritten() || trailing_slash_before_star {
            let suggestion = normal.as_path().trim_end_matches('/');
            return Err(PathPatternError::NotNormal(if prefix {
                format!("{suggestion}/*")
            } else {
                normal.as_path().to_owned()
            }));
        }
        Ok(if prefix {
            PathPattern::Prefix(path.into())
        } else {
            PathPattern::Exact(path.into())
        })
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Prefix(dir) => write!(f, "{dir}/*"),
        }
    }
}

/// The standard methods a rule may name. Extension methods are refused in
/// policies: a typo such as `GTE` would otherwise make a rule silently
/// match nothing. A request with an extension method matches only rules
/// without a `methods` list.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// A set of standard methods, one bit each, so matching is a mask test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

/// Why a `methods` entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("methods are written in uppercase: {0}")]
    Lowercase(String),
    #[error("unknown method; expected one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH")]
    Unknown,
}

impl MethodSet {
    /// The empty set: what an extension method maps to.
    pub const EMPTY: MethodSet = MethodSet(0);

    /// The one-method set of `method`; empty for an extension method, which
    /// no `methods` list can name.
    pub fn of(method: &Method) -> MethodSet {
        MethodSet(
            METHODS
                .iter()
                .position(|m| m == method)
                .map_or(0, |i| 1 << i),
        )
    }

    pub fn contains(self, method: &Method) -> bool {
        self.intersects(MethodSet::of(method))
    }

    pub fn intersects(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_superset(self, other: MethodSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn iter(self) -> impl Iterator<Item = &'static Method> {
        METHODS
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| m)
    }

    pub(crate) fn from_methods(methods: &[MethodName]) -> MethodSet {
        MethodSet(methods.iter().fold(0, |set, m| set | m.0))
    }
}

/// One validated entry of a `methods` list (a single bit of `MethodSet`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MethodName(u16);

impl FromStr for MethodName {
    type Err = MethodError;

    fn from_str(s: &str) -> Result<Self, MethodError> {
        let bit = METHODS.iter().position(|m| m.as_str() == s).map(|i| 1 << i);
        match bit {
            Some(bit) => Ok(MethodName(bit)),
            None if METHODS.iter().any(|m| m.as_str().eq_ignore_ascii_case(s)) => {
                Err(MethodError::Lowercase(s.to_ascii_uppercase()))
            }
            None => Err(MethodError::Unknown),
        }
    }
}

/// One validated entry of a `ports` list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number from 1 to 65535")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                match u16::try_from(v) {
                    Ok(port) if port != 0 => Ok(Port(port)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
        }
        // Validating inside the visitor lets serde_norway attach the line.
        d.deserialize_u16(PortVisitor)
    }
}

/// Deserialises a string through `FromStr` inside the visitor, so that a
/// refusal carries the position of the string itself.
pub(super) fn deserialize_parsed<'de, D, T>(d: D, what: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    struct ParseVisitor<T>(&'static str, PhantomData<T>);
    impl<T: FromStr> Visitor<'_> for ParseVisitor<T>
    where
        T::Err: fmt::Display,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a {} string", self.0)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            s.parse()
                .map_err(|e| E::custom(format_args!("invalid {} {s:?}: {e}", self.0)))
        }
    }
    d.deserialize_str(ParseVisitor(what, PhantomData))
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, "source")
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, "path")
    }
}

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, "method")
    }
}

/// A list that must have at least one entry. An empty list is refused
/// rather than read as "any" or "none": both readings are plausible, and
/// omitting the key already says "any".
#[derive(Debug, Clone)]
pub(crate) struct NonEmpty<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NonEmpty<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
            type Value = NonEmpty<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-empty list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                if items.is_empty() {
                    return Err(de::Error::custom(
                        "list must not be empty (to match anything, omit `ports`, `methods` \
                         or `paths`, or write `from: [\"*\"]`)",
                    ));
                }
                Ok(NonEmpty(items))
            }
        }
        d.deserialize_seq(ListVisitor(PhantomData))
    }
}
