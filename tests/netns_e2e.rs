//! Issue 7's capture proof without a cluster: three "pods" as Linux network
//! namespaces on one bridge, the real binary everywhere.
//!
//! ```text
//!                 hub namespace: bridge br0
//!          ┌──────────────┼───────────────┐
//!     client 10.250.0.2   server 10.250.0.3   outsider 10.250.0.4
//!     fd00:250::2         fd00:250::3         fd00:250::4
//!     app (UID 1000)      echo :8080, :9090   echo :8080, no sidecar
//!     meshguard (2110)    meshguard (2110)
//!     init-iptables       init-iptables --exclude-inbound-ports 9090
//! ```
//!
//! What it shows, each through plain `curl` run inside a namespace:
//! the client app's plain HTTP call to the server's pod IP is captured,
//! crosses the bridge as mTLS, is authorised by the server's policy and
//! reaches the server app with the authenticated identity header; a pod
//! without a sidecar is refused at the server; an undeclared destination
//! is refused by the client's sidecar and no packet reaches it; a
//! rewritten kubelet probe and a Prometheus scrape work under default
//! deny; an excluded port bypasses capture; the outbound listener is no
//! open relay; and, when the namespaces have IPv6, the same over IPv6.
//! Opaque TCP (netns_tcp.rs) and egress (netns_egress.rs) use the same lab
//! (tests/netns_support/).
//!
//! Needs root (namespaces, iptables, switching UIDs). As another user it
//! prints a SKIP line and passes; as root it installs what is missing
//! (iproute2, iptables, curl, util-linux) and fails loudly if anything
//! cannot be set up. Every namespace and process it makes is removed when
//! the test ends, also on failure (then the sidecars' logs are printed).

mod netns_support;

use netns_support::*;
use std::fs;
use std::process::Command;
use std::time::Instant;

