//! The `meshguard.io/` pod annotations: their names, and turning them (with
//! the command-line defaults) into validated settings for one pod.

use super::{InjectOptions, ProxyResources, SidecarMode};
use crate::kube::iptables::{CaptureConfig, Cidr, PortRange};
use serde_norway::{Mapping, Value};

pub const PREFIX: &str = "meshguard.io/";

/// `enabled` (default) or `disabled`: opt a pod out of injection.
pub const INJECT: &str = "meshguard.io/inject";
/// `native` (init container with `restartPolicy: Always`, Kubernetes
/// 1.29+) or `container` (a classic container, for older clusters).
pub const SIDECAR_MODE: &str = "meshguard.io/sidecar-mode";
/// `enabled` or `disabled`: in container mode, a loopback-only endpoint
/// the app calls to stop the sidecar (so Jobs can finish).
pub const SHUTDOWN_ENDPOINT: &str = "meshguard.io/shutdown-endpoint";
/// A ConfigMap whose key `meshguard.yaml` is the sidecar's config file.
pub const CONFIG_MAP: &str = "meshguard.io/config-map";
/// A ConfigMap whose key `policy.yaml` is the workload's allow matrix,
/// mounted at /etc/meshguard/policy (a config file must name it as
/// `inbound.policy`; without a config, the sidecar gets `--policy`).
pub const POLICY_CONFIG_MAP: &str = "meshguard.io/policy-config-map";
/// A `kubernetes.io/tls` Secret (tls.crt, tls.key, ca.crt) used as the
/// SVID instead of the csi-driver-spiffe volume.
pub const IDENTITY_SECRET: &str = "meshguard.io/identity-secret";
/// `enabled` or `disabled` (default): take the identity from the SPIFFE
/// Workload API of a SPIRE agent, whose socket the SPIFFE CSI driver
/// (`csi.spiffe.io`) mounts, instead of SVID files.
pub const SPIFFE_CSI: &str = "meshguard.io/spiffe-csi";
/// Without a config map: the app port inbound traffic is forwarded to.
pub const APP_PORT: &str = "meshguard.io/app-port";
/// App ports carried as opaque TCP (comma-separated), passed to the
/// sidecar as `inbound.tcp_ports` (see `contract::ENV_INBOUND_TCP_PORTS`).
pub const INBOUND_TCP_PORTS: &str = "meshguard.io/inbound-tcp-ports";
/// `disabled` (default), `hmac` (or `enabled`), `ed25519` or `es256`: the
/// identity assertion for the app, its key file or JWKS on a memory volume
/// the app's containers mount read-only (see `contract::ENV_ASSERTION`).
pub const ASSERTION: &str = "meshguard.io/assertion";
pub const EXCLUDE_INBOUND_PORTS: &str = "meshguard.io/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "meshguard.io/exclude-outbound-ports";
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "meshguard.io/exclude-outbound-cidrs";
pub const PROXY_CPU_REQUEST: &str = "meshguard.io/proxy-cpu-request";
pub const PROXY_MEMORY_REQUEST: &str = "meshguard.io/proxy-memory-request";
pub const PROXY_CPU_LIMIT: &str = "meshguard.io/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "meshguard.io/proxy-memory-limit";
/// The sidecar's event loops (`meshguard run --workers`). Without it the
/// count follows the proxy's CPU limit, rounded up, as linkerd's
/// proxy-cpu-limit and Istio's concurrency do: a sidecar allowed two
/// cores runs two loops.
pub const PROXY_WORKERS: &str = "meshguard.io/proxy-workers";
/// The most workers injection asks for, set or derived.
pub const MAX_WORKERS: usize = 64;

/// Written by `inject`: the pod carries a meshguard sidecar (value: the
/// sidecar mode). Its presence is what lets injection be undone/repeated.
pub const INJECTED: &str = "meshguard.io/injected";
/// Written by `inject`: the app's original probes and where the sidecar
/// forwards each rewritten one (JSON; see `contract::ProbeRecord`).
pub const APP_PROBES: &str = "meshguard.io/app-probes";

