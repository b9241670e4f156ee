//! The observability files in deploy/ against the real thing: every metric,
//! label and label value the Grafana dashboard and the alert rules query is
//! one a running meshguard exposes; the queries parse (promtool); the alert
//! rules pass `promtool check rules` and their unit tests, and the
//! PrometheusRule carries the very same rules; the ServiceMonitor selects a
//! Service port that reaches the sidecar's admin port in the example mesh.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use support::*;

const DASHBOARD: &str = "deploy/observability/grafana-dashboard.json";
const ALERTS: &str = "deploy/observability/alerts.yaml";
const ALERT_TESTS: &str = "deploy/observability/alerts.test.yaml";
const PROMETHEUS_RULE: &str = "deploy/observability/prometheusrule.yaml";
const SERVICE_MONITOR: &str = "deploy/observability/servicemonitor.yaml";
const SCRAPE_CONFIG: &str = "deploy/prometheus/scrape-config.yaml";
const INJECTED: &str = "deploy/example-injected";

/// Labels Prometheus attaches to every series of a target (scrape
/// configuration, ServiceMonitor), not meshguard.
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "app",
    "service",
    "container",
    "endpoint",
];
/// Series Prometheus makes itself for every target.
const SYNTHETIC_METRICS: &[&str] = &["up"];
/// The job every scrape configuration in deploy/ gives meshguard.
const JOB: &str = "meshguard";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_repo(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_docs(path: &str) -> Vec<Value> {
    yaml_docs_at(&repo(path))
}

fn yaml_docs_at(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

// ---------------------------------------------------------------- PromQL

/// One `metric{label op "value", ...}` in a query.
#[derive(Debug, Clone)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// What a query refers to: series selectors and the labels of its
/// `by`/`without`/`on`/`ignoring`/`group_*` clauses.
#[derive(Debug, Default)]
struct Query {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small PromQL scanner: enough to find every metric name, matcher and
/// grouping label in the queries of this repository. A syntax error is
/// promtool's to find (`dashboard_queries_parse`).
fn parse_promql(expr: &str) -> Query {
    let s: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
    };
    let ident = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && is_ident(s[*i]) {
            *i += 1;
        }
        s[start..*i].iter().collect::<String>()
    };
    let string = |i: &mut usize| {
        let quote = s[*i];
        let mut out = String::new();
        *i += 1;
        while *i < s.len() && s[*i] != quote {
            if s[*i] == '\\' && quote != '`' {
                *i += 1;
            }
            if *i < s.len() {
                out.push(s[*i]);
            }
            *i += 1;
        }
        *i += 1;
        out
    };
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            string(&mut i);
        } else if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '[' {
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let word = ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            let next = s.get(j).copied();
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    i = j + 1;
                    while i < s.len() && s[i] != ')' {
                        skip_ws(&mut i);
                        if i < s.len() && is_ident_start(s[i]) {
                            q.grouping.push(ident(&mut i));
                        } else {
                            i += 1;
                        }
                    }
                    i += 1;
                }
            } else if AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
                || next == Some('(')
            {
                // An operator or a function call.
            } else {
                let mut sel = Selector {
                    metric: word,
                    matchers: Vec::new(),
                };
                if next == Some('{') {
                    i = j + 1;
                    loop {
                        skip_ws(&mut i);
                        if i >= s.len() || s[i] == '}' {
                            i += 1;
                            break;
                        }
                        if s[i] == ',' {
                            i += 1;
                            continue;
                        }
                        let label = ident(&mut i);
                        skip_ws(&mut i);
                        let op_start = i;
                        while i < s.len() && matches!(s[i], '=' | '!' | '~') {
                            i += 1;
                        }
                        let op: String = s[op_start..i].iter().collect();
                        skip_ws(&mut i);
                        assert!(
                            !label.is_empty() && !op.is_empty() && i < s.len(),
                            "cannot read the matchers of {expr}"
                        );
                        let value = string(&mut i);
                        sel.matchers.push((label, op, value));
                    }
                }
                q.selectors.push(sel);
            }
        } else {
            i += 1;
        }
    }
    q
}

