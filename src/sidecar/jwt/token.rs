//! Reading a compact JWS before any key is touched: size, shape, header
//! (`alg`, `kid`, `crit`) and claims. Pure, allocation-bounded by the size
//! limit, and what the `jwt` fuzz target feeds.

use super::JwtError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use std::str::FromStr;

/// A token split into its parts, header and claims decoded, not verified.
#[derive(Debug)]
pub struct Unverified<'t> {
    pub alg: Algorithm,
    pub kid: Option<Box<str>>,
    pub claims: Claims,
    /// `header.payload`, what the signature covers.
    pub signing_input: &'t str,
    /// The signature, base64url as sent.
    pub signature: &'t str,
}

/// The claims of a token: the registered ones read once, the rest kept
/// for the policy's claim matching.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub iss: Box<str>,
    pub sub: Option<Box<str>>,
    pub aud: Box<[Box<str>]>,
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// `scope` (space-separated, RFC 8693) or `scp` (an array).
    pub scopes: Box<[Box<str>]>,
    all: Map<String, Value>,
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions the token says must be understood: meshguard understands
    /// none, so any `crit` refuses the token (RFC 7515 §4.1.11).
    #[serde(default)]
    crit: Option<Value>,
}

/// Splits and decodes `token` (at most `max_bytes`); refuses `none`, an
/// unknown `alg`, `crit`, and anything but three base64url parts.
pub fn parse(token: &str, max_bytes: usize) -> Result<Unverified<'_>, JwtError> {
    if token.len() > max_bytes {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let header: RawHeader = decode_json(header)?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgorithmNotAllowed);
    }
    let alg = Algorithm::from_str(&header.alg).map_err(|_| JwtError::AlgorithmNotAllowed)?;
    if header.crit.is_some() {
        return Err(JwtError::Malformed(
            "crit header extensions are not supported",
        ));
    }
    if signature.is_empty() {
        return Err(JwtError::Malformed("empty signature"));
    }
    let claims = Claims::from_map(decode_json(payload)?)?;
    let signing_input = &token[..header_len(token)];
    Ok(Unverified {
        alg,
        kid: header.kid.map(Into::into),
        claims,
        signing_input,
        signature,
    })
}

fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("a part is not base64url"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("a part is not the expected JSON"))
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional.
fn numeric_date(v: Option<&Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => n
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| Some(f.floor() as i64))
                .ok_or(JwtError::Malformed(name)),
        },
        Some(_) => Err(JwtError::Malformed(name)),
    }
}

fn string_or_array(v: Option<&Value>, name: &'static str) -> Result<Box<[Box<str>]>, JwtError> {
    match v {
        None => Ok(Box::default()),
        Some(Value::String(s)) => Ok(Box::new([s.as_str().into()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(Into::into).ok_or(JwtError::Malformed(name)))
            .collect(),
        Some(_) => Err(JwtError::Malformed(name)),
    }
}

impl Claims {
    /// Claims from a JSON object, as `meshguard policy check --token` takes
    /// them: checked like a token's payload, except that a missing `exp`
    /// is read as "not expired" (the check decides as if it were valid).
    pub fn from_json(json: &str) -> Result<Claims, JwtError> {
        let mut all: Map<String, Value> =
            serde_json::from_str(json).map_err(|_| JwtError::Malformed("not a JSON object"))?;
        all.entry("exp").or_insert(Value::from(i64::MAX));
        Claims::from_map(all)
    }

    fn from_map(all: Map<String, Value>) -> Result<Claims, JwtError> {
        let iss = match all.get("iss") {
            Some(Value::String(s)) => s.as_str().into(),
            _ => return Err(JwtError::Malformed("iss missing or not a string")),
        };
        let sub = match all.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str().into()),
            Some(_) => return Err(JwtError::Malformed("sub not a string")),
        };
        let exp = numeric_date(all.get("exp"), "exp not a number")?
            .ok_or(JwtError::Malformed("exp missing"))?;
        let scopes = match all.get("scope") {
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(Into::into)
                .collect(),
            Some(_) => return Err(JwtError::Malformed("scope not a string")),
            None => string_or_array(all.get("scp"), "scp not a string or array")?,
        };
        Ok(Claims {
            iss,
            sub,
            aud: string_or_array(all.get("aud"), "aud not a string or array")?,
            exp,
            nbf: numeric_date(all.get("nbf"), "nbf not a number")?,
            iat: numeric_date(all.get("iat"), "iat not a number")?,
            scopes,
            all,
        })
    }

    /// A claim by name; a name not present as is is read as a path of
    /// nested objects (`realm_access.roles`), so namespaced claim names
    /// that contain dots (`https://example.com/roles`) still work.
    pub fn get(&self, name: &str) -> Option<&Value> {
        if let Some(v) = self.all.get(name) {
            return Some(v);
        }
        let mut parts = name.split('.');
        let mut v = self.all.get(parts.next()?)?;
        for part in parts {
            v = v.as_object()?.get(part)?;
        }
        Some(v)
    }

    /// A claim as header text: strings as they are, numbers and booleans as
    /// JSON, arrays of strings joined with `,`; objects never.
    pub fn header_text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str())
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            _ => None,
        }
    }
}
