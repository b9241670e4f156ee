use super::*;
use std::io;

fn lines(config: &CaptureConfig, family: Family, state: &NatState) -> Vec<String> {
    plan(config, family, state)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn default_plan_ipv4_is_exactly_this() {
    let got = lines(&CaptureConfig::default(), Family::V4, &NatState::fresh());
    let want = [
        "iptables -t nat -N MESHGUARD_IN_REDIRECT",
        "iptables -t nat -N MESHGUARD_REDIRECT",
        "iptables -t nat -N MESHGUARD_INBOUND",
        "iptables -t nat -N MESHGUARD_OUTBOUND",
        "iptables -t nat -A MESHGUARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "iptables -t nat -A MESHGUARD_INBOUND -p tcp --dport 15000 -j RETURN",
        "iptables -t nat -A MESHGUARD_INBOUND -p tcp --dport 15020 -j RETURN",
        "iptables -t nat -A MESHGUARD_INBOUND -p tcp -j MESHGUARD_IN_REDIRECT",
        "iptables -t nat -A MESHGUARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "iptables -t nat -A MESHGUARD_OUTBOUND -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 2110 -j MESHGUARD_INBOUND",
        "iptables -t nat -A MESHGUARD_OUTBOUND -m owner --uid-owner 2110 -j RETURN",
        "iptables -t nat -A MESHGUARD_OUTBOUND -o lo -j RETURN",
        "iptables -t nat -A MESHGUARD_OUTBOUND -p tcp -j MESHGUARD_REDIRECT",
        "iptables -t nat -A PREROUTING -p tcp -j MESHGUARD_INBOUND",
        "iptables -t nat -A OUTPUT -p tcp -j MESHGUARD_OUTBOUND",
    ];
    assert_eq!(got, want);
}

#[test]
fn ipv6_plan_mirrors_ipv4_with_ip6tables_and_its_loopback() {
    let v4 = lines(&CaptureConfig::default(), Family::V4, &NatState::fresh());
    let v6 = lines(&CaptureConfig::default(), Family::V6, &NatState::fresh());
    assert_eq!(v4.len(), v6.len());
    for (a, b) in v4.iter().zip(&v6) {
        let expected = a
            .replacen("iptables", "ip6tables", 1)
            .replace("127.0.0.1/32", "::1/128");
        assert_eq!(&expected, b);
    }
}

#[test]
fn exclusions_land_in_their_chains_and_cidrs_in_their_family() {
    let config = CaptureConfig {
        exclude_inbound_ports: PortRange::parse_list("9090, 9100-9110,15000").unwrap(),
        exclude_outbound_ports: PortRange::parse_list("5432").unwrap(),
        exclude_outbound_cidrs: Cidr::parse_list("10.96.0.0/12,fd00::/8,169.254.169.254").unwrap(),
        ..CaptureConfig::default()
    };
    let v4 = lines(&config, Family::V4, &NatState::fresh()).join("\n");
    let v6 = lines(&config, Family::V6, &NatState::fresh()).join("\n");
    for v in [&v4, &v6] {
        assert!(v.contains("-A MESHGUARD_INBOUND -p tcp --dport 9090 -j RETURN"));
        assert!(v.contains("-A MESHGUARD_INBOUND -p tcp --dport 9100:9110 -j RETURN"));
        // 15000 is the admin port: listed once, not twice.
        assert_eq!(v.matches("--dport 15000 ").count(), 1);
        assert!(v.contains("-A MESHGUARD_OUTBOUND -p tcp --dport 5432 -j RETURN"));
    }
    assert!(v4.contains("-A MESHGUARD_OUTBOUND -d 10.96.0.0/12 -j RETURN"));
    assert!(v4.contains("-A MESHGUARD_OUTBOUND -d 169.254.169.254/32 -j RETURN"));
    assert!(!v4.contains("fd00::"));
    assert!(v6.contains("-A MESHGUARD_OUTBOUND -d fd00::/8 -j RETURN"));
    assert!(!v6.contains("10.96."));
    // Exclusions come before the final redirect, or they would be dead.
    let redirect = v4.find("-j MESHGUARD_REDIRECT").unwrap();
    assert!(v4.find("--dport 5432").unwrap() < redirect);
    assert!(v4.find("-d 10.96.0.0/12").unwrap() < redirect);
}

#[test]
fn rerun_flushes_own_chains_and_does_not_duplicate_jumps() {
    let state = NatState::parse(
        "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n-N MESHGUARD_IN_REDIRECT\n-N MESHGUARD_REDIRECT\n\
         -N MESHGUARD_INBOUND\n-N MESHGUARD_OUTBOUND\n-N OTHER\n\
         -A PREROUTING -p tcp -j MESHGUARD_INBOUND\n-A OUTPUT -p tcp -j MESHGUARD_OUTBOUND\n\
         -A OTHER -j RETURN\n",
    );
    let got = lines(&CaptureConfig::default(), Family::V4, &state);
    assert!(got.iter().all(|l| !l.contains(" -N ")));
    assert_eq!(got.iter().filter(|l| l.contains(" -F ")).count(), 4);
    assert!(got.iter().all(|l| !l.contains("-A PREROUTING")));
    assert!(got.iter().all(|l| !l.contains("-A OUTPUT")));
    assert!(
        got.iter().all(|l| !l.contains("OTHER")),
        "others' chains untouched"
    );
}

#[test]
fn partial_state_recreates_only_what_is_missing() {
    let state =
        NatState::parse("-N MESHGUARD_INBOUND\n-A PREROUTING -p tcp -j MESHGUARD_INBOUND\n");
    let got = lines(&CaptureConfig::default(), Family::V4, &state);
    assert!(got.contains(&"iptables -t nat -F MESHGUARD_INBOUND".to_owned()));
    assert!(got.contains(&"iptables -t nat -N MESHGUARD_OUTBOUND".to_owned()));
    assert!(got.contains(&"iptables -t nat -A OUTPUT -p tcp -j MESHGUARD_OUTBOUND".to_owned()));
    assert!(!got.iter().any(|l| l.contains("-A PREROUTING")));
}

#[test]
fn port_lists_parse_and_refuse_typos() {
    assert_eq!(PortRange::parse_list("").unwrap(), vec![]);
    assert_eq!(PortRange::parse_list("  ").unwrap(), vec![]);
    assert_eq!(
        PortRange::parse_list("80, 8000-8010").unwrap(),
        vec![
            PortRange::single(80),
            PortRange {
                first: 8000,
                last: 8010
            }
        ]
    );
    for bad in [
        "0", "65536", "80,,81", "80-", "-80", "90-80", "+80", "http", "80 81", "8080,",
    ] {
        assert!(
            matches!(
                PortRange::parse_list(bad),
                Err(IptablesError::InvalidPort { .. })
            ),
            "{bad:?} must be refused"
        );
    }
    assert_eq!(PortRange { first: 1, last: 3 }.to_string(), "1-3");
    assert_eq!(PortRange { first: 1, last: 3 }.iptables_arg(), "1:3");
}

#[test]
fn settings_that_would_bypass_the_proxy_are_refused() {
    let cases = [
        CaptureConfig {
            proxy_uid: 0,
            ..Default::default()
        },
        CaptureConfig {
            outbound_port: INBOUND_PORT,
            ..Default::default()
        },
        CaptureConfig {
            probe_port: ADMIN_PORT,
            ..Default::default()
        },
        CaptureConfig {
            exclude_inbound_ports: vec![PortRange {
                first: 15000,
                last: 15010,
            }],
            ..Default::default()
        },
        CaptureConfig {
            exclude_outbound_ports: vec![PortRange::single(OUTBOUND_PORT)],
            ..Default::default()
        },
        CaptureConfig {
            exclude_outbound_cidrs: Cidr::parse_list("0.0.0.0/0").unwrap(),
            ..Default::default()
        },
    ];
    for c in cases {
        assert!(
            matches!(c.validate(), Err(IptablesError::Conflict(_))),
            "{c:?}"
        );
    }
    CaptureConfig::default().validate().unwrap();
}

/// A fake `iptables`: records calls, answers `-S` with `listing`, fails the
/// call numbered `fail_at` (counting from 0) when given.
struct Fake {
    calls: Vec<String>,
    listing: &'static str,
    fail_at: Option<usize>,
    missing: Option<&'static str>,
}

impl Fake {
    fn new() -> Self {
        Fake {
            calls: Vec::new(),
            listing: "-P PREROUTING ACCEPT\n",
            fail_at: None,
            missing: None,
        }
    }

    fn run(&mut self, program: &str, args: &[String]) -> io::Result<RunOutcome> {
        if self.missing == Some(program) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not found"));
        }
        let n = self.calls.len();
        self.calls.push(format!("{program} {}", args.join(" ")));
        let success = self.fail_at != Some(n);
        Ok(RunOutcome {
            success,
            status: if success {
                "exit status: 0"
            } else {
                "exit status: 4"
            }
            .into(),
            stdout: if args.last().map(String::as_str) == Some("-S") {
                self.listing.into()
            } else {
                String::new()
            },
            stderr: if success {
                String::new()
            } else {
                "boom".into()
            },
        })
    }
}

