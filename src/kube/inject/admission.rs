//! The admission half of `meshguard webhook`, without any I/O: an
//! `admission.k8s.io/v1` AdmissionReview in, the AdmissionReview answer
//! out. The object is injected with [`inject_object`](super::inject_object)
//! (the same code as `meshguard inject`), and the answer carries a JSON
//! Patch from the object as sent to the injected object.
//!
//! - Injected, or changed (an opted-out pod loses an earlier sidecar):
//!   `allowed: true` with the patch.
//! - Left as it is: `allowed: true`, no patch, and a warning naming the
//!   skip reason (`opted-out`, `host-network`, ...).
//! - An object injection refuses (a bad `meshguard.io/` annotation, a
//!   malformed pod spec): `allowed: false` with the reason, as `meshguard
//!   inject` would stop; a typo must not silently leave traffic uncaptured.
//! - A request that is not an AdmissionReview v1 with a `uid`:
//!   [`BadReview`], which the server answers with HTTP 400.
//!
//! Pods are injected on CREATE only (a pod's containers cannot change
//! afterwards); the workload kinds `inject` handles (Deployment, ...) on
//! CREATE and UPDATE, should a webhook configuration send them.

use super::{inject_object, jsonpatch, DocReport, InjectError, InjectOptions, SkipReason};
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Key of the audit annotation saying what was done (the apiserver
/// prefixes it with the webhook's name).
pub const AUDIT_KEY: &str = "injection";

/// The request is not an AdmissionReview this webhook can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// The answer, plus one line for the log.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// The whole AdmissionReview to send back.
    pub review: Value,
    /// e.g. `CREATE Pod shop/orders-7d9f*: injected`.
    pub summary: String,
}

/// What to do with the object.
enum Verdict {
    Allow {
        patch: Vec<Value>,
        outcome: String,
        warnings: Vec<String>,
    },
    Deny(String),
}

/// Answers one AdmissionReview (the request body, as bytes).
pub fn review(body: &[u8], opts: &InjectOptions) -> Result<Reviewed, BadReview> {
    let top: Value =
        serde_json::from_slice(body).map_err(|e| BadReview(format!("invalid JSON: {e}")))?;
    let request = request_of(&top)?;
    let Some(uid) = str_field(request, "uid").filter(|u| !u.is_empty()) else {
        return Err(BadReview("request.uid: missing or empty".into()));
    };
    let operation = str_field(request, "operation").unwrap_or_default();
    let object = match request.get("object") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(_) => return Err(BadReview("request.object: expected an object".into())),
    };

    let (kind, name) = describe(request, object);
    let verdict = match object {
        None => Verdict::Allow {
            patch: Vec::new(),
            outcome: "skipped: no object".into(),
            warnings: Vec::new(),
        },
        Some(object) => decide(request, object, &kind, &operation, opts),
    };
    let (response, outcome) = answer(&uid, verdict, &format!("{kind} {name}"))?;
    Ok(Reviewed {
        review: json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "response": response,
        }),
        summary: format!("{operation} {kind} {name}: {outcome}"),
    })
}