/// Every annotation a user may set, in documentation order.
pub const USER_ANNOTATIONS: &[&str] = &[
    INJECT,
    SIDECAR_MODE,
    SHUTDOWN_ENDPOINT,
    CONFIG_MAP,
    POLICY_CONFIG_MAP,
    IDENTITY_SECRET,
    SPIFFE_CSI,
    APP_PORT,
    INBOUND_TCP_PORTS,
    ASSERTION,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    PROXY_CPU_REQUEST,
    PROXY_MEMORY_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    PROXY_WORKERS,
];

/// An annotation that cannot be used: its name, value and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadAnnotation {
    pub name: String,
    pub value: String,
    pub message: String,
}

/// Everything injection needs to know about one pod.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub opted_out: bool,
    pub mode: SidecarMode,
    pub shutdown_endpoint: bool,
    pub config_map: Option<String>,
    pub policy_config_map: Option<String>,
    pub identity_secret: Option<String>,
    /// Identity from the Workload API through the SPIFFE CSI driver.
    pub spiffe_csi: bool,
    pub app_port: Option<u16>,
    /// `meshguard.io/inbound-tcp-ports`, validated, as written back.
    pub inbound_tcp_ports: Option<String>,
    /// `meshguard.io/assertion`: the mode, when the app gets an assertion.
    pub assertion: Option<&'static str>,
    pub capture: CaptureConfig,
    pub resources: ProxyResources,
    /// `--workers` for the sidecar; None leaves its default (one loop).
    pub workers: Option<usize>,
}

/// Reads the pod's annotations. Unknown `meshguard.io/` names are refused:
/// a misspelt exclusion silently ignored is exactly the kind of capture
/// surprise users report. Errors come in a fixed order (names, then each
/// setting as listed here), so the first one reported is predictable.
pub(super) fn settings(
    annotations: Option<&Mapping>,
    opts: &InjectOptions,
) -> Result<Settings, BadAnnotation> {
    let empty = Mapping::new();
    let values = Values::read(annotations.unwrap_or(&empty))?;
    let opted_out = values.opted_out()?;
    let mode = values.mode(opts)?;
    let shutdown_endpoint = values.shutdown_endpoint(opts, mode)?;
    let config_map = values.object_name(CONFIG_MAP)?;
    let policy_config_map = values.object_name(POLICY_CONFIG_MAP)?;
    let identity_secret = values.object_name(IDENTITY_SECRET)?;
    let spiffe_csi = values.spiffe_csi(identity_secret.is_some())?;
    let app_port = values.app_port(config_map.is_some())?;
    let inbound_tcp_ports = values.tcp_ports()?;
    let assertion = values.assertion()?;
    let capture = values.capture(opts)?;
    let resources = values.resources(&opts.resources)?;
    let workers = values.workers(&resources)?;
    Ok(Settings {
        opted_out,
        mode,
        shutdown_endpoint,
        config_map,
        policy_config_map,
        identity_secret,
        spiffe_csi,
        app_port,
        inbound_tcp_ports,
        assertion,
        capture,
        resources,
        workers,
    })
}

