//! The bad-certificate table: every X509-SVID rule, checked through the
//! same rustls verifiers the listeners use, with real certificates made by
//! our rcgen code. Each case must be refused for its own reason.

mod support;

use meshguard::certs::{DevCa, Issued, LeafSpec};
use meshguard::tls::{
    crypto_provider, CredentialStore, InboundVerifier, OutboundVerifier, Svid, TrustBundles,
    VerifyError,
};
use rcgen::{CustomExtension, ExtendedKeyUsagePurpose, KeyUsagePurpose};
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use support::*;
use time::Duration;

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

struct World {
    pki: Pki,
    federated: DevCa,
    store: Arc<CredentialStore>,
}

fn world() -> World {
    let pki = Pki::new();
    let federated = DevCa::generate("partner.org", Duration::days(1)).unwrap();
    let own = pki.svid(&id("default", "server"));
    let provider = crypto_provider();
    let svid = Svid::from_pem(
        own.cert_pem.as_bytes(),
        own.key_pem.as_bytes(),
        "own.crt".as_ref(),
        "own.key".as_ref(),
        &provider,
    )
    .unwrap();
    let mut bundles = TrustBundles::new();
    let dir = tempfile::tempdir().unwrap();
    let own_bundle = dir.path().join("own.pem");
    std::fs::write(&own_bundle, pki.ca.cert_pem()).unwrap();
    bundles.load_domain(TD, &own_bundle).unwrap();
    let fed_bundle = dir.path().join("fed.pem");
    std::fs::write(&fed_bundle, federated.cert_pem()).unwrap();
    bundles.load_domain("partner.org", &fed_bundle).unwrap();
    World {
        store: CredentialStore::new(svid, bundles).unwrap(),
        pki,
        federated,
    }
}

fn chain_of(issued: &Issued) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

fn reason(err: rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
            o.0.downcast_ref::<VerifyError>()
                .map(|e| e.reason_label().to_owned())
                .unwrap_or_else(|| format!("other: {o:?}"))
        }
        other => format!("rustls: {other:?}"),
    }
}

