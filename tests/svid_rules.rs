//! The bad-certificate table: every X509-SVID rule, checked through the
//! same rustls verifiers the listeners use, with real certificates made by
//! our rcgen code. Each case must be refused for its own reason.

mod support;

use meshguard::dev::certs::{DevCa, Issued, LeafSpec};
use meshguard::sidecar::tls::{
    crypto_provider, CredentialStore, InboundVerifier, OutboundVerifier, Svid, TrustBundles,
    VerifyError,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SubjectPublicKeyInfo,
};
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

/// As [`inbound`], at a chosen instant.
fn inbound_at(
    w: &World,
    leaf: &Issued,
    intermediates: &[CertificateDer<'static>],
    now: time::OffsetDateTime,
) -> Result<(), String> {
    let v = InboundVerifier::new(w.store.clone(), &crypto_provider());
    let now =
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.unix_timestamp() as u64));
    v.verify_client_cert(&chain_of(leaf)[0], intermediates, now)
        .map(|_| ())
        .map_err(reason)
}

/// GeneralNames DER holding one URI (for hand-made SAN extensions).
fn general_names_uri(uri: &[u8]) -> Vec<u8> {
    assert!(uri.len() < 126, "short form lengths only");
    let mut out = vec![0x30, uri.len() as u8 + 2, 0x86, uri.len() as u8];
    out.extend_from_slice(uri);
    out
}

/// An rcgen issuer for a CA made by our dev CA code.
fn issuer_of(ca: &DevCa) -> Issuer<'static, KeyPair> {
    Issuer::from_ca_cert_pem(ca.cert_pem(), KeyPair::from_pem(ca.key_pem()).unwrap()).unwrap()
}

/// The parameters `DevCa::issue` uses for a correct SVID, for cases that
/// need more than `LeafSpec` offers.
fn svid_params(uri: &str) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "client");
    params
        .subject_alt_names
        .push(SanType::URI(uri.try_into().unwrap()));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::hours(1);
    params.use_authority_key_identifier_extension = true;
    params
}

/// Signs `params` (with a fresh P-256 key) by `issuer`.
fn sign(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// CA parameters (as our dev CA writes them), with a chosen basic
/// constraint and key usage.
fn ca_params(name: &str, is_ca: IsCa, key_usages: Vec<KeyUsagePurpose>) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .subject_alt_names
        .push(SanType::URI("spiffe://cluster.local".try_into().unwrap()));
    params.is_ca = is_ca;
    params.key_usages = key_usages;
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(1);
    params
}

/// An intermediate made from `params`, signed by `parent`: its issuer (to
/// sign with) and its DER (to send along).
fn intermediate(
    params: CertificateParams,
    parent: &Issuer<'_, KeyPair>,
) -> (Issuer<'static, KeyPair>, CertificateDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, parent).unwrap();
    (Issuer::new(params, key), cert.der().clone())
}

const CA_USAGES: [KeyUsagePurpose; 3] = [
    KeyUsagePurpose::KeyCertSign,
    KeyUsagePurpose::CrlSign,
    KeyUsagePurpose::DigitalSignature,
];

