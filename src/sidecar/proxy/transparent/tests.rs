use super::*;

fn rule(cidr: &str, ports: Option<Vec<u16>>, id: &str) -> DestinationConfig {
    DestinationConfig {
        cidr: cidr.parse().unwrap(),
        ports,
        identity: id.parse().unwrap(),
        protocol: Default::default(),
    }
}

#[test]
fn destinations_match_by_cidr_and_port_first_rule_wins() {
    let d = Destinations::<()>::new(
        vec![
            rule("10.96.0.10/32", Some(vec![80]), "spiffe://td/ns/a/sa/web"),
            rule("10.96.0.0/12", None, "spiffe://td/ns/a/sa/any"),
            rule("fd00::/8", Some(vec![443]), "spiffe://td/ns/b/sa/v6"),
        ],
        Undeclared::Deny,
    );
    let id = |a: &str| d.identity_for(a.parse().unwrap()).map(|i| i.to_string());
    assert_eq!(
        id("10.96.0.10:80").as_deref(),
        Some("spiffe://td/ns/a/sa/web")
    );
    assert_eq!(
        id("10.96.0.10:81").as_deref(),
        Some("spiffe://td/ns/a/sa/any")
    );
    assert_eq!(
        id("10.111.255.255:1").as_deref(),
        Some("spiffe://td/ns/a/sa/any")
    );
    assert_eq!(id("10.112.0.0:80"), None, "outside the /12");
    assert_eq!(
        id("[fd00::1]:443").as_deref(),
        Some("spiffe://td/ns/b/sa/v6")
    );
    assert_eq!(id("[fd00::1]:80"), None);
    assert_eq!(id("[::ffff:10.96.0.10]:80"), None, "no cross-family match");
}

#[test]
fn ipv4_mapped_addresses_are_taken_as_ipv4() {
    let mapped: SocketAddr = "[::ffff:10.96.0.10]:80".parse().unwrap();
    let v4: SocketAddr = "10.96.0.10:80".parse().unwrap();
    assert_eq!(canonical(mapped), v4);
    assert_eq!(canonical(v4), v4);
    let v6: SocketAddr = "[fd00::1]:443".parse().unwrap();
    assert_eq!(canonical(v6), v6);
    // So a connection accepted on `[::]` matches an IPv4 rule.
    let d = Destinations::<()>::new(
        vec![rule("10.96.0.0/12", None, "spiffe://td/ns/a/sa/any")],
        Undeclared::Deny,
    );
    assert!(d.identity_for(canonical(mapped)).is_some());
}

#[test]
fn undeclared_destinations_follow_the_chosen_rule() {
    let dst: SocketAddr = "192.0.2.1:5432".parse().unwrap();
    let deny = Destinations::<()>::new(Vec::new(), Undeclared::Deny);
    assert!(
        matches!(deny.resolve(dst, |_| None), Destination::Http(Routing::Undeclared(d)) if d == dst)
    );
    let pass = Destinations::<()>::new(Vec::new(), Undeclared::Passthrough);
    assert!(matches!(pass.resolve(dst, |_| None), Destination::Passthrough(d) if d == dst));
}
