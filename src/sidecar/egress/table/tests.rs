use super::*;
use crate::sidecar::config::EgressDestination;

fn dest(host: &str, mode: EgressMode, ports: Option<Vec<u16>>) -> EgressDestination {
    EgressDestination {
        host: host.into(),
        mode,
        ports,
        port: None,
        ca: None,
    }
}

fn table() -> Table {
    Table::new(&EgressConfig {
        destinations: vec![
            dest("api.pay.example", EgressMode::Tls, None),
            dest("*.partner.example", EgressMode::Tls, Some(vec![443, 8443])),
            dest("*.eu.partner.example", EgressMode::Tls, Some(vec![9443])),
            dest("api.pay.example", EgressMode::Originate, None),
        ],
        ..Default::default()
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn names_match_exactly_or_below_a_wildcard() {
    let t = table();
    let found = |name, port| t.tls(name, port).map(|e| e.index);
    assert_eq!(found("api.pay.example", Some(443)), Ok(0));
    assert_eq!(found("api.pay.example", None), Ok(0));
    assert_eq!(
        found("api.pay.example", Some(8443)),
        Err(Refused::Port(8443))
    );
    assert_eq!(found("x.partner.example", Some(8443)), Ok(1));
    assert_eq!(found("a.b.partner.example", Some(443)), Ok(1));
    assert_eq!(
        found("partner.example", Some(443)),
        Err(Refused::Undeclared)
    );
    assert_eq!(
        found("xpartner.example", Some(443)),
        Err(Refused::Undeclared)
    );
    // The longest wildcard decides, ports included.
    assert_eq!(found("a.eu.partner.example", Some(9443)), Ok(2));
    assert_eq!(
        found("a.eu.partner.example", Some(443)),
        Err(Refused::Port(443))
    );
    assert_eq!(found("pay.example", Some(443)), Err(Refused::Undeclared));
    assert_eq!(
        found("evil.api.pay.example", Some(443)),
        Err(Refused::Undeclared)
    );
    let originate = t.find(EgressMode::Originate, "api.pay.example").unwrap();
    assert_eq!((originate.index, originate.upstream_port()), (3, 443));
    assert!(t.find(EgressMode::Originate, "x.partner.example").is_none());
}

#[test]
fn labels_are_declared_patterns_or_other() {
    let t = table();
    assert_eq!(t.label(Some("api.pay.example")), "api.pay.example");
    assert_eq!(t.label(Some("q.partner.example")), "*.partner.example");
    assert_eq!(t.label(Some("attacker.example")), OTHER);
    assert_eq!(t.label(None), OTHER);
}

#[test]
fn hosts_of_authorities() {
    assert_eq!(
        host_of("API.pay.example").as_deref(),
        Some("api.pay.example")
    );
    assert_eq!(
        host_of("api.pay.example:80").as_deref(),
        Some("api.pay.example")
    );
    assert_eq!(
        host_of("api.pay.example.:443").as_deref(),
        Some("api.pay.example")
    );
    for bad in [
        "10.0.0.1",
        "10.0.0.1:80",
        "[::1]:80",
        "a.example:x",
        "",
        "a b",
        "a.example:99999",
    ] {
        assert_eq!(host_of(bad), None, "{bad:?}");
    }
}

#[test]
fn captured_connections_go_only_where_the_name_resolves() {
    let guard = Guard::new(vec!["127.0.0.1/32".parse().unwrap()], Vec::new());
    let public = [
        ip("93.184.215.14"),
        ip("2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
    ];
    let dialled = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
    let go =
        |resolved: &[IpAddr], dst| targets("api.pay.example", resolved, dst, 443, &guard, None);
    assert_eq!(
        go(&public, dialled("93.184.215.14:443")),
        Ok(vec!["93.184.215.14:443".parse().unwrap()])
    );
    // An SNI that names an allowed host while dialling another address.
    assert_eq!(
        go(&public, dialled("203.0.114.9:443")),
        Err(Refused::Mismatch {
            name: "api.pay.example".into(),
            dst: "203.0.114.9:443".parse().unwrap()
        })
    );
    // A name that resolves to metadata, dialled there: refused by address.
    let metadata = [ip("169.254.169.254")];
    assert_eq!(
        go(&metadata, dialled("169.254.169.254:443")),
        Err(Refused::Blocked(Blocked::Metadata, ip("169.254.169.254")))
    );
    // An IPv4-mapped answer matches the IPv4 address dialled, and is guarded.
    let mapped = [ip("::ffff:10.1.2.3")];
    assert_eq!(
        go(&mapped, dialled("10.1.2.3:443")),
        Err(Refused::Blocked(Blocked::Private, ip("10.1.2.3")))
    );
    assert_eq!(
        go(&[], dialled("10.1.2.3:443")),
        Err(Refused::Unresolved("no address".into()))
    );
}

#[test]
fn uncaptured_connections_take_only_the_addresses_that_pass() {
    let guard = Guard::default();
    let go = |resolved: &[IpAddr]| targets("a.example", resolved, None, 8443, &guard, None);
    assert_eq!(
        go(&[ip("10.0.0.5"), ip("93.184.215.14"), ip("::1")]),
        Ok(vec!["93.184.215.14:8443".parse().unwrap()])
    );
    assert_eq!(
        go(&[ip("::ffff:127.0.0.1"), ip("169.254.169.254")]),
        Err(Refused::Blocked(Blocked::Loopback, ip("::ffff:127.0.0.1")))
    );
    let own = Some(ip("93.184.215.14"));
    assert_eq!(
        targets("a.example", &[ip("93.184.215.14")], None, 443, &guard, own),
        Err(Refused::Blocked(Blocked::OwnAddress, ip("93.184.215.14")))
    );
}