/// A 1024-bit RSA public key (SubjectPublicKeyInfo). Only the public half is
/// needed: the verifier refuses the certificate before any signature by it.
const RSA_1024_SPKI: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDEicqS0Vr+ORngLPnCRZN8ebgW
T9I2JKCJfuKudIP5cPE2GTYrf5YX0c4fjJMWTvP/lIFEBud0bZoAfw71UlN5Lf/i
OWP1vQoeAt+AhWvW6AVoQWyebEEXfXoJM+qkIaa6n8aFa10PQLN0PUszsT0QZQWG
g1iXg7r3pWB+HVw0ZQIDAQAB
-----END PUBLIC KEY-----
";

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
        (
            "keyUsage not critical",
            with(|s| {
                s.key_usages.clear();
                // keyUsage (2.5.29.15) = BIT STRING, digitalSignature only.
                s.extra_extensions.push(CustomExtension::from_oid_content(
                    &[2, 5, 29, 15],
                    vec![0x03, 0x02, 0x07, 0x80],
                ));
            }),
            "not_svid",
        ),
        (
            "extendedKeyUsage present but empty",
            with(|s| {
                s.extended_key_usages.clear();
                s.extra_extensions.push(CustomExtension::from_oid_content(
                    &[2, 5, 29, 37],
                    vec![0x30, 0x00],
                ));
            }),
            "not_svid",
        ),
        (
            "duplicate subjectAltName extension",
            with(|s| {
                let uri = b"spiffe://cluster.local/ns/kube-system/sa/admin";
                s.extra_extensions.push(CustomExtension::from_oid_content(
                    &[2, 5, 29, 17],
                    general_names_uri(uri),
                ));
            }),
            "not_svid",
        ),
        (
            "uppercase scheme",
            with(|s| s.uris = vec!["SPIFFE://cluster.local/ns/default/sa/client".into()]),
            "not_svid",
        ),
        (
            "empty trust domain",
            with(|s| s.uris = vec!["spiffe:///ns/default/sa/client".into()]),
            "not_svid",
        ),
        (
            "trust domain over 255 bytes",
            with(|s| s.uris = vec![format!("spiffe://{}.local/ns/a/sa/b", "t".repeat(250))]),
            "not_svid",
        ),
        (
            "empty path segment",
            with(|s| s.uris = vec!["spiffe://cluster.local/ns//sa/client".into()]),
            "not_svid",
        ),
        (
            "single-dot segment",
            with(|s| s.uris = vec!["spiffe://cluster.local/ns/./sa/client".into()]),
            "not_svid",
        ),
        (
            "space in path",
            with(|s| s.uris = vec!["spiffe://cluster.local/ns/default/sa/cli ent".into()]),
            "not_svid",
        ),
        (
            "notBefore after notAfter",
            with(|s| {
                s.not_before = time::OffsetDateTime::now_utc() + Duration::hours(1);
                s.not_after = time::OffsetDateTime::now_utc() - Duration::hours(1);
            }),
            "not_svid",
        ),
    ];
    assert!(cases.len() >= 35, "{} cases", cases.len());
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

/// Leaves `LeafSpec` cannot describe: a chosen public key, an empty subject.
#[test]
fn leaf_violations_beyond_leafspec_are_refused() {
    let w = world();
    let root = issuer_of(&w.pki.ca);

    let weak = SubjectPublicKeyInfo::from_pem(RSA_1024_SPKI).unwrap();
    let cert = svid_params(CLIENT).signed_by(&weak, &root).unwrap();
    let rsa_1024 = Issued {
        cert_pem: cert.pem(),
        key_pem: String::new(),
        der: cert.der().to_vec(),
    };
    expect_refused(&w, "RSA-1024 leaf key", &rsa_1024, "not_svid");

    // Empty subject: rcgen then marks the SAN critical, as RFC 5280 asks.
    let mut params = svid_params(CLIENT);
    params.distinguished_name = DistinguishedName::new();
    assert_eq!(
        inbound(&w, &sign(&params, &root), &[]),
        Ok(()),
        "empty subject with a critical SAN is a correct SVID"
    );
    // The same with a hand-made, non-critical SAN.
    params.subject_alt_names.clear();
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            general_names_uri(CLIENT.as_bytes()),
        ));
    expect_refused(
        &w,
        "empty subject with non-critical SAN",
        &sign(&params, &root),
        "not_svid",
    );
}

