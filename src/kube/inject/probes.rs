//! Kubelet probes under capture.
//!
//! Kubelet probes the pod IP from the node, in the clear. With inbound
//! capture that connection lands on the mTLS listener and fails (or, for a
//! tcpSocket probe, succeeds whatever the app's state). So each app probe
//! that targets the pod is rewritten to an HTTP GET on the sidecar's probe
//! port, `/app-probe/<container>/<kind>`, and the sidecar runs the original
//! probe against the app over loopback.
//!
//! The original probe and the forwarding target are recorded, as JSON, in
//! the pod annotation `meshguard.io/app-probes`: a map from
//! `<container>/<kind>` to a [`ProbeRecord`]. Injection reads it back to
//! restore the probes, and the sidecar receives it through the downward
//! API (env `MESHGUARD_APP_PROBES`). The record types, and what the
//! forwarder must do with them, are in [`crate::kube::contract`].

use super::yaml::{get_str, map, n, replace_entry, s};
use crate::kube::contract::{
    AppProbes, Forward, HttpHeader, ProbeRecord, Scheme, PROBE_PATH_PREFIX,
};
use crate::kube::iptables::PortRange;
use serde_norway::{Mapping, Value};

/// The probe fields of a container and the `<kind>` used in URLs and keys.
pub const PROBE_KINDS: [(&str, &str); 3] = [
    ("startupProbe", "startup"),
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
];

/// Rewrites the probes of one container that need it, recording each.
/// Probes left alone: `exec` (runs inside the container), those naming a
/// `host` (kubelet does not dial the pod then), and those on ports excluded
/// from inbound capture (kubelet reaches them directly).
pub(super) fn rewrite(
    container: &mut Mapping,
    excluded_inbound: &[PortRange],
    probe_port: u16,
    records: &mut AppProbes,
) -> Result<(), String> {
    let name = get_str(container, "name")
        .ok_or("container without a name")?
        .to_owned();
    for (field, kind) in PROBE_KINDS {
        let Some(probe) = container.get(field).and_then(Value::as_mapping) else {
            continue;
        };
        let Some((handler, forward)) = forward_for(container, probe)
            .map_err(|m| format!("container {name:?} {field}: {m}"))?
        else {
            continue;
        };
        let port = match &forward {
            Forward::Http { port, .. } | Forward::Tcp { port, .. } | Forward::Grpc { port, .. } => {
                *port
            }
        };
        if excluded_inbound.iter().any(|r| r.contains(port)) {
            continue;
        }
        let record = ProbeRecord {
            original: Value::Mapping(probe.clone()),
            forward,
        };
        let new_handler = map([
            ("path", s(&format!("{PROBE_PATH_PREFIX}{name}/{kind}"))),
            ("port", n(probe_port)),
            ("scheme", s("HTTP")),
        ]);
        if let Some(Value::Mapping(p)) = container.get_mut(field) {
            replace_entry(p, handler, "httpGet", new_handler);
        }
        records.insert(format!("{name}/{kind}"), record);
    }
    Ok(())
}

/// The handler field and forwarding target of a probe, or None when the
/// probe does not go through capture.
fn forward_for(
    container: &Mapping,
    probe: &Mapping,
) -> Result<Option<(&'static str, Forward)>, String> {
    let timeout_seconds = timeout_seconds(probe)?;
    let handler = |field: &str| probe.get(field).and_then(Value::as_mapping);
    if let Some(h) = handler("httpGet") {
        if has_host(h) {
            return Ok(None);
        }
        let forward = http_forward(container, h, timeout_seconds)?;
        return Ok(Some(("httpGet", forward)));
    }
    if let Some(t) = handler("tcpSocket") {
        if has_host(t) {
            return Ok(None);
        }
        let port = resolve_port(container, t.get("port"))?;
        let forward = Forward::Tcp {
            port,
            timeout_seconds,
        };
        return Ok(Some(("tcpSocket", forward)));
    }
    if let Some(g) = handler("grpc") {
        return Ok(Some(("grpc", grpc_forward(container, g, timeout_seconds)?)));
    }
    Ok(None)
}

/// Kubernetes' default of 1 s when unset.
fn timeout_seconds(probe: &Mapping) -> Result<u32, String> {
    match probe.get("timeoutSeconds") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .ok_or_else(|| "timeoutSeconds must be a positive integer".into()),
    }
}

