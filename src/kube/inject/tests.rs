use super::*;
use crate::kube::contract;

mod golden;

use golden::test_options;

fn pod(annotations: &str, body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n{annotations}spec:\n  containers:\n  - name: app\n    image: app:1\n    ports:\n    - containerPort: 8080\n{body}"
    )
}

// ---- emitter ------------------------------------------------------------

fn roundtrip(v: &Value) -> Value {
    let text = emit::document(v).expect("emit");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn strings_that_yaml_1_1_reads_otherwise_are_quoted() {
    for word in [
        "on",
        "off",
        "yes",
        "no",
        "y",
        "N",
        "True",
        "NULL",
        "~",
        "",
        "0755",
        "1_000",
        "0x1F",
        "0o17",
        "1:20",
        "1e3",
        "2001-12-14",
        "2001-12-14T21:59:43Z",
        ".inf",
        "-.5",
        "+1",
        "=",
        "-",
        "- x",
        "@x",
        "a: b",
        "a #b",
        "x:",
        " lead",
        "trail ",
        "[::]:15006",
        "*ref",
        "&a",
        "!tag",
        "%x",
        "|",
        ">",
        "'q'",
        "\"q\"",
        "#c",
        "{}",
        "[]",
        "café",
    ] {
        assert!(emit::needs_quotes(word), "{word:?} must be quoted");
        let v = Value::String(word.into());
        assert_eq!(roundtrip(&v), v, "{word:?}");
    }
    for plain in [
        "nginx:1.25",
        "--config",
        "/etc/meshguard/config/meshguard.yaml",
        "meshguard.io/inject",
        "spiffe.csi.cert-manager.io",
        "RuntimeDefault",
        "64Mi",
        "50m",
        "app",
        "a b",
        "face",
        "x-1.2",
    ] {
        assert!(!emit::needs_quotes(plain), "{plain:?} need not be quoted");
    }
}

#[test]
fn emitter_round_trips_awkward_values() {
    let text = r##"
a: "line1\nline2\n"
b: "no trailing\nnewline"
c: "two trailing\n\n"
d: " leading space\nx"
e: "tab\there"
f: "ctl\u0001char"
g: "it's"
h: "it's \"both\""
i: "\u2028sep"
j: [[1, 2], [], {}, {k: v}]
k: {"": empty key, "with: colon": 1}
l: 1.5
m: -3
n: null
o: true
p: ["- not a list", "#", "a\n  indented\n"]
"##;
    let v: Value = serde_norway::from_str(text).unwrap();
    assert_eq!(roundtrip(&v), v);
    let out = emit::document(&v).unwrap();
    assert!(out.contains("a: |\n  line1\n  line2\n"), "{out}");
    assert!(out.contains("b: |-\n"), "{out}");
    assert!(out.contains("c: |+\n"), "{out}");
    assert!(out.contains("g: \"it's\"\n"), "{out}");
}

#[test]
fn tagged_values_are_refused_rather_than_mangled() {
    let v: Value = serde_norway::from_str("a: !custom x").unwrap();
    assert!(emit::document(&v).is_err());
}

// ---- documents ----------------------------------------------------------

#[test]
fn split_keeps_every_byte_and_counts_lines() {
    let input = "# head\n---\na: 1\n--- # c\nb: 2\n---\n---\nc: 3";
    let chunks = docs::split(input);
    let joined: String = chunks.iter().map(|c| c.text).collect();
    assert_eq!(joined, input);
    let firsts: Vec<usize> = chunks.iter().map(|c| c.first_line).collect();
    assert_eq!(firsts, [1, 2, 4, 6, 7]);
    assert!(!chunks[0].has_marker && chunks[1].has_marker);
    // "----" and "--- x" inside a line are not markers; "---x" is not.
    assert_eq!(docs::split("a: ---\nb: |\n  ---\n---x: 1\n").len(), 1);
}

#[test]
fn invalid_yaml_names_the_document_and_the_line() {
    let input = "kind: Service\n---\n# two\nkind: Pod\nspec:\n  containers: [\n";
    match inject(input, &test_options()) {
        Err(InjectError::Yaml { doc, line, .. }) => {
            assert_eq!(doc, 2);
            assert_eq!(line, 7, "end of input, where the sequence is left open");
        }
        other => panic!("{other:?}"),
    }
    let input = "a: 1\n---\nb: 1\nb: 2\n";
    let err = inject(input, &test_options()).unwrap_err().to_string();
    assert!(err.starts_with("document 2, line 4"), "{err}");
}

#[test]
fn comment_and_empty_documents_pass_through_uncounted() {
    let input = "# only a comment\n---\n---\n# another\n";
    let out = inject(input, &test_options()).unwrap();
    assert_eq!(out.yaml, input);
    assert!(out.reports.is_empty());
}

#[test]
fn leading_comments_survive_injection_and_a_missing_final_newline_is_added() {
    let input = format!("---\n# keep me\n\n# and me\n{}", pod("    note: hi\n", ""));
    let out = inject(input.trim_end(), &test_options()).unwrap();
    assert!(
        out.yaml
            .starts_with("---\n# keep me\n\n# and me\napiVersion: v1\n"),
        "{}",
        out.yaml
    );
    let untouched = inject("kind: Service\nmetadata: {name: s}", &test_options()).unwrap();
    assert_eq!(untouched.yaml, "kind: Service\nmetadata: {name: s}\n");
}

// ---- annotations ----------------------------------------------------------

#[test]
fn annotation_errors_point_at_the_annotation_line() {
    let input = pod("    meshguard.io/app-port: \"http\"\n", "");
    match inject(&input, &test_options()) {
        Err(InjectError::Annotation {
            doc, line, name, ..
        }) => {
            assert_eq!((doc, line, name.as_str()), (1, 6, annotations::APP_PORT));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_annotation_value_is_validated() {
    let bad = [
        ("meshguard.io/inject", "no"),
        ("meshguard.io/sidecar-mode", "sidecar"),
        ("meshguard.io/shutdown-endpoint", "enabled"), // native mode
        ("meshguard.io/config-map", "Not_A_Name"),
        ("meshguard.io/identity-secret", "-x"),
        ("meshguard.io/app-port", "0"),
        ("meshguard.io/exclude-inbound-ports", "15006"),
        ("meshguard.io/exclude-outbound-ports", "15001"),
        ("meshguard.io/exclude-outbound-cidrs", "::/0"),
        ("meshguard.io/proxy-memory-limit", "64MB"),
        ("meshguard.io/proxy-cpu-request", "-1"),
        ("meshguard.io/proxy-workers", "0"),
        ("meshguard.io/injectt", "enabled"),
    ];
    for (name, value) in bad {
        let input = pod(&format!("    {name}: {value:?}\n"), "");
        let err = inject(&input, &test_options()).expect_err(name);
        assert!(
            matches!(&err, InjectError::Annotation { name: n, .. } if n == name),
            "{name}: {err}"
        );
    }
    let not_a_string = pod("    meshguard.io/app-port: 8080\n", "");
    assert!(inject(&not_a_string, &test_options())
        .unwrap_err()
        .to_string()
        .contains("must be strings"));
}

#[test]
fn quantities_and_names() {
    for q in ["100m", "0.5", "1", "64Mi", "2Gi", "1e3", "1.5E-2", "500k"] {
        assert!(annotations::is_quantity(q), "{q}");
    }
    for q in ["", "m", "64MB", "1.2.3", "-1", "1e", "Mi", "1 Mi"] {
        assert!(!annotations::is_quantity(q), "{q}");
    }
    assert!(annotations::is_dns_subdomain("orders-meshguard.v2"));
    for n in ["", "A", "a_b", "-a", "a-", "a..b"] {
        assert!(!annotations::is_dns_subdomain(n), "{n}");
    }
}

#[test]
fn cpu_quantities_in_cores() {
    for (q, cores) in [
        ("500m", 0.5),
        ("1500m", 1.5),
        ("2", 2.0),
        ("0.25", 0.25),
        ("2e0", 2.0),
        ("1.5E+1", 15.0),
    ] {
        assert_eq!(annotations::cpu_cores(q), Some(cores), "{q}");
    }
    for q in ["64Mi", "1Gi", "", "m", "-1"] {
        assert_eq!(annotations::cpu_cores(q), None, "{q}");
    }
}

/// The `--workers` a pod's sidecar gets: from `proxy-workers`, else one per
/// core of the CPU limit (rounded up), and none when that is one.
#[test]
fn workers_follow_the_cpu_limit_unless_set() {
    let workers = |annotations: &str| -> Option<String> {
        let out = inject(&pod(annotations, ""), &test_options()).unwrap().yaml;
        let args: Vec<&str> = out.lines().map(str::trim).collect();
        let at = args.iter().position(|a| *a == "- --workers")?;
        Some(
            args[at + 1]
                .trim_start_matches("- ")
                .trim_matches('\'')
                .to_owned(),
        )
    };
    assert_eq!(workers(""), None);
    assert_eq!(workers("    meshguard.io/proxy-cpu-limit: 500m\n"), None);
    assert_eq!(workers("    meshguard.io/proxy-cpu-limit: \"1\"\n"), None);
    assert_eq!(
        workers("    meshguard.io/proxy-cpu-limit: 1001m\n").as_deref(),
        Some("2")
    );
    assert_eq!(
        workers("    meshguard.io/proxy-cpu-limit: \"4\"\n").as_deref(),
        Some("4")
    );
    assert_eq!(
        workers("    meshguard.io/proxy-cpu-limit: \"1000\"\n").as_deref(),
        Some("64")
    );
    let set = "    meshguard.io/proxy-cpu-limit: \"4\"\n    meshguard.io/proxy-workers: \"1\"\n";
    assert_eq!(workers(set), None);
    assert_eq!(
        workers("    meshguard.io/proxy-workers: \"2\"\n").as_deref(),
        Some("2")
    );
    for bad in ["0", "65", "1.5", "+2", "two"] {
        let input = pod(&format!("    meshguard.io/proxy-workers: {bad:?}\n"), "");
        let err = inject(&input, &test_options()).expect_err(bad);
        assert!(err.to_string().contains("from 1 to 64"), "{bad}: {err}");
    }
}

#[test]
fn annotations_on_the_workload_instead_of_the_template_are_warned_about() {
    let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  annotations:\n    meshguard.io/inject: disabled\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: a\n        ports:\n        - containerPort: 80\n";
    let out = inject(input, &test_options()).unwrap();
    assert_eq!(out.reports[0].skipped, None, "the template is what counts");
    assert!(out.reports[0].warnings[0].contains("only the pod template"));
}

// ---- probes contract --------------------------------------------------------

#[test]
fn app_probes_annotation_is_the_documented_json() {
    let json = r#"{"web/liveness":{"original":{"httpGet":{"path":"/h?x=1","port":"http","scheme":"HTTPS"}},"forward":{"type":"http","port":8443,"scheme":"HTTPS","path":"/h?x=1","headers":[{"name":"X","value":"1"}],"timeoutSeconds":1}},"web/readiness":{"original":{"tcpSocket":{"port":80}},"forward":{"type":"tcp","port":80,"timeoutSeconds":2}},"web/startup":{"original":{"grpc":{"port":9000}},"forward":{"type":"grpc","port":9000,"service":"a.B","timeoutSeconds":1}}}"#;
    let parsed = contract::parse_app_probes(json).unwrap();
    assert_eq!(
        parsed["web/liveness"].forward,
        contract::Forward::Http {
            port: 8443,
            scheme: contract::Scheme::Https,
            path: "/h?x=1".into(),
            headers: vec![contract::HttpHeader {
                name: "X".into(),
                value: "1".into()
            }],
            timeout_seconds: 1,
        }
    );
    assert_eq!(
        parsed["web/readiness"].forward,
        contract::Forward::Tcp {
            port: 80,
            timeout_seconds: 2
        }
    );
    assert_eq!(contract::to_json(&parsed).unwrap(), json, "stable encoding");
    assert!(contract::parse_app_probes(
        r#"{"a/liveness":{"original":{},"forward":{"type":"udp","port":1,"timeoutSeconds":1}}}"#
    )
    .is_err());
}

#[test]
fn an_unresolvable_named_probe_port_is_an_error() {
    let input = pod(
        "    note: hi\n",
        "    livenessProbe:\n      httpGet:\n        port: nope\n",
    );
    let err = inject(&input, &test_options()).unwrap_err().to_string();
    assert!(
        err.contains("\"nope\" is not a port of this container"),
        "{err}"
    );
}

#[test]
fn a_hand_edited_probe_record_is_reported() {
    let injected = inject(
        &pod(
            "    note: hi\n",
            "    readinessProbe:\n      tcpSocket:\n        port: 8080\n",
        ),
        &test_options(),
    )
    .unwrap()
    .yaml;
    let edited = injected.replace("{\"app/readiness\"", "{\"app/readiness\"x");
    assert_ne!(edited, injected);
    let err = inject(&edited, &test_options()).unwrap_err();
    assert!(
        matches!(&err, InjectError::Annotation { name, .. } if name == annotations::APP_PROBES),
        "{err}"
    );
}

#[test]
fn changing_an_annotation_and_injecting_again_updates_the_sidecar() {
    let first = inject(&pod("    note: hi\n", ""), &test_options())
        .unwrap()
        .yaml;
    let edited = first.replace(
        "    note: hi\n",
        "    note: hi\n    meshguard.io/exclude-outbound-ports: \"5432\"\n",
    );
    let second = inject(&edited, &test_options()).unwrap();
    assert!(second.reports[0].changed);
    assert!(
        second
            .yaml
            .contains("- --exclude-outbound-ports\n    - '5432'\n"),
        "{}",
        second.yaml
    );
    assert_eq!(second.yaml.matches("name: meshguard-init").count(), 1);
}

// ---- deploy/ ----------------------------------------------------------------

fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn example_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir().join("example"))
        .expect("deploy/example")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// deploy/example-injected/ is what `meshguard inject` (default options)
/// makes of deploy/example/; `UPDATE_GOLDEN=1` regenerates it.
#[test]
fn deploy_example_injected_is_the_output_of_inject() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let files = example_files();
    assert!(files.len() >= 4);
    for file in files {
        let name = file.file_name().expect("file name");
        let input = std::fs::read_to_string(&file).expect("readable");
        let out = inject(&input, &InjectOptions::default()).expect("injects");
        let target = deploy_dir().join("example-injected").join(name);
        if update {
            std::fs::write(&target, &out.yaml).expect("write");
        }
        let expected = std::fs::read_to_string(&target).unwrap_or_default();
        assert_eq!(
            out.yaml,
            expected,
            "{} is stale (UPDATE_GOLDEN=1)",
            target.display()
        );
        for r in &out.reports {
            assert!(
                r.skipped.is_none() || r.skipped == Some(SkipReason::UnsupportedKind),
                "{r:?}"
            );
            assert!(r.warnings.is_empty(), "{r:?}");
        }
    }
}

/// The sidecar configs and policies in deploy/example load, and listen
/// where the injector's capture rules and probes expect them.
#[test]
fn deploy_example_configs_load_and_match_the_injected_ports() {
    use crate::kube::contract::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};
    use serde::Deserialize;
    let (mut configs, mut policies) = (0, 0);
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("readable");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).expect("yaml");
            let Some(data) = v.get("data").and_then(Value::as_mapping) else {
                continue;
            };
            if let Some(cfg) = data.get(sidecar::CONFIG_FILE).and_then(Value::as_str) {
                let c = crate::sidecar::config::Config::from_yaml(
                    cfg,
                    "example",
                    std::path::Path::new("/"),
                )
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert_eq!(c.admin.listen.port(), ADMIN_PORT);
                assert!(
                    !c.admin.listen.ip().is_loopback(),
                    "kubelet probes the pod IP"
                );
                if let Some(i) = &c.inbound {
                    assert_eq!(i.listen.port(), INBOUND_PORT);
                    assert!(i.app.ip().is_loopback());
                }
                if let Some(listen) = c.outbound.as_ref().and_then(|o| o.listen) {
                    assert_eq!(listen.port(), OUTBOUND_PORT);
                }
                configs += 1;
            }
            if let Some(p) = data.get(sidecar::POLICY_FILE).and_then(Value::as_str) {
                crate::sidecar::policy::Policy::from_yaml(p, "policy.yaml")
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                policies += 1;
            }
        }
    }
    assert_eq!((configs, policies), (2, 1));
}

#[test]
fn octal_file_modes_are_numbers_in_pod_templates_only() {
    let input = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n  data:\n    mode: \"0644\"\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec:\n    containers:\n    - name: a\n      image: a\n      ports: [{containerPort: 80}]\n    volumes:\n    - name: v\n      configMap: {name: c, defaultMode: 0644}\n";
    let out = inject(input, &test_options()).unwrap().yaml;
    assert!(out.contains("    mode: '0644'\n"), "{out}");
    assert!(out.contains("      defaultMode: 420\n"), "{out}");
}