#[test]
fn capture_in_network_namespaces_end_to_end() {
    if !is_root() {
        eprintln!(
            "SKIP capture_in_network_namespaces_end_to_end: needs root \
             (network namespaces, iptables, setpriv); run as root to really test capture"
        );
        return;
    }
    let started = Instant::now();
    ensure_tools(TOOLS);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut lab = Lab {
        namespaces: Vec::new(),
        procs: Vec::new(),
        dir,
    };
    // The sidecar (UID 2110) and the apps (UID 1000) read from here.
    fs::set_permissions(
        lab.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    fs::create_dir(lab.path("logs")).expect("logs dir");

    // ---- The network: a bridge in a hub namespace, a veth per pod. ----
    // Unique per run, so parallel runs on one machine never meet.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("mge2e-{}-{:05}", std::process::id(), nanos % 100_000);
    let hub = lab.add_namespace(format!("{tag}-hub"));
    must("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
    must("ip", &["-n", &hub, "link", "set", "br0", "up"]);
    let mut pods = Vec::new();
    for (name, v4, v6) in [
        ("client", "10.250.0.2", "fd00:250::2"),
        ("server", "10.250.0.3", "fd00:250::3"),
        ("outsider", "10.250.0.4", "fd00:250::4"),
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
        must(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"],
        );
        pods.push(Pod { ns, v4, v6 });
    }
    // IPv6 where the kernel has it: `nodad` so the address is usable at once
    // (a tentative address is also skipped by REDIRECT).
    let mut v6 = true;
    for pod in &pods {
        let added = Command::new("ip")
            .args(["-n", &pod.ns, "addr", "add", &format!("{}/64", pod.v6)])
            .args(["dev", "eth0", "nodad"])
            .output()
            .expect("ip runs");
        if !added.status.success() {
            eprintln!(
                "netns_e2e: IPv6 not available in the test namespaces ({}); IPv6 checks skipped",
                text(&added.stderr).trim()
            );
            v6 = false;
            break;
        }
    }
    for pod in &pods {
        must("ip", &["-n", &pod.ns, "link", "set", "eth0", "up"]);
    }
    let [client, server, outsider] = [&pods[0], &pods[1], &pods[2]];
    let (client_ns, server_ns, outsider_ns) =
        (client.ns.clone(), server.ns.clone(), outsider.ns.clone());

    // ---- Identities: one dev CA, an SVID each, readable by the sidecar. ----
    let certs = lab.path("certs");
    let certs_s = certs.to_str().expect("utf-8 path");
    let out = Command::new(BIN)
        .args(["certs", "dev", "--out", certs_s])
        .args([
            "--workload",
            "default/client",
            "--workload",
            "default/server",
        ])
        .output()
        .expect("meshguard runs");
    assert!(out.status.success(), "certs dev: {}", text(&out.stderr));
    must(
        "chown",
        &["-R", &format!("{PROXY_UID}:{PROXY_UID}"), certs_s],
    );

    // ---- Sidecar configs, as a pod's ConfigMap would give them. ----
    // `[::]` takes IPv4 too (bindv6only is 0), as capture needs: IPv4 is
    // redirected to 127.0.0.1:15001 and IPv6 to [::1]:15001 by OUTPUT, and
    // to the pod's own address of either family by PREROUTING.
    let any = if v6 { "[::]" } else { "0.0.0.0" };
    lab.write(
        "server-policy.yaml",
        &format!(
            // `ports` is the port the client dialled (8080), not the
            // inbound listener it was redirected to.
            "rules:\n  - name: client-read\n    action: allow\n    from: [{CLIENT_ID}]\n    \
             ports: [8080]\n    methods: [GET]\n    paths: [\"/*\"]\n"
        ),
    );
    lab.write(
        "server.yaml",
        &format!(
            "identity:\n  cert: certs/default/server/tls.crt\n  key: certs/default/server/tls.key\n  \
             bundle: certs/default/server/ca.crt\n\
             inbound:\n  listen: \"{any}:15006\"\n  app: 127.0.0.1:{APP_PORT}\n  policy: server-policy.yaml\n\
             admin:\n  listen: \"{any}:15000\"\n\
             shutdown:\n  drain_delay_ms: 0\n  deadline_ms: 1000\n"
        ),
    );
    let mut destinations = format!(
        "    - cidr: {}/32\n      ports: [{APP_PORT}]\n      identity: {SERVER_ID}\n",
        server.v4
    );
    if v6 {
        destinations.push_str(&format!(
            "    - cidr: {}/128\n      ports: [{APP_PORT}]\n      identity: {SERVER_ID}\n",
            server.v6
        ));
    }
    lab.write(
        "client.yaml",
        &format!(
            "identity:\n  cert: certs/default/client/tls.crt\n  key: certs/default/client/tls.key\n  \
             bundle: certs/default/client/ca.crt\n\
             outbound:\n  listen: \"{any}:15001\"\n  undeclared: deny\n  destinations:\n{destinations}\
             admin:\n  listen: \"{any}:15000\"\n\
             shutdown:\n  drain_delay_ms: 0\n  deadline_ms: 1000\n"
        ),
    );

    // ---- Capture, as the init container does it. ----
    let uid = PROXY_UID.to_string();
    let excluded = EXCLUDED_PORT.to_string();
    for (ns, extra) in [
        (
            &server_ns,
            vec!["--exclude-inbound-ports", excluded.as_str()],
        ),
        (&client_ns, vec![]),
    ] {
        let mut args = vec![
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
        ];
        args.extend(extra);
        let out = Lab::exec(ns, None, &args);
        assert!(
            out.status.success(),
            "init-iptables in {ns}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        if v6 {
            let table = text(&Lab::exec(ns, None, &["ip6tables", "-t", "nat", "-S"]).stdout);
            assert!(
                table.contains("-A OUTPUT -p tcp -j MESHGUARD_OUTBOUND"),
                "IPv6 must be captured too:\n{table}"
            );
        }
    }
    // Marker rules on the outsider: count what the client sends it directly.
    must_in(&outsider_ns, "iptables", client.v4);
    if v6 {
        must_in(&outsider_ns, "ip6tables", client.v6);
    }

    // ---- Processes. ----
    let app_listen = format!("{any}:{APP_PORT}");
    let plain_listen = format!("{any}:{EXCLUDED_PORT}");
    let probe_listen = format!("{any}:15020");
    lab.spawn(
        "server-app",
        &server_ns,
        APP_UID,
        &[BIN, "echo", "--listen", &app_listen, "--name", "server-app"],
        &[],
    );
    lab.spawn(
        "plain-app",
        &server_ns,
        APP_UID,
        &[
            BIN,
            "echo",
            "--listen",
            &plain_listen,
            "--name",
            "plain-app",
        ],
        &[],
    );
    lab.spawn(
        "outsider-app",
        &outsider_ns,
        APP_UID,
        &[
            BIN,
            "echo",
            "--listen",
            &app_listen,
            "--name",
            "outsider-app",
        ],
        &[],
    );
    lab.spawn(
        "server-sidecar",
        &server_ns,
        PROXY_UID,
        &[BIN, "run", "--config", "server.yaml"],
        &[
            ("MESHGUARD_PROBE_LISTEN", &probe_listen),
            ("MESHGUARD_APP_PROBES", APP_PROBES),
        ],
    );
    lab.spawn(
        "client-sidecar",
        &client_ns,
        PROXY_UID,
        &[BIN, "run", "--config", "client.yaml"],
        &[],
    );
    lab.wait_ok(&server_ns, "http://127.0.0.1:15000/ready");
    lab.wait_ok(&client_ns, "http://127.0.0.1:15000/ready");
    lab.wait_ok(&server_ns, &url("127.0.0.1", APP_PORT, "/"));
    lab.wait_ok(&server_ns, &url("127.0.0.1", EXCLUDED_PORT, "/"));
    lab.wait_ok(&outsider_ns, &url("127.0.0.1", APP_PORT, "/"));
    eprintln!("netns_e2e: set up in {:?} (IPv6: {v6})", started.elapsed());

    let scrape = |from: &str| -> String {
        let r = Lab::curl(from, None, &[], &url(server.v4, 15000, "/metrics"));
        assert_eq!(r.status, Some(200), "scrape: {}", r.show());
        r.body
    };

    // 1-5 for each address family: the captured call, the outsider refused,
    // an undeclared destination refused before a packet leaves, the
    // rewritten probe, the excluded port.
    let pods = |server: &'static str, outsider: &'static str, client: &'static str| Family {
        client_ns: &client_ns,
        outsider_ns: &outsider_ns,
        server,
        outsider,
        client,
    };
    pods(server.v4, outsider.v4, client.v4).check("iptables", "");

    // 1, more closely (IPv4): a forged identity header from the app is
    //    not passed on; the request is counted by the server's sidecar.
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &[
            "-H",
            "X-Meshguard-Client-Id: spiffe://cluster.local/ns/x/sa/forged",
        ],
        &url(server.v4, APP_PORT, "/hello?x=1"),
    );
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(
        r.body.contains("app server-app received: GET /hello?x=1")
            && r.body
                .contains(&format!("x-meshguard-client-id: {CLIENT_ID}")),
        "{}",
        r.show()
    );
    assert!(!r.body.contains("forged"), "{}", r.show());
    // 1b. The same call as HTTP/2 with prior knowledge (how gRPC clients
    //     speak): detected on the captured port, carried on the HTTP/2
    //     hop, and handed to the app as HTTP/2; HTTP/1.1 stays HTTP/1.1.
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["--http2-prior-knowledge"],
        &url(server.v4, APP_PORT, "/h2c"),
    );
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(
        r.body
            .contains("app server-app received: GET /h2c HTTP/2.0"),
        "{}",
        r.show()
    );
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &[],
        &url(server.v4, APP_PORT, "/h1"),
    );
    assert!(
        r.body.contains("app server-app received: GET /h1 HTTP/1.1"),
        "{}",
        r.show()
    );
    // The server's policy is default deny for anything but the client's GET.
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["-X", "POST", "-d", "x"],
        &url(server.v4, APP_PORT, "/hello"),
    );
    assert_eq!(r.status, Some(403), "{}", r.show());
    assert!(
        r.body.contains("meshguard: access denied by policy"),
        "{}",
        r.show()
    );
    let m = scrape(&outsider_ns);
    let inbound_ok = [
        ("direction", "inbound"),
        ("decision", "allow"),
        ("peer", CLIENT_ID),
        ("status_class", "2xx"),
    ];
    assert!(
        metric(&m, "meshguard_requests_total", &inbound_ok) >= 1.0,
        "server sidecar did not count the inbound request:\n{m}"
    );

    // 2, more closely: the outsider's plain HTTP was refused by the mTLS
    //    listener itself.
    let m = scrape(&outsider_ns);
    let not_tls = [
        ("direction", "inbound"),
        ("result", "refused"),
        ("reason", "not_tls"),
    ];
    assert!(
        metric(&m, "meshguard_tls_handshakes_total", &not_tls) >= 1.0,
        "the outsider's connection should have been refused by the mTLS listener:\n{m}"
    );

    // 3, more closely: the 403 says which destination is not declared.
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &[],
        &url(outsider.v4, APP_PORT, "/leak"),
    );
    assert!(
        r.body.contains(&format!(
            "meshguard: destination {}:{APP_PORT} is not declared",
            outsider.v4
        )),
        "{}",
        r.show()
    );

    // 4, more closely: an unrecorded probe is 404.
    let probe = url(server.v4, 15020, "/app-probe/app/readiness");
    let r = Lab::curl(
        &outsider_ns,
        None,
        &[],
        &url(server.v4, 15020, "/app-probe/app/liveness"),
    );
    assert_eq!(r.status, Some(404), "{}", r.show());

    // 5, more closely: the excluded port's app sees no identity header.
    let r = Lab::curl(
        &outsider_ns,
        None,
        &[],
        &url(server.v4, EXCLUDED_PORT, "/direct"),
    );
    assert!(!r.body.contains("x-meshguard"), "{}", r.show());

    // 6. Prometheus scrapes the admin port from another pod (done above;
    //    once more explicitly, with the status).
    let r = Lab::curl(&outsider_ns, None, &[], &url(server.v4, 15000, "/metrics"));
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(r.body.contains("meshguard_build_info"), "{}", r.show());

    // The client's outbound listener is not an open relay: from the
    // network its port is captured to the (absent) inbound listener.
    let r = Lab::curl(&outsider_ns, None, &[], &url(client.v4, 15001, "/"));
    assert_ne!(r.exit, 0, "{}", r.show());
    assert!(!r.body.contains("meshguard: destination"), "{}", r.show());

    // 7. IPv6: the same capture for the other family.
    if v6 {
        pods(server.v6, outsider.v6, client.v6).check("ip6tables", "6");
    }

    // The probe really runs against the app: with the app gone it fails.
    lab.stop("server-app");
    let r = Lab::curl(&outsider_ns, None, &[], &probe);
    assert_eq!(r.status, Some(503), "{}", r.show());

    eprintln!("netns_e2e: all checks passed in {:?}", started.elapsed());
}