fn http_forward(container: &Mapping, h: &Mapping, timeout_seconds: u32) -> Result<Forward, String> {
    let port = resolve_port(container, h.get("port"))?;
    let scheme = match get_str(h, "scheme") {
        None | Some("HTTP") => Scheme::Http,
        Some("HTTPS") => Scheme::Https,
        Some(other) => return Err(format!("httpGet.scheme {other:?} is not HTTP or HTTPS")),
    };
    // kubelet asks for "/" when no path is given and adds the slash a
    // relative path lacks; do the same so the sidecar need not.
    let path = match get_str(h, "path").unwrap_or("") {
        "" => "/".to_owned(),
        p if p.starts_with('/') => p.to_owned(),
        p => format!("/{p}"),
    };
    Ok(Forward::Http {
        port,
        scheme,
        path,
        headers: http_headers(h)?,
        timeout_seconds,
    })
}

fn http_headers(h: &Mapping) -> Result<Vec<HttpHeader>, String> {
    super::yaml::seq_maps(h, "httpHeaders")
        .map_err(|m| format!("httpGet.{m}"))?
        .into_iter()
        .map(|hd| match (get_str(hd, "name"), get_str(hd, "value")) {
            (Some(name), Some(value)) => Ok(HttpHeader {
                name: name.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err("httpGet.httpHeaders entries need a name and a string value".into()),
        })
        .collect()
}

fn grpc_forward(container: &Mapping, g: &Mapping, timeout_seconds: u32) -> Result<Forward, String> {
    // gRPC probes take a number only; Kubernetes refuses names here.
    let port = match g.get("port") {
        Some(Value::Number(_)) => resolve_port(container, g.get("port"))?,
        _ => return Err("grpc.port must be a number".into()),
    };
    let service = match g.get("service") {
        None | Some(Value::Null) => None,
        Some(Value::String(svc)) => Some(svc.clone()),
        Some(_) => return Err("grpc.service must be a string".into()),
    };
    Ok(Forward::Grpc {
        port,
        service,
        timeout_seconds,
    })
}

fn has_host(handler: &Mapping) -> bool {
    get_str(handler, "host").is_some_and(|h| !h.is_empty())
}

/// A probe port as kubelet resolves it: a number, or the name of one of
/// the container's ports, or (kubelet's last resort) a number in a string.
fn resolve_port(container: &Mapping, port: Option<&Value>) -> Result<u16, String> {
    let valid = |p: u64| u16::try_from(p).ok().filter(|p| *p != 0);
    match port {
        Some(Value::Number(num)) => num
            .as_u64()
            .and_then(valid)
            .ok_or_else(|| format!("port {num} is out of range")),
        Some(Value::String(name)) => {
            for p in super::yaml::seq_maps(container, "ports")? {
                if get_str(p, "name") == Some(name.as_str()) {
                    return p
                        .get("containerPort")
                        .and_then(Value::as_u64)
                        .and_then(valid)
                        .ok_or_else(|| format!("port {name:?} has no valid containerPort"));
                }
            }
            name.parse::<u64>()
                .ok()
                .and_then(valid)
                .ok_or_else(|| format!("port {name:?} is not a port of this container"))
        }
        _ => Err("probe has no port".into()),
    }
}

/// Puts recorded probes back. Returns a warning for each record whose
/// container no longer exists.
pub(super) fn restore(spec: &mut Mapping, records: &AppProbes) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, record) in records {
        let field = key.split_once('/').and_then(|(cname, kind)| {
            let field = PROBE_KINDS.iter().find(|(_, k)| *k == kind)?.0;
            Some((cname, field))
        });
        let mut restored = false;
        if let Some((cname, field)) = field {
            for list in ["containers", "initContainers"] {
                let Some(items) = spec.get_mut(list).and_then(Value::as_sequence_mut) else {
                    continue;
                };
                for c in items.iter_mut().filter_map(Value::as_mapping_mut) {
                    if get_str(c, "name") == Some(cname) && !restored {
                        c.insert(s(field), record.original.clone());
                        restored = true;
                    }
                }
            }
        }
        if !restored {
            warnings.push(format!(
                "recorded probe {key:?} matches no container; it was not restored"
            ));
        }
    }
    warnings
}