/// Runs `apply` for both families with the default settings against
/// `fake`, which must make it fail; the log is not looked at.
fn apply_expecting_error(fake: &mut Fake) -> IptablesError {
    apply(
        &CaptureConfig::default(),
        &[Family::V4, Family::V6],
        |p: &str, a: &[String]| fake.run(p, a),
        &mut Vec::new(),
    )
    .unwrap_err()
}

#[test]
fn apply_runs_both_families_and_logs_each_command() {
    let mut fake = Fake::new();
    let mut log = Vec::new();
    let ran = apply(
        &CaptureConfig::default(),
        &[Family::V4, Family::V6],
        |p: &str, a: &[String]| fake.run(p, a),
        &mut log,
    )
    .unwrap();
    assert_eq!(ran.len(), 30);
    assert_eq!(fake.calls.len(), 32, "two listings plus the commands");
    assert_eq!(fake.calls[0], "iptables -t nat -S");
    assert_eq!(fake.calls[16], "ip6tables -t nat -S");
    let log = String::from_utf8(log).unwrap();
    assert_eq!(log.lines().count(), 30);
}

#[test]
fn apply_stops_at_the_first_failure_and_names_the_command() {
    let mut fake = Fake::new();
    fake.fail_at = Some(3);
    let err = apply_expecting_error(&mut fake);
    assert_eq!(fake.calls.len(), 4, "nothing runs after the failure");
    match err {
        IptablesError::Failed {
            command, stderr, ..
        } => {
            assert_eq!(command, "iptables -t nat -N MESHGUARD_INBOUND");
            assert_eq!(stderr, "boom");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn missing_ip6tables_with_ipv6_enabled_is_an_error_not_a_skip() {
    let mut fake = Fake::new();
    fake.missing = Some("ip6tables");
    let err = apply_expecting_error(&mut fake);
    assert!(
        matches!(err, IptablesError::Ip6tablesMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("refusing to leave IPv6"));
}

#[test]
fn ip6_nat_table_unavailable_is_reported_as_missing_ipv6_capture() {
    let mut fake = Fake::new();
    // Call 16 is `ip6tables -t nat -S` after 15 IPv4 commands and a listing.
    fake.fail_at = Some(16);
    let err = apply_expecting_error(&mut fake);
    assert!(
        matches!(err, IptablesError::Ip6tablesMissing { .. }),
        "{err}"
    );
}

#[test]
fn ipv6_detection_reads_if_inet6() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!ipv6_enabled(dir.path()));
    std::fs::write(dir.path().join("if_inet6"), "").unwrap();
    assert!(ipv6_enabled(dir.path()));
}

#[test]
fn excluding_the_outbound_port_from_inbound_capture_is_refused() {
    let c = CaptureConfig {
        exclude_inbound_ports: PortRange::parse_list("15000-15002").unwrap(),
        ..Default::default()
    };
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("outbound port"), "{err}");
}