#[test]
fn the_promql_scanner_reads_what_the_dashboard_writes() {
    let q = parse_promql(
        "histogram_quantile(0.99, sum by (direction, le) (rate(m_bucket{a=\"x, y\", b=~\"$v\"}[$__rate_interval]))) \
         / on (pod) group_left (version) count(other) - time() > 1e3 or vector(0)",
    );
    let names: Vec<_> = q.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["m_bucket", "other"]);
    assert_eq!(
        q.selectors[0].matchers,
        [
            ("a".into(), "=".into(), "x, y".into()),
            ("b".into(), "=~".into(), "$v".into())
        ]
    );
    assert_eq!(q.grouping, ["direction", "le", "pod", "version"]);
}

// ---------------------------------------------------------------- scraping

/// The series of one exposition: name and labels of every sample.
struct Exposition {
    families: BTreeSet<String>,
    samples: Vec<(String, BTreeMap<String, String>)>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families = BTreeSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap();
            let name = line[..name_end].to_owned();
            let mut labels = BTreeMap::new();
            if line[name_end..].starts_with('{') {
                let s: Vec<char> = line[name_end + 1..].chars().collect();
                let mut i = 0;
                while i < s.len() && s[i] != '}' {
                    let start = i;
                    while s[i] != '=' {
                        i += 1;
                    }
                    let label: String = s[start..i].iter().collect();
                    i += 2; // `="`
                    let mut value = String::new();
                    while s[i] != '"' {
                        if s[i] == '\\' {
                            i += 1;
                        }
                        value.push(s[i]);
                        i += 1;
                    }
                    i += 1;
                    if s[i] == ',' {
                        i += 1;
                    }
                    labels.insert(label, value);
                }
            }
            samples.push((name, labels));
        }
        Exposition { families, samples }
    }

    fn series_of<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, l)| l)
    }

    fn has_sample(&self, name: &str) -> bool {
        self.series_of(name).next().is_some()
    }

    /// The family a sample name belongs to (`x_bucket` → `x`).
    fn family_of(&self, sample: &str) -> Option<String> {
        if self.families.contains(sample) {
            return Some(sample.to_owned());
        }
        ["_bucket", "_count", "_sum"]
            .iter()
            .filter_map(|suffix| sample.strip_suffix(suffix))
            .find(|f| self.families.contains(*f))
            .map(str::to_owned)
    }
}

const POLICY: &str = "rules:\n  - name: public\n    action: allow\n    from: [\"spiffe://cluster.local/ns/shop/*\"]\n    paths: [\"/public/*\"]\n";