/// Runs the inbound verifier on a leaf with intermediates.
fn inbound(
    w: &World,
    leaf: &Issued,
    intermediates: &[CertificateDer<'static>],
) -> Result<(), String> {
    let v = InboundVerifier::new(w.store.clone(), &crypto_provider());
    v.verify_client_cert(&chain_of(leaf)[0], intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(reason)
}

fn outbound(w: &World, leaf: &Issued, expected: &str) -> Result<(), String> {
    let v = OutboundVerifier::new(
        w.store.clone(),
        expected.parse().unwrap(),
        &crypto_provider(),
    );
    let name = ServerName::try_from("ignored.test").unwrap();
    v.verify_server_cert(&chain_of(leaf)[0], &[], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(reason)
}

fn spec() -> LeafSpec {
    LeafSpec::svid(CLIENT, Duration::hours(1))
}

fn with(f: impl FnOnce(&mut LeafSpec)) -> LeafSpec {
    let mut s = spec();
    f(&mut s);
    s
}

fn expect_refused(w: &World, case: &str, leaf: &Issued, want: &str) {
    assert_eq!(inbound(w, leaf, &[]), Err(want.to_owned()), "case {case}");
}

#[test]
fn a_correct_svid_is_accepted_both_ways() {
    let w = world();
    let leaf = w.pki.ca.issue(&spec()).unwrap();
    assert_eq!(inbound(&w, &leaf, &[]), Ok(()));
    assert_eq!(outbound(&w, &leaf, CLIENT), Ok(()));
}

#[test]
fn svid_rule_violations_are_refused() {
    let w = world();
    let ca = &w.pki.ca;
    let cases: Vec<(&str, LeafSpec, &str)> = vec![
        (
            "no URI SAN",
            with(|s| {
                s.uris.clear();
                s.dns = vec!["client.default.svc".into()];
            }),
            "not_svid",
        ),
        (
            "two URI SANs",
            with(|s| {
                s.uris
                    .push("spiffe://cluster.local/ns/default/sa/other".into())
            }),
            "not_svid",
        ),
        (
            "URI SAN plus a non-SPIFFE URI",
            with(|s| s.uris.push("https://example.com/x".into())),
            "not_svid",
        ),
        (
            "root-path SPIFFE ID",
            with(|s| s.uris = vec!["spiffe://cluster.local".into()]),
            "not_svid",
        ),
        (
            "uppercase trust domain",
            with(|s| s.uris = vec!["spiffe://Cluster.local/ns/default/sa/client".into()]),
            "not_svid",
        ),
        (
            "percent-encoded trust domain",
            with(|s| s.uris = vec!["spiffe://cluster%2elocal/ns/default/sa/client".into()]),
            "not_svid",
        ),
        (
            "percent-encoded path",
            with(|s| s.uris = vec!["spiffe://cluster.local/ns/default/sa/cl%69ent".into()]),
            "not_svid",
        ),
        (
            "trailing slash",
            with(|s| s.uris = vec!["spiffe://cluster.local/ns/default/sa/client/".into()]),
            "not_svid",
        ),
        (
            "query in ID",
            with(|s| s.uris = vec!["spiffe://cluster.local/ns/default/sa/client?admin=1".into()]),
            "not_svid",
        ),
        (
            "fragment in ID",
            with(|s| s.uris = vec!["spiffe://cluster.local/ns/default/sa/client#x".into()]),
            "not_svid",
        ),
        (
            "port in trust domain",
            with(|s| s.uris = vec!["spiffe://cluster.local:443/ns/default/sa/client".into()]),
            "not_svid",
        ),
        (
            "userinfo in trust domain",
            with(|s| s.uris = vec!["spiffe://admin@cluster.local/ns/default/sa/client".into()]),
            "not_svid",
        ),
        (
            "dot-dot segment",
            with(|s| s.uris = vec!["spiffe://cluster.local/ns/default/../kube-system/sa/x".into()]),
            "not_svid",
        ),
        (
            "wrong scheme",
            with(|s| s.uris = vec!["https://cluster.local/ns/default/sa/client".into()]),
            "not_svid",
        ),
        (
            "SPIFFE ID over 2048 bytes",
            with(|s| s.uris = vec![format!("spiffe://cluster.local/{}", "a".repeat(2100))]),
            "not_svid",
        ),
        (
            "CA certificate as leaf",
            with(|s| {
                s.is_ca = true;
                s.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
            }),
            "not_svid",
        ),
        (
            "CA:true without keyCertSign",
            with(|s| s.is_ca = true),
            "not_svid",
        ),
        (
            "leaf with keyCertSign",
            with(|s| s.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            "not_svid",
        ),
        (
            "leaf with cRLSign",
            with(|s| s.key_usages.push(KeyUsagePurpose::CrlSign)),
            "not_svid",
        ),
        ("no keyUsage", with(|s| s.key_usages.clear()), "not_svid"),
        (
            "keyUsage without digitalSignature",
            with(|s| s.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
            "not_svid",
        ),
        (
            "EKU serverAuth only, used as client",
            with(|s| s.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]),
            "not_svid",
        ),
        (
            "EKU codeSigning only",
            with(|s| s.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning]),
            "not_svid",
        ),
        (
            "expired",
            with(|s| {
                s.not_before = time::OffsetDateTime::now_utc() - Duration::hours(2);
                s.not_after = time::OffsetDateTime::now_utc() - Duration::hours(1);
            }),
            "expired",
        ),
        (
            "not yet valid",
            with(|s| {
                s.not_before = time::OffsetDateTime::now_utc() + Duration::hours(1);
                s.not_after = time::OffsetDateTime::now_utc() + Duration::hours(2);
            }),
            "not_yet_valid",
        ),
        (
            "foreign trust domain signed by our CA",
            with(|s| s.uris = vec!["spiffe://evil.org/ns/default/sa/client".into()]),
            "unknown_trust_domain",
        ),
        (
            "federated trust domain signed by our CA",
            with(|s| s.uris = vec!["spiffe://partner.org/ns/default/sa/client".into()]),
            "unknown_ca",
        ),
        (
            "unknown critical extension",
            with(|s| {
                let mut ext = CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 55555, 1],
                    vec![0x05, 0x00],
                );
                ext.set_criticality(true);
                s.extra_extensions.push(ext);
            }),
            "invalid_cert",
        ),
    ];
    assert!(cases.len() >= 25);
    for (case, spec, want) in &cases {
        let leaf = ca.issue(spec).unwrap();
        expect_refused(&w, case, &leaf, want);
    }
}

#[test]
fn chain_rules() {
    let w = world();
    // Another CA of the same trust domain, not in the bundle.
    let stranger = DevCa::generate(TD, Duration::days(1)).unwrap();
    expect_refused(
        &w,
        "other CA",
        &stranger.issue(&spec()).unwrap(),
        "unknown_ca",
    );

    // A legitimate intermediate: accepted when sent along.
    let inter = w
        .pki
        .ca
        .intermediate(TD, "intermediate", Duration::days(1))
        .unwrap();
    let leaf = inter.issue(&spec()).unwrap();
    let inter_der: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(inter.cert_pem().as_bytes())
            .map(|c| c.unwrap())
            .collect();
    assert_eq!(inbound(&w, &leaf, &inter_der), Ok(()));
    assert_eq!(
        inbound(&w, &leaf, &[]),
        Err("unknown_ca".into()),
        "without its intermediate the chain is broken"
    );

    // Too many intermediates.
    let mut cas = vec![w.pki.ca.intermediate(TD, "i0", Duration::days(1)).unwrap()];
    for i in 1..6 {
        let next = cas
            .last()
            .unwrap()
            .intermediate(TD, &format!("i{i}"), Duration::days(1))
            .unwrap();
        cas.push(next);
    }
    let leaf = cas.last().unwrap().issue(&spec()).unwrap();
    let chain: Vec<CertificateDer<'static>> = cas
        .iter()
        .rev()
        .flat_map(|c| CertificateDer::pem_slice_iter(c.cert_pem().as_bytes()).map(|c| c.unwrap()))
        .collect();
    assert_eq!(inbound(&w, &leaf, &chain), Err("chain_too_long".into()));
}

#[test]
fn federated_peer_is_checked_against_its_own_bundle() {
    let w = world();
    let partner = LeafSpec::svid("spiffe://partner.org/ns/billing/sa/api", Duration::hours(1));
    assert_eq!(
        inbound(&w, &w.federated.issue(&partner).unwrap(), &[]),
        Ok(())
    );
    // A partner CA may not vouch for our own trust domain.
    expect_refused(
        &w,
        "our domain signed by partner CA",
        &w.federated.issue(&spec()).unwrap(),
        "unknown_ca",
    );
}

#[test]
fn outbound_requires_the_exact_expected_identity() {
    let w = world();
    let leaf = w
        .pki
        .ca
        .issue(&LeafSpec::svid(
            "spiffe://cluster.local/ns/default/sa/server",
            Duration::hours(1),
        ))
        .unwrap();
    assert_eq!(
        outbound(&w, &leaf, "spiffe://cluster.local/ns/default/sa/server"),
        Ok(())
    );
    assert_eq!(
        outbound(&w, &leaf, "spiffe://cluster.local/ns/default/sa/payments"),
        Err("wrong_identity".into())
    );
    let client_only = w
        .pki
        .ca
        .issue(&with(|s| {
            s.uris = vec!["spiffe://cluster.local/ns/default/sa/server".into()];
            s.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }))
        .unwrap();
    assert_eq!(
        outbound(
            &w,
            &client_only,
            "spiffe://cluster.local/ns/default/sa/server"
        ),
        Err("not_svid".into()),
        "clientAuth-only EKU cannot serve"
    );
}

#[test]
fn own_svid_must_be_valid_to_load() {
    let pki = Pki::new();
    let provider = crypto_provider();
    let load = |issued: &Issued| {
        Svid::from_pem(
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            "c".as_ref(),
            "k".as_ref(),
            &provider,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert!(load(&pki.svid(&id("a", "b"))).is_ok());
    let expired = pki
        .ca
        .issue(&with(|s| {
            s.not_before = time::OffsetDateTime::now_utc() - Duration::hours(2);
            s.not_after = time::OffsetDateTime::now_utc() - Duration::hours(1);
        }))
        .unwrap();
    assert!(load(&expired).unwrap_err().contains("expired"));
    let a = pki.svid(&id("a", "b"));
    let b = pki.svid(&id("a", "b"));
    let mismatched = Issued {
        cert_pem: a.cert_pem.clone(),
        key_pem: b.key_pem.clone(),
        der: a.der.clone(),
    };
    assert!(load(&mismatched).unwrap_err().contains("does not match"));
    let server_only = pki
        .ca
        .issue(&with(|s| {
            s.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
        }))
        .unwrap();
    assert!(load(&server_only).unwrap_err().contains("clientAuth"));
}
