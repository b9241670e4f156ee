//! What injection adds to a pod: the capture init container, the sidecar,
//! and their volumes. Every name here is also what uninject removes.

use super::annotations::{Settings, APP_PROBES};
use super::yaml::{map, n, s, seq_of_str};
use super::{InjectOptions, ProxyResources, SidecarMode};
use crate::kube::contract::{
    ASSERTION_DIR, ENV_APP_PROBES, ENV_ASSERTION, ENV_INBOUND_TCP_PORTS, ENV_LOG_FORMAT,
    ENV_PROBE_LISTEN, ENV_SHUTDOWN_LISTEN, SHUTDOWN_PORT,
};
use crate::kube::iptables::CaptureConfig;
use serde_norway::{Mapping, Value};

pub const SIDECAR_NAME: &str = "meshguard";
pub const INIT_NAME: &str = "meshguard-init";
/// The sidecar's admin port, named for Prometheus scrape configs.
pub const ADMIN_PORT_NAME: &str = "mg-admin";

pub const IDENTITY_VOLUME: &str = "meshguard-identity";
pub const CONFIG_VOLUME: &str = "meshguard-config";
pub const POLICY_VOLUME: &str = "meshguard-policy";
/// iptables takes a lock file in /run; with a read-only root filesystem
/// the init container needs a writable /run of its own.
pub const XTABLES_VOLUME: &str = "meshguard-xtables-lock";
/// The identity assertion's key file or JWKS: a memory volume the sidecar
/// writes and the app's containers read (`meshguard.io/assertion`).
pub const ASSERTION_VOLUME: &str = "meshguard-assertion";
pub const VOLUMES: [&str; 5] = [
    IDENTITY_VOLUME,
    CONFIG_VOLUME,
    POLICY_VOLUME,
    XTABLES_VOLUME,
    ASSERTION_VOLUME,
];

/// Where the SVID lands: tls.crt, tls.key, ca.crt (the file names both
/// csi-driver-spiffe and a `kubernetes.io/tls` Secret from cert-manager use).
pub const IDENTITY_DIR: &str = "/var/run/secrets/meshguard/identity";
pub const CONFIG_DIR: &str = "/etc/meshguard/config";
/// The key of the config ConfigMap that holds the sidecar's config file.
pub const CONFIG_FILE: &str = "meshguard.yaml";
pub const POLICY_DIR: &str = "/etc/meshguard/policy";
/// The key of the policy ConfigMap that holds the allow matrix.
pub const POLICY_FILE: &str = "policy.yaml";

pub const CSI_DRIVER: &str = "spiffe.csi.cert-manager.io";
/// The SPIFFE CSI driver, which mounts a SPIRE agent's Workload API socket.
pub const SPIFFE_CSI_DRIVER: &str = "csi.spiffe.io";
/// Where the sidecar sees that socket's directory (SPIRE's documented path).
pub const WORKLOAD_API_DIR: &str = "/spiffe-workload-api";
/// The agent's socket in it, as the SPIFFE standard's variable names it.
pub const WORKLOAD_API_SOCKET: &str = "unix:///spiffe-workload-api/spire-agent.sock";
/// csi-driver-spiffe writes the key readable by this group only.
pub const CSI_FS_GROUP_ATTRIBUTE: &str = "spiffe.csi.cert-manager.io/fs-group";

fn resources(r: &ProxyResources) -> Value {
    let pairs = |cpu: &Option<String>, memory: &Option<String>| -> Mapping {
        [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (s(k), s(v))))
            .collect()
    };
    let requests = pairs(&r.cpu_request, &r.memory_request);
    let limits = pairs(&r.cpu_limit, &r.memory_limit);
    let mut out = Mapping::new();
    if !limits.is_empty() {
        out.insert(s("limits"), Value::Mapping(limits));
    }
    if !requests.is_empty() {
        out.insert(s("requests"), Value::Mapping(requests));
    }
    Value::Mapping(out)
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn strings(items: &[String]) -> Value {
    Value::Sequence(items.iter().map(|a| s(a)).collect())
}

