use super::*;

fn err(s: &str) -> SpiffeIdError {
    SpiffeId::parse(s).expect_err(s)
}

#[test]
fn accepts_kubernetes_convention_id() {
    let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
    assert_eq!(id.trust_domain(), "cluster.local");
    assert_eq!(id.path(), "/ns/default/sa/web");
    assert_eq!(id.k8s_namespace(), Some("default"));
    assert!(!id.is_root());
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
}

#[test]
fn accepts_every_allowed_character() {
    SpiffeId::parse("spiffe://a-b_c.0-9/AZaz09.-_/x.y/..a/.b").unwrap();
}

#[test]
fn root_id_is_valid_but_marked_root() {
    let id = SpiffeId::parse("spiffe://example.org").unwrap();
    assert!(id.is_root());
    assert_eq!(id.path(), "");
    assert_eq!(id.k8s_namespace(), None);
}

#[test]
fn scheme_rules() {
    assert_eq!(err(""), SpiffeIdError::Empty);
    assert_eq!(err("http://td/a"), SpiffeIdError::WrongScheme);
    assert_eq!(err("SPIFFE://td/a"), SpiffeIdError::WrongScheme);
    assert_eq!(err("spiffe:/td/a"), SpiffeIdError::WrongScheme);
    assert_eq!(err("spiffe:td/a"), SpiffeIdError::WrongScheme);
    assert_eq!(err("td/a"), SpiffeIdError::WrongScheme);
}

#[test]
fn trust_domain_rules() {
    assert_eq!(err("spiffe://"), SpiffeIdError::EmptyTrustDomain);
    assert_eq!(err("spiffe:///a"), SpiffeIdError::EmptyTrustDomain);
    assert_eq!(
        err("spiffe://Cluster.local/a"),
        SpiffeIdError::BadTrustDomainChar('C')
    );
    assert_eq!(err("spiffe://td:8443/a"), SpiffeIdError::Port);
    assert_eq!(err("spiffe://user@td/a"), SpiffeIdError::UserInfo);
    assert_eq!(err("spiffe://t%64/a"), SpiffeIdError::PercentEncoded);
    assert_eq!(err("spiffe://td?x=1"), SpiffeIdError::Query);
    assert_eq!(err("spiffe://td#frag"), SpiffeIdError::Fragment);
    assert_eq!(
        err("spiffe://t d/a"),
        SpiffeIdError::BadTrustDomainChar(' ')
    );
    assert_eq!(err("spiffe://tö/a"), SpiffeIdError::BadTrustDomainChar('ö'));
    assert_eq!(
        err("spiffe://[::1]/a"),
        SpiffeIdError::BadTrustDomainChar('[')
    );
}

#[test]
fn trust_domain_length_limit() {
    let ok = "a".repeat(MAX_TRUST_DOMAIN_LEN);
    SpiffeId::parse(&format!("spiffe://{ok}/w")).unwrap();
    let long = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
    assert_eq!(
        err(&format!("spiffe://{long}/w")),
        SpiffeIdError::TrustDomainTooLong
    );
}

#[test]
fn whole_id_length_limit() {
    let prefix = "spiffe://td/";
    let ok = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
    assert_eq!(ok.len(), MAX_SPIFFE_ID_LEN);
    SpiffeId::parse(&ok).unwrap();
    let long = format!("{ok}b");
    assert_eq!(err(&long), SpiffeIdError::TooLong);
}

#[test]
fn path_rules() {
    assert_eq!(err("spiffe://td/"), SpiffeIdError::TrailingSlash);
    assert_eq!(err("spiffe://td/a/"), SpiffeIdError::TrailingSlash);
    assert_eq!(err("spiffe://td//a"), SpiffeIdError::EmptySegment);
    assert_eq!(err("spiffe://td/a//b"), SpiffeIdError::EmptySegment);
    assert_eq!(err("spiffe://td/./a"), SpiffeIdError::DotSegment);
    assert_eq!(err("spiffe://td/a/.."), SpiffeIdError::DotSegment);
    assert_eq!(err("spiffe://td/a/../b"), SpiffeIdError::DotSegment);
    assert_eq!(err("spiffe://td/a%2Fb"), SpiffeIdError::PercentEncoded);
    assert_eq!(err("spiffe://td/a?b=c"), SpiffeIdError::Query);
    assert_eq!(err("spiffe://td/a#b"), SpiffeIdError::Fragment);
    assert_eq!(err("spiffe://td/a b"), SpiffeIdError::BadPathChar(' '));
    assert_eq!(err("spiffe://td/a:b"), SpiffeIdError::BadPathChar(':'));
    assert_eq!(err("spiffe://td/a*"), SpiffeIdError::BadPathChar('*'));
    assert_eq!(err("spiffe://td/é"), SpiffeIdError::BadPathChar('é'));
}

#[test]
fn path_is_case_sensitive_and_ids_compare_exactly() {
    let a = SpiffeId::parse("spiffe://td/ns/A/sa/x").unwrap();
    let b = SpiffeId::parse("spiffe://td/ns/a/sa/x").unwrap();
    assert_ne!(a, b);
}

#[test]
fn k8s_constructor_validates() {
    let id = SpiffeId::from_k8s("cluster.local", "shop", "orders").unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/orders");
    assert!(SpiffeId::from_k8s("Cluster", "shop", "orders").is_err());
    assert!(SpiffeId::from_k8s("td", "", "orders").is_err());
}

#[test]
fn k8s_namespace_only_for_exact_shape() {
    let id = SpiffeId::parse("spiffe://td/ns/a/sa/b/extra").unwrap();
    assert_eq!(id.k8s_namespace(), None);
    let id = SpiffeId::parse("spiffe://td/workload/web").unwrap();
    assert_eq!(id.k8s_namespace(), None);
}

/// RSA key sizes read from the modulus bits (see `svid::significant_bits`).
mod key_size {
    use crate::sidecar::identity::svid::significant_bits;

    #[test]
    fn bit_length_ignores_leading_zero_bytes() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[1]), 1);
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x7f, 0xff]), 15);
        let mut rsa_2048 = vec![0u8; 257];
        rsa_2048[1] = 0xc3;
        assert_eq!(significant_bits(&rsa_2048), 2048);
        rsa_2048[1] = 0x43;
        assert_eq!(significant_bits(&rsa_2048), 2047);
    }
}
