use super::backoff::{jittered, Backoff};
use super::proto::*;
use super::update::{pick, split_der, trust_domain_of, UpdateError};
use prost::Message;
use std::path::Path;
use std::time::Duration;

/// A length-delimited field, encoded by hand from workload.proto's numbers.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128);
    let mut out = vec![(number << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

fn map_entry(number: u8, key: &str, value: &[u8]) -> Vec<u8> {
    field(
        number,
        &[field(1, key.as_bytes()), field(2, value)].concat(),
    )
}

#[test]
fn x509_svid_response_field_numbers_match_the_public_proto() {
    // X509SVID: spiffe_id = 1, x509_svid = 2, x509_svid_key = 3, bundle = 4, hint = 5.
    let svid = [
        field(1, b"spiffe://td/w"),
        field(2, b"CERT"),
        field(3, b"KEY"),
        field(4, b"ROOTS"),
        field(5, b"internal"),
    ]
    .concat();
    // X509SVIDResponse: svids = 1, crl = 2, federated_bundles = 3.
    let wire = [
        field(1, &svid),
        field(2, b"CRL"),
        map_entry(3, "spiffe://other", b"FED"),
    ]
    .concat();
    let msg = X509SvidResponse::decode(wire.as_slice()).unwrap();
    let s = &msg.svids[0];
    assert_eq!(s.spiffe_id, "spiffe://td/w");
    assert_eq!(s.x509_svid, b"CERT");
    assert_eq!(s.x509_svid_key, b"KEY");
    assert_eq!(s.bundle, b"ROOTS");
    assert_eq!(s.hint, "internal");
    assert_eq!(msg.crl, vec![b"CRL".to_vec()]);
    assert_eq!(msg.federated_bundles["spiffe://other"], b"FED");
    assert_eq!(msg.encode_to_vec(), wire);
}

#[test]
fn bundle_responses_field_numbers_match_the_public_proto() {
    // X509BundlesResponse: crl = 1, bundles = 2.
    let wire = [field(1, b"CRL"), map_entry(2, "spiffe://td", b"ROOTS")].concat();
    let msg = X509BundlesResponse::decode(wire.as_slice()).unwrap();
    assert_eq!(msg.crl, vec![b"CRL".to_vec()]);
    assert_eq!(msg.bundles["spiffe://td"], b"ROOTS");
    // JWTBundlesResponse: bundles = 1.
    let wire = map_entry(1, "spiffe://td", b"{\"keys\":[]}");
    let msg = JwtBundlesResponse::decode(wire.as_slice()).unwrap();
    assert_eq!(msg.bundles["spiffe://td"], b"{\"keys\":[]}");
}

#[test]
fn method_paths_have_no_package() {
    assert_eq!(FETCH_X509_SVID, format!("/{SERVICE}/FetchX509SVID"));
    assert_eq!(FETCH_X509_BUNDLES, "/SpiffeWorkloadAPI/FetchX509Bundles");
    assert_eq!(FETCH_JWT_BUNDLES, "/SpiffeWorkloadAPI/FetchJWTBundles");
}

fn svid(hint: &str) -> X509Svid {
    X509Svid {
        spiffe_id: format!("spiffe://td/{hint}"),
        hint: hint.into(),
        ..Default::default()
    }
}

#[test]
fn the_hint_picks_the_svid_else_the_first() {
    let svids = [svid("external"), svid("internal")];
    assert_eq!(pick(&svids, None).unwrap().hint, "external");
    assert_eq!(pick(&svids, Some("internal")).unwrap().hint, "internal");
    match pick(&svids, Some("other")) {
        Err(e @ UpdateError::HintNotFound(..)) => {
            assert_eq!(e.reason_label(), "hint_not_found");
            assert!(e.to_string().contains("internal"), "{e}");
        }
        other => panic!("{:?}", other.map(|s| s.hint.clone())),
    }
    assert!(matches!(pick(&[], None), Err(UpdateError::NoSvid)));
    assert!(matches!(pick(&[], Some("x")), Err(UpdateError::NoSvid)));
}

#[test]
fn bundle_keys_are_trust_domains() {
    assert_eq!(
        trust_domain_of("spiffe://example.org").unwrap(),
        "example.org"
    );
    assert_eq!(trust_domain_of("example.org").unwrap(), "example.org");
    for bad in [
        "spiffe://example.org/ns/x",
        "Example.org",
        "spiffe://",
        "",
        "a b",
    ] {
        assert!(trust_domain_of(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn concatenated_der_that_is_not_certificates_is_refused() {
    assert!(split_der(&[], Path::new("x")).unwrap().is_empty());
    let err = split_der(b"\x30\x03abc-not-a-cert", Path::new("agent")).unwrap_err();
    assert_eq!(err.reason_label(), "invalid");
    assert!(
        err.to_string().starts_with("agent: certificate #0"),
        "{err}"
    );
}

#[test]
fn backoff_grows_caps_and_resets_with_jitter_in_the_upper_half() {
    assert_eq!(
        jittered(Duration::from_secs(2), 0.0),
        Duration::from_secs(1)
    );
    assert_eq!(
        jittered(Duration::from_secs(2), 1.0),
        Duration::from_secs(2)
    );
    let mut b = Backoff::new();
    let first = b.next_delay();
    assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
    let mut last = first;
    for _ in 0..20 {
        last = b.next_delay();
    }
    assert!(
        last >= Duration::from_secs(15) && last <= Duration::from_secs(30),
        "{last:?}"
    );
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(200));
}