/// The init container that sets up capture. It must run as root with
/// NET_ADMIN/NET_RAW (nothing else), and it runs first, before any other
/// init container can open a connection.
pub(super) fn init_container(settings: &Settings, opts: &InjectOptions) -> Value {
    map([
        ("name", s(INIT_NAME)),
        ("image", s(&opts.image)),
        ("args", strings(&init_iptables_args(&settings.capture))),
        (
            "resources",
            resources(&ProxyResources {
                cpu_request: Some("10m".into()),
                memory_request: Some("16Mi".into()),
                cpu_limit: None,
                memory_limit: Some("64Mi".into()),
            }),
        ),
        ("securityContext", init_security_context()),
        ("terminationMessagePolicy", s("FallbackToLogsOnError")),
        (
            "volumeMounts",
            Value::Sequence(vec![map([
                ("mountPath", s("/run")),
                ("name", s(XTABLES_VOLUME)),
            ])]),
        ),
    ])
}

/// `meshguard init-iptables` arguments; an empty exclusion list is left
/// out rather than passed as an empty flag value.
fn init_iptables_args(c: &CaptureConfig) -> Vec<String> {
    let mut args = vec![
        "init-iptables".to_owned(),
        "--inbound-port".to_owned(),
        c.inbound_port.to_string(),
        "--outbound-port".to_owned(),
        c.outbound_port.to_string(),
        "--admin-port".to_owned(),
        c.admin_port.to_string(),
        "--probe-port".to_owned(),
        c.probe_port.to_string(),
        "--proxy-uid".to_owned(),
        c.proxy_uid.to_string(),
    ];
    for (flag, value) in [
        ("--exclude-inbound-ports", join(&c.exclude_inbound_ports)),
        ("--exclude-outbound-ports", join(&c.exclude_outbound_ports)),
        ("--exclude-outbound-cidrs", join(&c.exclude_outbound_cidrs)),
    ] {
        if !value.is_empty() {
            args.push(flag.to_owned());
            args.push(value);
        }
    }
    args
}

fn init_security_context() -> Value {
    map([
        ("allowPrivilegeEscalation", Value::Bool(false)),
        (
            "capabilities",
            map([
                ("add", seq_of_str(&["NET_ADMIN", "NET_RAW"])),
                ("drop", seq_of_str(&["ALL"])),
            ]),
        ),
        ("privileged", Value::Bool(false)),
        ("readOnlyRootFilesystem", Value::Bool(true)),
        // Explicit, so a pod-level runAsNonRoot does not block it.
        ("runAsNonRoot", Value::Bool(false)),
        ("runAsUser", n(0u32)),
        ("seccompProfile", map([("type", s("RuntimeDefault"))])),
    ])
}

/// `meshguard run` arguments: the config file from the ConfigMap, or (no
/// ConfigMap) an inbound-only sidecar described by flags; then the workers
/// (`meshguard.io/proxy-workers` or the CPU limit) when more than one.
fn run_args(settings: &Settings, app_port: Option<u16>) -> Vec<String> {
    let mut args = listener_args(settings, app_port);
    if let Some(workers) = settings.workers {
        args.extend(["--workers".into(), workers.to_string()]);
    }
    args
}

fn listener_args(settings: &Settings, app_port: Option<u16>) -> Vec<String> {
    let c = &settings.capture;
    if settings.config_map.is_some() {
        // The admin port is forced onto all addresses whatever the config
        // says: kubelet probes it on the pod IP, so loopback would leave a
        // pod that never becomes ready.
        return vec![
            "run".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            "--admin".into(),
            format!("[::]:{}", c.admin_port),
        ];
    }
    let mut args: Vec<String> = if settings.spiffe_csi {
        // The socket comes from SPIFFE_ENDPOINT_SOCKET (see sidecar_env).
        vec!["run".into(), "--workload-api".into()]
    } else {
        vec![
            "run".into(),
            "--cert".into(),
            format!("{IDENTITY_DIR}/tls.crt"),
            "--key".into(),
            format!("{IDENTITY_DIR}/tls.key"),
            "--bundle".into(),
            format!("{IDENTITY_DIR}/ca.crt"),
        ]
    };
    if let Some(port) = app_port {
        // `[::]` takes IPv4 too (net.ipv6.bindv6only is 0 in pods), so one
        // listener serves what both families' REDIRECT rules send.
        args.extend([
            "--inbound".into(),
            format!("[::]:{}", c.inbound_port),
            "--app".into(),
            format!("127.0.0.1:{port}"),
        ]);
        if settings.policy_config_map.is_some() {
            args.extend(["--policy".into(), format!("{POLICY_DIR}/{POLICY_FILE}")]);
        }
    }
    // Kubelet probes the admin port on the pod IP, so not loopback here.
    args.extend(["--admin".into(), format!("[::]:{}", c.admin_port)]);
    args
}

