//! Egress outside the mesh under capture (issue 20), in the
//! network-namespace lab (tests/netns_support): a pod plays the internet
//! (dnsmasq, an HTTPS API); captured TLS is matched by SNI and plain HTTP
//! by Host; a name that lies about the address dialled, or resolves to
//! metadata, is refused. Needs root; as another user it prints a SKIP line.

mod netns_support;

use netns_support::*;
use std::fs;
use std::time::{Duration, Instant};

/// The "internet" of the egress test: a DNS server (dnsmasq) and an HTTPS
/// API on 10.252.0.4, and a second address of the same pod, 10.252.0.5,
/// that the names do not resolve to.
const OUTSIDE_IP: &str = "10.252.0.4";
const HIDDEN_IP: &str = "10.252.0.5";
const PAY_HOST: &str = "pay.outside.test";
const HTTPS_PORT: u16 = 8443;

/// Two pods on one bridge: the client (sidecar, captured app) and outside.
fn egress_pods(lab: &mut Lab) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("mgeg-{}-{:05}", std::process::id(), nanos % 100_000);
    let hub = lab.add_namespace(format!("{tag}-hub"));
    must("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
    must("ip", &["-n", &hub, "link", "set", "br0", "up"]);
    let mut names = Vec::new();
    for (name, addrs) in [
        ("client", &["10.252.0.2/24"][..]),
        ("outside", &["10.252.0.4/24", "10.252.0.5/24"][..]),
    ] {
        let ns = lab.add_namespace(format!("{tag}-{name}"));
        let port = format!("v-{name}");
        must(
            "ip",
            &[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        );
        must("ip", &["-n", &hub, "link", "set", &port, "master", "br0"]);
        must("ip", &["-n", &hub, "link", "set", &port, "up"]);
        for addr in addrs {
            must("ip", &["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
        }
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        names.push(ns);
    }
    // A default route, so that the app's call to a metadata address is
    // made (and captured) rather than failing for want of a route.
    let client = &names[0];
    must(
        "ip",
        &["-n", client, "route", "add", "default", "via", OUTSIDE_IP],
    );
    (names.remove(0), names.remove(0))
}

/// The outside API's CA and certificate (our rcgen code), written to the lab.
fn outside_certs(lab: &Lab) {
    use meshguard::dev::certs::{DevCa, LeafSpec};
    let ca = DevCa::generate("outside.test", time::Duration::days(1)).expect("CA");
    let mut spec = LeafSpec::svid("spiffe://outside.test/unused", time::Duration::hours(1));
    spec.uris.clear();
    spec.common_name = PAY_HOST.into();
    spec.dns = vec![PAY_HOST.into(), "*.outside.test".into()];
    let leaf = ca.issue(&spec).expect("leaf");
    lab.write("outside-ca.pem", ca.cert_pem());
    lab.write("pay.crt", &leaf.cert_pem);
    lab.write("pay.key", &leaf.key_pem);
}

/// The egress decisions the client sidecar counted with `reason`.
fn egress_count(client_ns: &str, reason: &str) -> f64 {
    let m = Lab::curl(client_ns, None, &[], "http://127.0.0.1:15000/metrics").body;
    metric(
        &m,
        "meshguard_egress_decisions_total",
        &[("reason", reason)],
    )
}

#[test]
fn egress_is_decided_by_sni_and_by_host_under_capture() {
    if !is_root() {
        eprintln!("SKIP egress_is_decided_by_sni_and_by_host_under_capture: needs root");
        return;
    }
    ensure_tools(TOOLS);
    ensure_tools(TCP_TOOLS);
    ensure_tools(&[("dnsmasq", "--version", "dnsmasq-base")]);
    let mut lab = Lab {
        namespaces: Vec::new(),
        procs: Vec::new(),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    fs::set_permissions(
        lab.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    fs::create_dir(lab.path("logs")).expect("logs dir");
    let (client_ns, outside_ns) = egress_pods(&mut lab);
    let certs = lab.path("certs");
    let certs_s = certs.to_str().expect("utf-8 path");
    must(
        BIN,
        &[
            "certs",
            "dev",
            "--out",
            certs_s,
            "--workload",
            "default/client",
        ],
    );
    must(
        "chown",
        &["-R", &format!("{PROXY_UID}:{PROXY_UID}"), certs_s],
    );
    outside_certs(&lab);

    // The client declares the API twice (its app's own TLS, matched by
    // SNI; plain HTTP, TLS originated) and any other name below
    // outside.test (TLS). The lab's subnet is allowed past the guard.
    lab.write(
        "client.yaml",
        &format!(
            "identity:\n  cert: certs/default/client/tls.crt\n  key: certs/default/client/tls.key\n  \
             bundle: certs/default/client/ca.crt\n\
             outbound:\n  listen: \"0.0.0.0:15001\"\n  undeclared: deny\n  egress:\n    \
             resolver: {OUTSIDE_IP}:5353\n    allow_cidrs: [10.252.0.0/24]\n    destinations:\n      \
             - host: {PAY_HOST}\n        mode: tls\n        ports: [{HTTPS_PORT}]\n      \
             - host: {PAY_HOST}\n        mode: originate\n        port: {HTTPS_PORT}\n        ca: outside-ca.pem\n      \
             - host: \"*.outside.test\"\n        mode: tls\n        ports: [{HTTPS_PORT}]\n\
             admin:\n  listen: \"0.0.0.0:15000\"\n\
             shutdown:\n  drain_delay_ms: 0\n  deadline_ms: 1000\n"
        ),
    );
    let uid = PROXY_UID.to_string();
    let out = Lab::exec(
        &client_ns,
        None,
        &[
            BIN,
            "init-iptables",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--admin-port",
            "15000",
            "--probe-port",
            "15020",
            "--proxy-uid",
            &uid,
        ],
    );
    assert!(out.status.success(), "init-iptables: {}", text(&out.stderr));
    // Count what the client sends to the address no name resolves to.
    let port = HTTPS_PORT.to_string();
    must(
        "ip",
        &[
            "netns",
            "exec",
            &outside_ns,
            "iptables",
            "-I",
            "INPUT",
            "-d",
            HIDDEN_IP,
            "-p",
            "tcp",
            "--dport",
            &port,
        ],
    );

    let listen = format!("--listen-address={OUTSIDE_IP}");
    let pay = format!("--address=/{PAY_HOST}/{OUTSIDE_IP}");
    lab.spawn(
        "dnsmasq",
        &outside_ns,
        0,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--port=5353",
            "--bind-interfaces",
            &listen,
            &pay,
            "--address=/meta.outside.test/169.254.169.254",
            "--log-queries",
            "--log-facility=-",
        ],
        &[],
    );
    let accept = format!("{HTTPS_PORT}");
    let (crt, key) = (lab.path("pay.crt"), lab.path("pay.key"));
    lab.spawn(
        "outside-api",
        &outside_ns,
        APP_UID,
        &[
            "openssl",
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &accept,
            "-cert",
            crt.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    lab.spawn(
        "client-sidecar",
        &client_ns,
        PROXY_UID,
        &[BIN, "run", "--config", "client.yaml"],
        &[],
    );
    lab.wait_ok(&client_ns, "http://127.0.0.1:15000/ready");
    let api = format!("https://{OUTSIDE_IP}:{HTTPS_PORT}/");
    let deadline = Instant::now() + READY_DEADLINE;
    while Lab::curl(&outside_ns, None, &["-k"], &api).status != Some(200) {
        lab.all_alive();
        assert!(Instant::now() < deadline, "the outside API did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ca = lab.path("outside-ca.pem");
    let ca = ca.to_str().unwrap();
    let resolve = |name: &str, port: u16, ip: &str| format!("{name}:{port}:{ip}");

    // 1. By SNI: the app's own TLS to the API, verified by the app itself,
    //    captured and passed through.
    let to = resolve(PAY_HOST, HTTPS_PORT, OUTSIDE_IP);
    let pay_url = format!("https://{PAY_HOST}:{HTTPS_PORT}/");
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["--cacert", ca, "--resolve", &to],
        &pay_url,
    );
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(r.body.contains("s_server"), "{}", r.show());
    // 2. An SNI that lies: the API's name while dialling another address.
    let to = resolve(PAY_HOST, HTTPS_PORT, HIDDEN_IP);
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["-k", "--resolve", &to],
        &pay_url,
    );
    assert_ne!(r.exit, 0, "{}", r.show());
    assert_eq!(egress_count(&client_ns, "address_mismatch"), 1.0);
    let hidden = Lab::counted(&outside_ns, "iptables", HIDDEN_IP);
    assert_eq!(hidden, 0, "a packet reached the address the SNI lied about");

    // 3. By Host: plain HTTP from the app, TLS originated to the API.
    let to = resolve(PAY_HOST, 8080, OUTSIDE_IP);
    let http_url = format!("http://{PAY_HOST}:8080/charge");
    let r = Lab::curl(&client_ns, Some(APP_UID), &["--resolve", &to], &http_url);
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(r.body.contains("s_server"), "{}", r.show());
    // 4. A Host that lies about the address.
    let to = resolve(PAY_HOST, 8080, HIDDEN_IP);
    let r = Lab::curl(&client_ns, Some(APP_UID), &["--resolve", &to], &http_url);
    assert_eq!(r.status, Some(403), "{}", r.show());
    assert!(r.body.contains("is not an address"), "{}", r.show());
    assert_eq!(egress_count(&client_ns, "address_mismatch"), 2.0);

    // 5. A declared name that resolves to the metadata address, dialled
    //    there: refused by address, whatever the name.
    let to = resolve("meta.outside.test", HTTPS_PORT, "169.254.169.254");
    let meta_url = format!("https://meta.outside.test:{HTTPS_PORT}/");
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["-k", "--resolve", &to],
        &meta_url,
    );
    assert_ne!(r.exit, 0, "{}", r.show());
    assert_eq!(egress_count(&client_ns, "metadata"), 1.0);
    // 6. Undeclared TLS is closed, and audited with the name asked for.
    let to = resolve("pay.elsewhere.test", HTTPS_PORT, OUTSIDE_IP);
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["-k", "--resolve", &to],
        &format!("https://pay.elsewhere.test:{HTTPS_PORT}/"),
    );
    assert_ne!(r.exit, 0, "{}", r.show());
    let line = wait_audit(&lab, "client-sidecar", "egress", |l| {
        l["reason"] == "undeclared"
    });
    assert_eq!(line["host"], "pay.elsewhere.test", "{line}");
    assert_eq!(line["mode"], "tls", "{line}");
    assert_eq!(line["decision"], "deny", "{line}");
}