/// The user's `meshguard.io/` annotations of one pod, by name: every name
/// known and every value a string.
struct Values<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Values<'a> {
    /// Keeps the user's annotations, skipping others' and the ones
    /// `inject` writes itself; refuses unknown names and non-strings.
    fn read(annotations: &'a Mapping) -> Result<Self, BadAnnotation> {
        let mut values = Vec::new();
        for (k, v) in annotations {
            let Some(name) = k.as_str().filter(|n| n.starts_with(PREFIX)) else {
                continue;
            };
            if name == INJECTED || name == APP_PROBES {
                continue;
            }
            let bad = |message: &str| BadAnnotation {
                name: name.to_owned(),
                value: value_text(v),
                message: message.to_owned(),
            };
            if !USER_ANNOTATIONS.contains(&name) {
                let hint = suggestion(name)
                    .map(|known| format!(" (did you mean {known}?)"))
                    .unwrap_or_default();
                return Err(bad(&format!("unknown meshguard annotation{hint}")));
            }
            let Some(value) = v.as_str() else {
                return Err(bad("annotation values must be strings (quote it)"));
            };
            values.push((name, value));
        }
        Ok(Values(values))
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// The error for annotation `name`, quoting its value.
    fn bad(&self, name: &str, message: String) -> BadAnnotation {
        BadAnnotation {
            name: name.to_owned(),
            value: self.get(name).unwrap_or_default().to_owned(),
            message,
        }
    }

    fn opted_out(&self) -> Result<bool, BadAnnotation> {
        match self.get(INJECT) {
            None | Some("enabled") => Ok(false),
            Some("disabled") => Ok(true),
            Some(_) => Err(self.bad(INJECT, "must be `enabled` or `disabled`".into())),
        }
    }

    fn mode(&self, opts: &InjectOptions) -> Result<SidecarMode, BadAnnotation> {
        match self.get(SIDECAR_MODE) {
            None => Ok(opts.mode),
            Some("native") => Ok(SidecarMode::Native),
            Some("container") => Ok(SidecarMode::Container),
            Some(_) => Err(self.bad(SIDECAR_MODE, "must be `native` or `container`".into())),
        }
    }

    fn shutdown_endpoint(
        &self,
        opts: &InjectOptions,
        mode: SidecarMode,
    ) -> Result<bool, BadAnnotation> {
        match self.get(SHUTDOWN_ENDPOINT) {
            None => Ok(opts.shutdown_endpoint && mode == SidecarMode::Container),
            Some("enabled") if mode == SidecarMode::Container => Ok(true),
            Some("enabled") => Err(self.bad(
                SHUTDOWN_ENDPOINT,
                "only for sidecar-mode `container`: a native sidecar stops by itself \
                 when the app's containers exit"
                    .into(),
            )),
            Some("disabled") => Ok(false),
            Some(_) => Err(self.bad(SHUTDOWN_ENDPOINT, "must be `enabled` or `disabled`".into())),
        }
    }

    /// `meshguard.io/spiffe-csi`: one identity source per pod.
    fn spiffe_csi(&self, has_identity_secret: bool) -> Result<bool, BadAnnotation> {
        match self.get(SPIFFE_CSI) {
            None | Some("disabled") => Ok(false),
            Some("enabled") if has_identity_secret => Err(self.bad(
                SPIFFE_CSI,
                format!("the identity comes from the Secret in {IDENTITY_SECRET}; set one of them"),
            )),
            Some("enabled") => Ok(true),
            Some(_) => Err(self.bad(SPIFFE_CSI, "must be `enabled` or `disabled`".into())),
        }
    }

    /// A ConfigMap or Secret name.
    fn object_name(&self, name: &str) -> Result<Option<String>, BadAnnotation> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if is_dns_subdomain(v) => Ok(Some(v.to_owned())),
            Some(_) => Err(self.bad(
                name,
                "must be a Kubernetes object name (lowercase DNS subdomain)".into(),
            )),
        }
    }

    /// The app port, which only makes sense without a config map (the
    /// config names the app address itself).
    fn app_port(&self, has_config_map: bool) -> Result<Option<u16>, BadAnnotation> {
        let app_port = match self.get(APP_PORT) {
            None => None,
            Some(v) => match v.parse::<u16>() {
                Ok(p) if p != 0 && v.bytes().all(|b| b.is_ascii_digit()) => Some(p),
                _ => return Err(self.bad(APP_PORT, "must be a port number 1-65535".into())),
            },
        };
        if app_port.is_some() && has_config_map {
            return Err(self.bad(
                APP_PORT,
                format!("the app address comes from the config in {CONFIG_MAP}; set one of them"),
            ));
        }
        Ok(app_port)
    }

    /// `meshguard.io/inbound-tcp-ports`: ports 1-65535, each once, in a
    /// canonical comma-separated form for the sidecar's environment.
    fn tcp_ports(&self) -> Result<Option<String>, BadAnnotation> {
        let Some(v) = self.get(INBOUND_TCP_PORTS) else {
            return Ok(None);
        };
        let mut ports: Vec<u16> = Vec::new();
        for item in v.split(',').map(str::trim) {
            let port = match item.parse::<u16>() {
                Ok(p) if p != 0 && item.bytes().all(|b| b.is_ascii_digit()) => p,
                _ => {
                    let why = format!("{item:?} is not a port number 1-65535");
                    return Err(self.bad(INBOUND_TCP_PORTS, why));
                }
            };
            if ports.contains(&port) {
                return Err(self.bad(INBOUND_TCP_PORTS, format!("port {port} is listed twice")));
            }
            ports.push(port);
        }
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        Ok(Some(list.join(",")))
    }

    /// `meshguard.io/assertion`: the mode `meshguard run` is told.
    fn assertion(&self) -> Result<Option<&'static str>, BadAnnotation> {
        match self.get(ASSERTION) {
            None | Some("disabled") => Ok(None),
            Some("hmac" | "enabled") => Ok(Some("hmac")),
            Some("ed25519") => Ok(Some("ed25519")),
            Some("es256") => Ok(Some("es256")),
            Some(_) => Err(self.bad(
                ASSERTION,
                "must be `disabled`, `hmac` (or `enabled`), `ed25519` or `es256`".into(),
            )),
        }
    }

    /// The capture settings: the exclusion lists, parsed and validated.
    fn capture(&self, opts: &InjectOptions) -> Result<CaptureConfig, BadAnnotation> {
        let ports = |name: &str| {
            PortRange::parse_list(self.get(name).unwrap_or_default())
                .map_err(|e| self.bad(name, e.to_string()))
        };
        let mut capture = CaptureConfig {
            proxy_uid: opts.proxy_uid,
            exclude_inbound_ports: ports(EXCLUDE_INBOUND_PORTS)?,
            exclude_outbound_ports: ports(EXCLUDE_OUTBOUND_PORTS)?,
            exclude_outbound_cidrs: Cidr::parse_list(
                self.get(EXCLUDE_OUTBOUND_CIDRS).unwrap_or_default(),
            )
            .map_err(|e| self.bad(EXCLUDE_OUTBOUND_CIDRS, e.to_string()))?,
            ..CaptureConfig::default()
        };
        // Admin and probe ports are excluded anyway; listing them again is
        // harmless, so drop them rather than print them twice.
        capture.exclude_inbound_ports.retain(|r| {
            *r != PortRange::single(capture.admin_port)
                && *r != PortRange::single(capture.probe_port)
        });
        self.validate_each_list(&capture)?;
        Ok(capture)
    }

    /// Validates each exclusion list on its own, so the error names the
    /// annotation that caused it.
    fn validate_each_list(&self, capture: &CaptureConfig) -> Result<(), BadAnnotation> {
        for (name, partial) in [
            (
                EXCLUDE_INBOUND_PORTS,
                CaptureConfig {
                    exclude_inbound_ports: capture.exclude_inbound_ports.clone(),
                    ..CaptureConfig::default()
                },
            ),
            (
                EXCLUDE_OUTBOUND_PORTS,
                CaptureConfig {
                    exclude_outbound_ports: capture.exclude_outbound_ports.clone(),
                    ..CaptureConfig::default()
                },
            ),
            (
                EXCLUDE_OUTBOUND_CIDRS,
                CaptureConfig {
                    exclude_outbound_cidrs: capture.exclude_outbound_cidrs.clone(),
                    ..CaptureConfig::default()
                },
            ),
        ] {
            partial
                .validate()
                .map_err(|e| self.bad(name, e.to_string()))?;
        }
        Ok(())
    }

    /// The proxy's resources: each annotation overrides its default.
    fn resources(&self, defaults: &ProxyResources) -> Result<ProxyResources, BadAnnotation> {
        let quantity = |name: &str, default: &Option<String>| match self.get(name) {
            None => Ok(default.clone()),
            Some(v) if is_quantity(v) => Ok(Some(v.to_owned())),
            Some(_) => Err(self.bad(
                name,
                "must be a Kubernetes quantity, e.g. 100m, 64Mi".into(),
            )),
        };
        Ok(ProxyResources {
            cpu_request: quantity(PROXY_CPU_REQUEST, &defaults.cpu_request)?,
            memory_request: quantity(PROXY_MEMORY_REQUEST, &defaults.memory_request)?,
            cpu_limit: quantity(PROXY_CPU_LIMIT, &defaults.cpu_limit)?,
            memory_limit: quantity(PROXY_MEMORY_LIMIT, &defaults.memory_limit)?,
        })
    }

    /// `meshguard.io/proxy-workers`, or else one worker per core of the
    /// proxy's CPU limit (rounded up). One worker, the sidecar's default,
    /// is left unsaid.
    fn workers(&self, resources: &ProxyResources) -> Result<Option<usize>, BadAnnotation> {
        let workers = match self.get(PROXY_WORKERS) {
            Some(v) => match v.parse::<usize>() {
                Ok(n)
                    if (1..=MAX_WORKERS).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    n
                }
                _ => {
                    let why = format!("must be a whole number from 1 to {MAX_WORKERS}");
                    return Err(self.bad(PROXY_WORKERS, why));
                }
            },
            None => match resources.cpu_limit.as_deref().and_then(cpu_cores) {
                Some(cores) => (cores.ceil() as usize).clamp(1, MAX_WORKERS),
                None => 1,
            },
        };
        Ok((workers > 1).then_some(workers))
    }
}

