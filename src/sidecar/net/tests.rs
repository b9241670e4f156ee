use super::*;

#[test]
fn cidrs_parse_and_refuse_ambiguous_ones() {
    let got = Cidr::parse_list("10.0.0.0/8, 192.168.1.7, 2001:db8::/32").unwrap();
    let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]);
    for bad in [
        "10.0.0.0/33",
        "10.1.2.3/8",
        "2001:db8::1/32",
        "10.0.0.0/",
        "10.0.0.0/x",
        "example.com",
        "10.0.0.0/8,",
        "::/129",
    ] {
        assert!(
            matches!(Cidr::parse_list(bad), Err(CidrError { .. })),
            "{bad:?} must be refused"
        );
    }
}