fn str_field(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// The `request` of an AdmissionReview v1.
fn request_of(top: &Value) -> Result<&Map<String, Value>, BadReview> {
    let bad = |m: String| Err(BadReview(m));
    let Some(top) = top.as_object() else {
        return bad("expected an AdmissionReview object".into());
    };
    match str_field(top, "apiVersion") {
        Some(v) if v == API_VERSION => {}
        other => {
            return bad(format!(
                "apiVersion {}: only {API_VERSION} is served (admissionReviewVersions: [v1])",
                other.map_or("missing".into(), |v| format!("{v:?}"))
            ))
        }
    }
    if str_field(top, "kind").as_deref() != Some("AdmissionReview") {
        return bad("kind: expected AdmissionReview".into());
    }
    match top.get("request").and_then(Value::as_object) {
        Some(request) => Ok(request),
        None => bad("request: missing or not an object".into()),
    }
}

/// The AdmissionReview `response` for `verdict`, and the outcome also put
/// in the audit annotation. `object` is the kind and name, for denials.
fn answer(
    uid: &str,
    verdict: Verdict,
    object: &str,
) -> Result<(Map<String, Value>, String), BadReview> {
    let mut response = Map::new();
    response.insert("uid".into(), json!(uid));
    let outcome = match verdict {
        Verdict::Allow {
            patch,
            outcome,
            warnings,
        } => {
            response.insert("allowed".into(), json!(true));
            if !patch.is_empty() {
                let bytes = serde_json::to_vec(&patch).map_err(|e| BadReview(e.to_string()))?;
                response.insert("patchType".into(), json!("JSONPatch"));
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                response.insert("patch".into(), json!(encoded));
            }
            if !warnings.is_empty() {
                response.insert("warnings".into(), json!(warnings));
            }
            outcome
        }
        Verdict::Deny(message) => {
            response.insert("allowed".into(), json!(false));
            let message = format!("meshguard: {object}: {message}");
            response.insert(
                "status".into(),
                json!({"code": 400, "reason": "BadRequest", "message": message}),
            );
            format!("denied: {message}")
        }
    };
    response.insert("auditAnnotations".into(), json!({ AUDIT_KEY: outcome }));
    Ok((response, outcome))
}

/// Injects `object`, and the patch that does it.
fn decide(
    request: &Map<String, Value>,
    object: &Map<String, Value>,
    kind: &str,
    operation: &str,
    opts: &InjectOptions,
) -> Verdict {
    let workload = matches!(
        kind,
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob"
    );
    match operation {
        "CREATE" => {}
        "UPDATE" if workload => {}
        _ => {
            let outcome = format!("operation {operation:?} is not injected");
            return Verdict::Allow {
                patch: Vec::new(),
                warnings: vec![format!("meshguard: no sidecar: {outcome}")],
                outcome: format!("skipped: {outcome}"),
            };
        }
    }
    let from = Value::Object(typed(request, object));
    match injected(&from, opts) {
        Ok((report, to)) => allow(&report, jsonpatch::diff(&from, &to)),
        Err(message) => Verdict::Deny(message),
    }
}

/// The object as sent, with its apiVersion and kind filled in from the
/// request when it lacks them (inject needs them, the patch must not
/// touch them).
fn typed(request: &Map<String, Value>, object: &Map<String, Value>) -> Map<String, Value> {
    let mut from = object.clone();
    if let Some(k) = request.get("kind").and_then(Value::as_object) {
        let s = |f: &str| k.get(f).and_then(Value::as_str).unwrap_or_default();
        let api_version = match (s("group"), s("version")) {
            ("", v) => v.to_owned(),
            (g, v) => format!("{g}/{v}"),
        };
        from.entry("apiVersion").or_insert(json!(api_version));
        from.entry("kind").or_insert(json!(s("kind")));
    }
    from
}

/// The injected object and what injection reported, or why it was refused.
fn injected(from: &Value, opts: &InjectOptions) -> Result<(DocReport, Value), String> {
    let mut value: serde_norway::Value =
        serde_norway::to_value(from).map_err(|e| format!("cannot read the object: {e}"))?;
    let report = inject_object(&mut value, opts).map_err(inject_error)?;
    let to = serde_json::to_value(&value)
        .map_err(|e| format!("cannot write the injected object: {e}"))?;
    Ok((report, to))
}

/// Injected or skipped, the pod is admitted: with the patch, the report's
/// warnings and, when skipped, a warning saying why.
fn allow(report: &DocReport, patch: Vec<Value>) -> Verdict {
    let warnings = report.warnings.iter().map(|w| format!("meshguard: {w}"));
    match report.skipped {
        None => Verdict::Allow {
            patch,
            outcome: "injected".into(),
            warnings: warnings.collect(),
        },
        Some(reason) => {
            let removed = if report.changed && reason != SkipReason::AlreadyInjected {
                " (removed the sidecar)"
            } else {
                ""
            };
            let mut all = vec![format!("meshguard: no sidecar: {reason}{removed}")];
            all.extend(warnings);
            Verdict::Allow {
                patch,
                outcome: format!("skipped: {reason}{removed}"),
                warnings: all,
            }
        }
    }
}

/// The object's kind and `namespace/name` for messages. Pods made by a
/// controller have only a `generateName` at admission, and their
/// namespace is in the request.
fn describe(request: &Map<String, Value>, object: Option<&Map<String, Value>>) -> (String, String) {
    fn get<'a>(m: Option<&'a Map<String, Value>>, k: &str) -> Option<&'a str> {
        m?.get(k)?.as_str().filter(|s| !s.is_empty())
    }
    let meta = object
        .and_then(|o| o.get("metadata"))
        .and_then(Value::as_object);
    let request_kind = request.get("kind").and_then(Value::as_object);
    let kind = get(object, "kind")
        .or(get(request_kind, "kind"))
        .unwrap_or("(no kind)")
        .to_owned();
    let name = match (get(meta, "name"), get(meta, "generateName")) {
        (Some(n), _) => n.to_owned(),
        (None, Some(g)) => format!("{g}*"),
        (None, None) => get(Some(request), "name").unwrap_or("(no name)").to_owned(),
    };
    let name = match get(meta, "namespace").or(get(Some(request), "namespace")) {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    };
    (kind, name)
}

/// The message of an injection error, without the document and line
/// numbers that only mean something for a YAML file.
fn inject_error(e: InjectError) -> String {
    match e {
        InjectError::Yaml { message, .. } | InjectError::Malformed { message, .. } => message,
        InjectError::Annotation {
            name,
            value,
            message,
            ..
        } => format!("annotation {name}: {value:?}: {message}"),
    }
}

#[cfg(test)]
mod tests;