fn http_probe(path: &str, port: u16, period: u32, failures: u32) -> Value {
    map([
        (
            "httpGet",
            map([("path", s(path)), ("port", n(port)), ("scheme", s("HTTP"))]),
        ),
        ("periodSeconds", n(period)),
        ("failureThreshold", n(failures)),
        ("timeoutSeconds", n(1u32)),
    ])
}

/// The sidecar container.
pub(super) fn sidecar_container(
    settings: &Settings,
    opts: &InjectOptions,
    app_port: Option<u16>,
    has_app_probes: bool,
) -> Value {
    let c = &settings.capture;
    let mut container = map([
        ("name", s(SIDECAR_NAME)),
        ("image", s(&opts.image)),
        ("args", strings(&run_args(settings, app_port))),
        (
            "env",
            Value::Sequence(sidecar_env(settings, has_app_probes)),
        ),
        (
            "ports",
            Value::Sequence(vec![map([
                ("containerPort", n(c.admin_port)),
                ("name", s(ADMIN_PORT_NAME)),
                ("protocol", s("TCP")),
            ])]),
        ),
        ("resources", resources(&settings.resources)),
        ("securityContext", sidecar_security_context(c.proxy_uid)),
        // Ready means SVID, bundle and every listener are up. The startup
        // probe holds the app back (native mode) until then: 1 s period,
        // up to 2 minutes for the CSI driver to issue the first SVID.
        ("startupProbe", http_probe("/ready", c.admin_port, 1, 120)),
        ("readinessProbe", http_probe("/ready", c.admin_port, 5, 3)),
        ("livenessProbe", http_probe("/live", c.admin_port, 10, 3)),
        ("terminationMessagePolicy", s("FallbackToLogsOnError")),
        ("volumeMounts", Value::Sequence(sidecar_mounts(settings))),
    ]);
    if settings.mode == SidecarMode::Native {
        if let Value::Mapping(m) = &mut container {
            // What makes an init container a native sidecar: started in
            // order before the app, kept running, stopped after it.
            m.insert(s("restartPolicy"), s("Always"));
        }
    }
    container
}

fn sidecar_env(settings: &Settings, has_app_probes: bool) -> Vec<Value> {
    let mut env = vec![map([("name", s(ENV_LOG_FORMAT)), ("value", s("json"))])];
    if has_app_probes {
        // Not loopback: kubelet calls the probe port on the pod IP.
        env.push(map([
            ("name", s(ENV_PROBE_LISTEN)),
            ("value", s(&format!("[::]:{}", settings.capture.probe_port))),
        ]));
        env.push(map([
            ("name", s(ENV_APP_PROBES)),
            (
                "valueFrom",
                map([(
                    "fieldRef",
                    map([(
                        "fieldPath",
                        s(&format!("metadata.annotations['{APP_PROBES}']")),
                    )]),
                )]),
            ),
        ]));
    }
    if let Some(ports) = &settings.inbound_tcp_ports {
        env.push(map([
            ("name", s(ENV_INBOUND_TCP_PORTS)),
            ("value", s(ports)),
        ]));
    }
    if let Some(mode) = settings.assertion {
        env.push(map([("name", s(ENV_ASSERTION)), ("value", s(mode))]));
    }
    if settings.spiffe_csi {
        env.push(map([
            ("name", s(crate::sidecar::config::ENDPOINT_ENV)),
            ("value", s(WORKLOAD_API_SOCKET)),
        ]));
    }
    if settings.shutdown_endpoint {
        env.push(map([
            ("name", s(ENV_SHUTDOWN_LISTEN)),
            ("value", s(&format!("127.0.0.1:{SHUTDOWN_PORT}"))),
        ]));
    }
    env
}