/// Scrapes a real sidecar after traffic that gives every family, and the
/// label values the dashboard and the alerts select, at least one series:
/// an allowed request to an app that is down (503), a denied request, a
/// refused handshake, a policy reload that fails and one that succeeds.
async fn scrape_after_traffic() -> Exposition {
    let pki = Pki::new();
    let app_down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let policy = pki.dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut cfg = inbound_config(pki.identity("server", &id("shop", "server")), app_down);
    cfg.inbound.as_mut().unwrap().policy = Some(policy.clone());
    cfg.runtime.poll_interval_ms = 20;
    // An opaque TCP route to a peer that is down: the TCP families get a
    // connection, its bytes and how it ended.
    cfg.outbound = Some(meshguard::sidecar::config::OutboundConfig {
        tcp_routes: vec![meshguard::sidecar::config::TcpRouteConfig {
            listen: any_port(),
            peer: app_down.to_string(),
            identity: id("shop", "db"),
            port: 5432,
        }],
        ..Default::default()
    });
    let server = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let inbound = server.inbound.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(server.tcp_route_listeners[0])
        .await
        .unwrap();
    let mut nothing = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut nothing)
        .await
        .unwrap();
    assert!(nothing.is_empty(), "the peer is down: nothing comes back");

    let cert = pki.svid(&id("shop", "client"));
    let client = tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"http/1.1"]);
    let status = |r: Result<(http::StatusCode, String), String>| r.unwrap().0.as_u16();
    assert_eq!(
        status(tls_get(inbound, client.clone(), "/public/a", &[]).await),
        503
    );
    assert_eq!(
        status(tls_get(inbound, client.clone(), "/private", &[]).await),
        403
    );
    assert!(
        tls_get(inbound, tls_client(None, &[b"http/1.1"]), "/public/a", &[])
            .await
            .is_err()
    );

    let wait_for = |what: &'static str| {
        let admin = server.admin;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = scrape(admin).await;
                if text.lines().any(|l| l.contains(what)) {
                    return text;
                }
                assert!(Instant::now() < deadline, "no {what} in:\n{text}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    std::fs::write(&policy, "rules: [").unwrap();
    wait_for("result=\"failure\"").await;
    std::fs::write(&policy, POLICY.replace("public", "open")).unwrap();
    wait_for("kind=\"policy\",result=\"success\"").await;
    let text = wait_for("result=\"refused\"").await;
    server.stop().await;
    Exposition::parse(&text)
}

// ---------------------------------------------------------------- the checks

/// Every query of the dashboard (panels, rows' panels, template variables).
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("every target has an expr");
                out.push((title.clone(), expr.to_owned()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let args = query
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(): {query}", v["name"]));
        let (selector, _label) = args.rsplit_once(',').unwrap();
        out.push((
            format!("variable {}", v["name"]),
            selector.trim().to_owned(),
        ));
    }
    out
}

fn alert_rules() -> Vec<Value> {
    let doc = &yaml_docs(ALERTS)[0];
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// Checks one query against what meshguard exposes; returns its problems.
fn check_query(e: &Exposition, origin: &str, expr: &str, problems: &mut Vec<String>) {
    let q = parse_promql(expr);
    let mut labels_in_query: BTreeSet<String> =
        TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    for sel in &q.selectors {
        if SYNTHETIC_METRICS.contains(&sel.metric.as_str()) {
            labels_in_query.extend(sel.matchers.iter().map(|m| m.0.clone()));
            continue;
        }
        if !e.has_sample(&sel.metric) {
            let hint = if e.families.contains(&sel.metric) {
                " (a histogram: query its _bucket, _count or _sum series)"
            } else {
                ""
            };
            problems.push(format!(
                "{origin}: `{}` is not a series meshguard exposes{hint}",
                sel.metric
            ));
            continue;
        }
        let series: Vec<_> = e.series_of(&sel.metric).collect();
        let exposed: BTreeSet<&String> = series.iter().flat_map(|l| l.keys()).collect();
        labels_in_query.extend(exposed.iter().map(|l| l.to_string()));
        for (label, op, value) in &sel.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !exposed.contains(label) {
                problems.push(format!(
                    "{origin}: `{}` has no label `{label}` (it has {exposed:?})",
                    sel.metric
                ));
            } else if op == "=" && !series.iter().any(|l| l.get(label) == Some(value)) {
                let values: BTreeSet<_> = series.iter().filter_map(|l| l.get(label)).collect();
                problems.push(format!(
                    "{origin}: no `{}` series has {label}=\"{value}\" (seen: {values:?})",
                    sel.metric
                ));
            }
        }
    }
    for label in &q.grouping {
        if !labels_in_query.contains(label) {
            problems.push(format!(
                "{origin}: grouping label `{label}` is on none of the series of `{expr}`"
            ));
        }
    }
}

#[tokio::test]
async fn dashboard_and_alerts_query_only_what_meshguard_exposes() {
    let e = scrape_after_traffic().await;
    assert!(e.families.len() >= 10, "{:?}", e.families);
    let dashboard: Value = serde_json::from_str(&read_repo(DASHBOARD)).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{queries:?}");
    let mut problems = Vec::new();
    let mut used_families = BTreeSet::new();
    for (origin, expr) in &queries {
        check_query(
            &e,
            &format!("dashboard panel \"{origin}\""),
            expr,
            &mut problems,
        );
        for sel in parse_promql(expr).selectors {
            used_families.extend(e.family_of(&sel.metric));
        }
    }
    for rule in alert_rules() {
        let name = rule["alert"].as_str().unwrap();
        check_query(
            &e,
            &format!("alert {name}"),
            rule["expr"].as_str().unwrap(),
            &mut problems,
        );
    }
    let unused: Vec<_> = e.families.difference(&used_families).collect();
    if !unused.is_empty() {
        problems.push(format!(
            "metric families with no panel in {DASHBOARD}: {unused:?} (add a panel)"
        ));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_dashboard_query_follows_the_template_variables() {
    let d: Value = serde_json::from_str(&read_repo(DASHBOARD)).unwrap();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    let vars: BTreeMap<&str, &str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    assert_eq!(vars.get("DS_PROMETHEUS"), Some(&"datasource"), "{vars:?}");
    for v in ["job", "namespace", "pod"] {
        assert_eq!(vars.get(v), Some(&"query"), "{vars:?}");
    }
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        if p["type"] == "row" {
            continue;
        }
        for ds in std::iter::once(&p["datasource"]).chain(
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| &t["datasource"]),
        ) {
            if ds["uid"] != "${DS_PROMETHEUS}" {
                problems.push(format!("{title}: datasource {ds}"));
            }
        }
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for sel in parse_promql(expr).selectors {
                for var in ["job", "namespace", "pod"] {
                    let filtered = sel
                        .matchers
                        .iter()
                        .any(|(l, op, v)| l == var && op == "=~" && v == &format!("${var}"));
                    if !filtered {
                        problems.push(format!("{title}: `{}` lacks {var}=~\"${var}\"", sel.metric));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn promtool() -> Command {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "promtool not found: install Debian's `prometheus` package (tests/run.sh does)"
    );
    Command::new("promtool")
}

fn run_ok(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_queries_parse() {
    // promtool has no query syntax check of its own, so every dashboard
    // query becomes a recording rule, with Grafana's variables filled in.
    let d: Value = serde_json::from_str(&read_repo(DASHBOARD)).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries(&d).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "2m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$namespace", ".*")
            .replace("$pod", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let mut cmd = promtool();
    cmd.args(["check", "rules"]).arg(&file);
    run_ok(cmd);
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let mut check = promtool();
    check.args(["check", "rules"]).arg(repo(ALERTS));
    run_ok(check);
    let mut test = promtool();
    test.args(["test", "rules"]).arg(repo(ALERT_TESTS));
    run_ok(test);
    let names: Vec<_> = alert_rules()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    let tested = read_repo(ALERT_TESTS);
    for name in &names {
        assert!(
            tested.contains(&format!("alertname: {name}")),
            "{name} has no unit test in {ALERT_TESTS}"
        );
    }
    // Rules that select a job select the one our scrape configs set.
    for rule in alert_rules() {
        for sel in parse_promql(rule["expr"].as_str().unwrap()).selectors {
            for (label, _, value) in &sel.matchers {
                if label == "job" {
                    assert_eq!(value, JOB, "{}", rule["alert"]);
                }
            }
        }
    }
}

#[test]
fn prometheus_rule_carries_the_alert_rules() {
    let plain = &yaml_docs(ALERTS)[0];
    let docs = yaml_docs(PROMETHEUS_RULE);
    assert_eq!(docs.len(), 1);
    let pr = &docs[0];
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(
        &pr["spec"], plain,
        "{PROMETHEUS_RULE} must hold exactly the groups of {ALERTS}"
    );
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

fn port_number(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("use a port number, not {v}"))
}

#[test]
fn service_monitor_reaches_the_sidecar_admin_port() {
    let docs = yaml_docs(SERVICE_MONITOR);
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let services: Vec<&Value> = of_kind("Service").collect();
    let monitors: Vec<&Value> = of_kind("ServiceMonitor").collect();
    assert_eq!(monitors.len(), 1);
    assert!(!services.is_empty());

    let injected: Vec<Value> = std::fs::read_dir(repo(INJECTED))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .flat_map(|p| yaml_docs_at(&p))
        .collect();

    for sm in monitors {
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        let spec = &sm["spec"];
        assert_eq!(spec["namespaceSelector"]["any"], true);
        let selected: Vec<&&Value> = services
            .iter()
            .filter(|s| labels_match(&spec["selector"]["matchLabels"], &s["metadata"]["labels"]))
            .collect();
        assert_eq!(
            selected.len(),
            services.len(),
            "the ServiceMonitor selects every Service of the file"
        );
        let endpoints = spec["endpoints"].as_array().unwrap();
        assert!(!endpoints.is_empty());
        for ep in endpoints {
            assert_eq!(ep["path"], "/metrics");
            let job = ep["relabelings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["targetLabel"] == "job")
                .expect("the ServiceMonitor sets the job label");
            assert_eq!(job["replacement"], JOB);
            let port_name = ep["port"].as_str().unwrap();
            assert_eq!(port_name, "meshguard-admin");
            for svc in &selected {
                let name = svc["metadata"]["name"].as_str().unwrap();
                let port = svc["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == port_name)
                    .unwrap_or_else(|| panic!("Service {name} has no port named {port_name}"));
                let target = port_number(&port["targetPort"]);
                assert_eq!(target, 15000, "{name}");
                // The Service selects pods of the example mesh that run the
                // sidecar with its admin port, and whose config listens there.
                let ns = &svc["metadata"]["namespace"];
                let workloads: Vec<&Value> = injected
                    .iter()
                    .filter(|w| &w["metadata"]["namespace"] == ns)
                    .filter(|w| {
                        w["spec"]["template"]["metadata"]["labels"].is_object()
                            && labels_match(
                                &svc["spec"]["selector"],
                                &w["spec"]["template"]["metadata"]["labels"],
                            )
                    })
                    .collect();
                assert!(
                    !workloads.is_empty(),
                    "Service {name} selects no example workload"
                );
                for w in workloads {
                    let pod = &w["spec"]["template"];
                    let sidecar = ["initContainers", "containers"]
                        .iter()
                        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
                        .find(|c| c["name"] == "meshguard")
                        .unwrap_or_else(|| {
                            panic!("{name}: {} has no meshguard sidecar", w["metadata"]["name"])
                        });
                    assert!(
                        sidecar["ports"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| port_number(&p["containerPort"]) == target),
                        "{name}: the sidecar of {} does not expose {target}",
                        w["metadata"]["name"]
                    );
                    let cm_name = &pod["metadata"]["annotations"]["meshguard.io/config-map"];
                    let cm = injected
                        .iter()
                        .find(|d| d["kind"] == "ConfigMap" && &d["metadata"]["name"] == cm_name)
                        .unwrap_or_else(|| panic!("{name}: no ConfigMap {cm_name}"));
                    let config: Value =
                        serde_norway::from_str(cm["data"]["meshguard.yaml"].as_str().unwrap())
                            .unwrap();
                    let listen = config["admin"]["listen"].as_str().unwrap();
                    assert!(
                        listen.ends_with(&format!(":{target}")),
                        "{name}: sidecar config {cm_name} has admin.listen {listen}"
                    );
                }
            }
        }
    }

    // The plain scrape job of deploy/prometheus names the same job.
    let scrape = yaml_docs(SCRAPE_CONFIG);
    let embedded: Value =
        serde_norway::from_str(scrape[0]["data"]["meshguard-scrape.yaml"].as_str().unwrap())
            .unwrap();
    assert_eq!(embedded["scrape_configs"][0]["job_name"], JOB);
}