/// Chains that a correct leaf cannot make acceptable.
#[test]
fn chain_rule_violations_are_refused() {
    let w = world();
    let root = issuer_of(&w.pki.ca);
    let leaf = svid_params(CLIENT);

    // The positive control: a correct intermediate.
    let (good, good_der) = intermediate(
        ca_params(
            "good",
            IsCa::Ca(BasicConstraints::Unconstrained),
            CA_USAGES.to_vec(),
        ),
        &root,
    );
    assert_eq!(
        inbound(&w, &sign(&leaf, &good), std::slice::from_ref(&good_der)),
        Ok(())
    );

    let mut cases: Vec<(&str, Issued, Vec<CertificateDer<'static>>, &str)> = Vec::new();

    let (not_ca, not_ca_der) = intermediate(
        ca_params("not a CA", IsCa::ExplicitNoCa, CA_USAGES.to_vec()),
        &root,
    );
    cases.push((
        "issuer with basicConstraints CA:false",
        sign(&leaf, &not_ca),
        vec![not_ca_der],
        "invalid_chain",
    ));

    let (no_bc, no_bc_der) = intermediate(
        ca_params("no basicConstraints", IsCa::NoCa, CA_USAGES.to_vec()),
        &root,
    );
    cases.push((
        "issuer without basicConstraints",
        sign(&leaf, &no_bc),
        vec![no_bc_der],
        "invalid_chain",
    ));

    let (svid_issuer, svid_der) = intermediate(svid_params(CLIENT), &root);
    cases.push((
        "leaf signed by another workload's SVID",
        sign(&leaf, &svid_issuer),
        vec![svid_der],
        "invalid_chain",
    ));

    let (len0, len0_der) = intermediate(
        ca_params(
            "pathLen 0",
            IsCa::Ca(BasicConstraints::Constrained(0)),
            CA_USAGES.to_vec(),
        ),
        &root,
    );
    let (below, below_der) = intermediate(
        ca_params(
            "below pathLen 0",
            IsCa::Ca(BasicConstraints::Unconstrained),
            CA_USAGES.to_vec(),
        ),
        &len0,
    );
    cases.push((
        "intermediate below a pathLen 0 intermediate",
        sign(&leaf, &below),
        vec![below_der, len0_der.clone()],
        "invalid_chain",
    ));
    assert_eq!(
        inbound(&w, &sign(&leaf, &len0), &[len0_der]),
        Ok(()),
        "pathLen 0 still allows issuing leaves"
    );

    let mut expired = ca_params(
        "expired",
        IsCa::Ca(BasicConstraints::Unconstrained),
        CA_USAGES.to_vec(),
    );
    expired.not_before = time::OffsetDateTime::now_utc() - Duration::days(2);
    expired.not_after = time::OffsetDateTime::now_utc() - Duration::days(1);
    let (expired, expired_der) = intermediate(expired, &root);
    cases.push((
        "expired intermediate",
        sign(&leaf, &expired),
        vec![expired_der],
        "invalid_chain",
    ));

    let partner_root = issuer_of(&w.federated);
    let (partner_inter, partner_der) = intermediate(
        ca_params(
            "partner intermediate",
            IsCa::Ca(BasicConstraints::Unconstrained),
            CA_USAGES.to_vec(),
        ),
        &partner_root,
    );
    cases.push((
        "our domain via a partner intermediate",
        sign(&leaf, &partner_inter),
        vec![partner_der],
        "unknown_ca",
    ));

    cases.push((
        "the right intermediate, but the leaf is signed by another key",
        sign(
            &leaf,
            &issuer_of(&DevCa::generate(TD, Duration::days(1)).unwrap()),
        ),
        vec![good_der],
        "unknown_ca",
    ));

    for (case, leaf, chain, want) in &cases {
        assert_eq!(
            inbound(&w, leaf, chain),
            Err(want.to_string()),
            "case {case}"
        );
    }
}

/// A leaf may outlive the CA that signed it (RFC 5280 does not forbid it,
/// and issuers clamp only by policy); what matters is that the chain is
/// refused once the CA has expired, even though the leaf itself is valid.
#[test]
fn leaf_outliving_its_ca_is_refused_once_the_ca_expired() {
    let w = world();
    let short = w
        .pki
        .ca
        .intermediate(TD, "short-lived", Duration::hours(1))
        .unwrap();
    let leaf = short
        .issue(&LeafSpec::svid(CLIENT, Duration::hours(6)))
        .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(short.cert_pem().as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(inbound_at(&w, &leaf, &chain, now), Ok(()));
    assert_eq!(
        inbound_at(&w, &leaf, &chain, now + Duration::hours(3)),
        Err("invalid_chain".into()),
        "intermediate expired, leaf still inside its window"
    );
}

/// RFC 5280 section 6.1.4 (n) and the X509-SVID standard: a signing
/// certificate must have keyCertSign. webpki ignores keyUsage on issuers,
/// so meshguard's verifier checks every intermediate itself.
#[test]
fn issuer_without_key_cert_sign_is_refused() {
    let w = world();
    let root = issuer_of(&w.pki.ca);
    let (issuer, der) = intermediate(
        ca_params(
            "no keyCertSign",
            IsCa::Ca(BasicConstraints::Unconstrained),
            vec![KeyUsagePurpose::DigitalSignature],
        ),
        &root,
    );
    let leaf = sign(&svid_params(CLIENT), &issuer);
    assert_eq!(inbound(&w, &leaf, &[der]), Err("invalid_chain".into()));
}