fn sidecar_mounts(settings: &Settings) -> Vec<Value> {
    let read_only = |dir: &str, volume: &str| {
        map([
            ("mountPath", s(dir)),
            ("name", s(volume)),
            ("readOnly", Value::Bool(true)),
        ])
    };
    let identity_dir = if settings.spiffe_csi {
        WORKLOAD_API_DIR
    } else {
        IDENTITY_DIR
    };
    let mut mounts = vec![read_only(identity_dir, IDENTITY_VOLUME)];
    if settings.config_map.is_some() {
        mounts.push(read_only(CONFIG_DIR, CONFIG_VOLUME));
    }
    if settings.policy_config_map.is_some() {
        mounts.push(read_only(POLICY_DIR, POLICY_VOLUME));
    }
    if settings.assertion.is_some() {
        mounts.push(map([
            ("mountPath", s(ASSERTION_DIR)),
            ("name", s(ASSERTION_VOLUME)),
        ]));
    }
    mounts
}

/// The mount each app container gets when the pod has an assertion volume.
pub(super) fn app_assertion_mount() -> Value {
    map([
        ("mountPath", s(ASSERTION_DIR)),
        ("name", s(ASSERTION_VOLUME)),
        ("readOnly", Value::Bool(true)),
    ])
}

fn sidecar_security_context(proxy_uid: u32) -> Value {
    let uid = n(proxy_uid);
    map([
        ("allowPrivilegeEscalation", Value::Bool(false)),
        ("capabilities", map([("drop", seq_of_str(&["ALL"]))])),
        ("privileged", Value::Bool(false)),
        ("readOnlyRootFilesystem", Value::Bool(true)),
        ("runAsGroup", uid.clone()),
        ("runAsNonRoot", Value::Bool(true)),
        ("runAsUser", uid),
        ("seccompProfile", map([("type", s("RuntimeDefault"))])),
    ])
}

/// The pod volumes the two containers mount.
pub(super) fn volumes(settings: &Settings) -> Vec<Value> {
    let identity = match &settings.identity_secret {
        Some(secret) => map([
            ("name", s(IDENTITY_VOLUME)),
            ("secret", map([("secretName", s(secret))])),
        ]),
        None if settings.spiffe_csi => map([
            ("name", s(IDENTITY_VOLUME)),
            (
                "csi",
                map([
                    ("driver", s(SPIFFE_CSI_DRIVER)),
                    ("readOnly", Value::Bool(true)),
                ]),
            ),
        ]),
        None => map([
            ("name", s(IDENTITY_VOLUME)),
            (
                "csi",
                map([
                    ("driver", s(CSI_DRIVER)),
                    ("readOnly", Value::Bool(true)),
                    (
                        "volumeAttributes",
                        map([(
                            CSI_FS_GROUP_ATTRIBUTE,
                            s(&settings.capture.proxy_uid.to_string()),
                        )]),
                    ),
                ]),
            ),
        ]),
    };
    let mut out = vec![identity];
    let config_map =
        |volume: &str, cm: &str| map([("name", s(volume)), ("configMap", map([("name", s(cm))]))]);
    if let Some(cm) = &settings.config_map {
        out.push(config_map(CONFIG_VOLUME, cm));
    }
    if let Some(cm) = &settings.policy_config_map {
        out.push(config_map(POLICY_VOLUME, cm));
    }
    out.push(map([
        ("name", s(XTABLES_VOLUME)),
        ("emptyDir", Value::Mapping(Mapping::new())),
    ]));
    if settings.assertion.is_some() {
        // In memory: a key must not land on the node's disk.
        out.push(map([
            ("name", s(ASSERTION_VOLUME)),
            (
                "emptyDir",
                map([("medium", s("Memory")), ("sizeLimit", s("1Mi"))]),
            ),
        ]));
    }
    out
}