/// The pods of the capture test, seen from one address family.
struct Family<'a> {
    client_ns: &'a str,
    outsider_ns: &'a str,
    server: &'a str,
    outsider: &'a str,
    client: &'a str,
}

impl Family<'_> {
    /// Steps 1-5 of the capture test in this family; `iptables` is the
    /// family's program, `tag` ends each path so log lines tell them apart.
    fn check(&self, iptables: &str, tag: &str) {
        // 1. The client app's plain call to the server's pod IP: captured,
        //    mTLS across the bridge, authorised, identity header at the app.
        let path = format!("/hello{tag}");
        let r = Lab::curl(
            self.client_ns,
            Some(APP_UID),
            &[],
            &url(self.server, APP_PORT, &path),
        );
        assert_eq!(r.status, Some(200), "{}", r.show());
        assert!(
            r.body
                .contains(&format!("app server-app received: GET {path}"))
                && r.body
                    .contains(&format!("x-meshguard-client-id: {CLIENT_ID}")),
            "{}",
            r.show()
        );
        // 2. A pod without a sidecar cannot reach the server app: its plain
        //    HTTP lands on the mTLS listener and is refused there.
        let r = Lab::curl(
            self.outsider_ns,
            None,
            &[],
            &url(self.server, APP_PORT, "/"),
        );
        assert_ne!(r.exit, 0, "outsider got an answer: {}", r.show());
        assert!(!r.body.contains("received"), "{}", r.show());
        // 3. An undeclared destination (the outsider's plain server): 403
        //    from the client's own sidecar, and not one packet reaches it.
        let leak = url(self.outsider, APP_PORT, &format!("/leak{tag}"));
        let r = Lab::curl(self.client_ns, Some(APP_UID), &[], &leak);
        assert_eq!(r.status, Some(403), "{}", r.show());
        assert_eq!(
            Lab::counted(self.outsider_ns, iptables, self.client),
            0,
            "a packet from the client reached the outsider ({iptables})"
        );
        // 4. The rewritten kubelet probe (the outsider plays kubelet)
        //    passes under default deny.
        let probe = url(self.server, 15020, "/app-probe/app/readiness");
        let r = Lab::curl(self.outsider_ns, None, &[], &probe);
        assert_eq!(r.status, Some(200), "{}", r.show());
        // 5. The excluded port bypasses capture: the plain app answers
        //    directly.
        let direct = format!("/direct{tag}");
        let r = Lab::curl(
            self.outsider_ns,
            None,
            &[],
            &url(self.server, EXCLUDED_PORT, &direct),
        );
        assert_eq!(r.status, Some(200), "{}", r.show());
        assert!(
            r.body
                .contains(&format!("app plain-app received: GET {direct}")),
            "{}",
            r.show()
        );
    }
}