/// The cores a CPU quantity (`500m`, `2`, `1.5`, `2e0`) stands for; None for
/// a quantity that is not a CPU amount (`64Mi`) or is not finite.
pub(super) fn cpu_cores(q: &str) -> Option<f64> {
    if !is_quantity(q) {
        return None;
    }
    let (number, suffix) = split_quantity(q);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        _ => match suffix.strip_prefix(['e', 'E']) {
            Some(exp) => 10f64.powi(exp.parse::<i32>().ok()?),
            None => return None,
        },
    };
    Some(number * scale).filter(|c| c.is_finite())
}

/// The known annotation closest to a misspelt `name`, when close enough
/// (at most 3 edits) to be what was meant.
fn suggestion(name: &str) -> Option<&'static str> {
    USER_ANNOTATIONS
        .iter()
        .map(|known| (edit_distance(known, name), *known))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, known)| known)
}

/// An annotation value as text, for error messages.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default(),
    }
}

/// RFC 1123 subdomain, as Kubernetes requires of ConfigMap/Secret names.
pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Kubernetes resource quantity without a sign: `100m`, `0.5`, `64Mi`,
/// `1e3`. Kubernetes checks ranges itself; this catches typos like `64MB`.
pub(crate) fn is_quantity(s: &str) -> bool {
    let (number, suffix) = split_quantity(s);
    let digits = number.replace('.', "");
    if digits.is_empty() || number.matches('.').count() > 1 {
        return false;
    }
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    // Decimal exponent: e3, E-2, e+6.
    match suffix.strip_prefix(['e', 'E']) {
        Some(exp) => {
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// A quantity's number (digits and dots) and what follows it.
fn split_quantity(s: &str) -> (&str, &str) {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    s.split_at(number_end)
}

/// Levenshtein distance, for suggesting the annotation a typo meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
