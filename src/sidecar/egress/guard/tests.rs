use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_internal_kind_is_refused_in_every_form() {
    let table: &[(&str, Blocked)] = &[
        ("127.0.0.1", Blocked::Loopback),
        ("127.255.255.254", Blocked::Loopback),
        ("::1", Blocked::Loopback),
        ("::ffff:127.0.0.1", Blocked::Loopback),
        ("::127.0.0.1", Blocked::Loopback),
        ("64:ff9b::7f00:1", Blocked::Loopback),
        ("2002:7f00:1::", Blocked::Loopback),
        ("169.254.169.254", Blocked::Metadata),
        ("::ffff:169.254.169.254", Blocked::Metadata),
        ("::ffff:a9fe:a9fe", Blocked::Metadata),
        ("64:ff9b::a9fe:a9fe", Blocked::Metadata),
        ("64:ff9b::169.254.169.254", Blocked::Metadata),
        ("2002:a9fe:a9fe::1", Blocked::Metadata),
        ("fd00:ec2::254", Blocked::Metadata),
        ("169.254.170.2", Blocked::Metadata),
        ("100.100.100.200", Blocked::Metadata),
        ("192.0.0.192", Blocked::Metadata),
        ("168.63.129.16", Blocked::Metadata),
        ("169.254.1.1", Blocked::LinkLocal),
        ("fe80::1", Blocked::LinkLocal),
        ("febf::1", Blocked::LinkLocal),
        ("10.0.0.1", Blocked::Private),
        ("10.255.255.255", Blocked::Private),
        ("172.16.0.1", Blocked::Private),
        ("172.31.255.255", Blocked::Private),
        ("192.168.1.1", Blocked::Private),
        ("::ffff:10.1.2.3", Blocked::Private),
        ("64:ff9b::c0a8:101", Blocked::Private),
        ("100.64.0.1", Blocked::SharedAddressSpace),
        ("100.127.255.255", Blocked::SharedAddressSpace),
        ("fc00::1", Blocked::UniqueLocal),
        ("fd12:3456::1", Blocked::UniqueLocal),
        ("0.0.0.0", Blocked::Unspecified),
        ("0.1.2.3", Blocked::Unspecified),
        ("::", Blocked::Unspecified),
        ("::ffff:0.0.0.0", Blocked::Unspecified),
        ("224.0.0.1", Blocked::Multicast),
        ("239.255.255.250", Blocked::Multicast),
        ("ff02::1", Blocked::Multicast),
        ("255.255.255.255", Blocked::Broadcast),
        ("240.0.0.1", Blocked::Reserved),
        ("192.0.0.8", Blocked::Reserved),
        ("192.0.2.1", Blocked::Reserved),
        ("198.18.0.1", Blocked::Reserved),
        ("2001:db8::1", Blocked::Reserved),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Blocked::Reserved),
        ("64:ff9b:1::a9fe:a9fe", Blocked::Reserved),
        ("fec0::1", Blocked::Reserved),
    ];
    let guard = Guard::default();
    for (addr, why) in table {
        assert_eq!(classify(ip(addr)), Some(*why), "{addr}");
        assert_eq!(guard.check(ip(addr), None), Err(*why), "{addr}");
    }
}

#[test]
fn public_addresses_pass() {
    let guard = Guard::default();
    for addr in [
        "1.1.1.1",
        "8.8.8.8",
        "172.32.0.1",
        "172.15.255.255",
        "100.63.255.255",
        "100.128.0.0",
        "169.253.255.255",
        "11.0.0.1",
        "2606:4700::1111",
        "::ffff:1.1.1.1",
        "64:ff9b::808:808",
        "2a00:1450:4001::200e",
    ] {
        assert_eq!(classify(ip(addr)), None, "{addr}");
        assert_eq!(guard.check(ip(addr), None), Ok(()), "{addr}");
    }
}

#[test]
fn allowed_cidrs_open_exactly_their_range_in_any_form() {
    let allow = vec![
        "127.0.0.1/32".parse().unwrap(),
        "10.20.0.0/16".parse().unwrap(),
    ];
    let guard = Guard::new(allow, Vec::new());
    assert_eq!(guard.check(ip("127.0.0.1"), None), Ok(()));
    assert_eq!(guard.check(ip("::ffff:127.0.0.1"), None), Ok(()));
    assert_eq!(guard.check(ip("127.0.0.2"), None), Err(Blocked::Loopback));
    assert_eq!(guard.check(ip("10.20.3.4"), None), Ok(()));
    assert_eq!(guard.check(ip("10.21.3.4"), None), Err(Blocked::Private));
    assert_eq!(guard.check(ip("::1"), None), Err(Blocked::Loopback));
    assert_eq!(
        guard.check(ip("169.254.169.254"), None),
        Err(Blocked::Metadata)
    );
}

#[test]
fn the_pods_own_addresses_are_refused_even_when_public() {
    let guard = Guard::new(Vec::new(), vec![ip("203.0.114.7"), ip("2a00:1::7")]);
    assert_eq!(
        guard.check(ip("203.0.114.7"), None),
        Err(Blocked::OwnAddress)
    );
    assert_eq!(
        guard.check(ip("::ffff:203.0.114.7"), None),
        Err(Blocked::OwnAddress)
    );
    assert_eq!(guard.check(ip("2a00:1::7"), None), Err(Blocked::OwnAddress));
    assert_eq!(guard.check(ip("203.0.114.8"), None), Ok(()));
    // The address the app's connection came from is one of the pod's.
    let app = Some(ip("2a00:1::9"));
    assert_eq!(guard.check(ip("2a00:1::9"), app), Err(Blocked::OwnAddress));
    assert_eq!(guard.check(ip("2a00:1::8"), app), Ok(()));
}

#[test]
fn a_range_that_covers_metadata_is_named() {
    let cases = [
        ("169.254.0.0/16", Some("169.254.169.254")),
        ("0.0.0.0/0", Some("169.254.169.254")),
        ("100.64.0.0/10", Some("100.100.100.200")),
        ("192.0.0.0/24", Some("192.0.0.192")),
        ("fd00::/8", Some("fd00:ec2::254")),
        ("169.254.169.254/32", None),
        ("10.0.0.0/8", None),
        ("127.0.0.1/32", None),
    ];
    for (cidr, inside) in cases {
        let cidr: Cidr = cidr.parse().unwrap();
        assert_eq!(metadata_inside(&cidr), inside.map(ip), "{cidr}");
    }
}

#[test]
fn embedded_addresses_are_recovered() {
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let v4 = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
    assert_eq!(embedded_v4(v6("::ffff:1.2.3.4")), v4("1.2.3.4"));
    assert_eq!(embedded_v4(v6("::1.2.3.4")), v4("1.2.3.4"));
    assert_eq!(embedded_v4(v6("64:ff9b::1.2.3.4")), v4("1.2.3.4"));
    assert_eq!(embedded_v4(v6("2002:102:304::")), v4("1.2.3.4"));
    assert_eq!(embedded_v4(v6("::1")), None);
    assert_eq!(embedded_v4(v6("::")), None);
    assert_eq!(embedded_v4(v6("2606:4700::1")), None);
}
