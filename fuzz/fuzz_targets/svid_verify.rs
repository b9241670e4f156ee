//! The rustls verifiers on arbitrary chains, against a fixed trust store
//! at a fixed instant. Input: the leaf DER, then each intermediate's DER,
//! separated by `MGSEP`. Every refusal must be a certificate error (never
//! a panic or another kind of error), and whatever is accepted must obey
//! the leaf rules, the chain length limit and the trust-domain binding.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::identity::{check_svid_leaf, Role, SpiffeId};
use meshguard::sidecar::tls::{InboundVerifier, OutboundVerifier};
use meshguard_fuzz::{fixed_store, CHAIN_SEPARATOR, FIXED_NOW};
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

const MAX_INTERMEDIATES: usize = 4;
const EXPECTED: &str = "spiffe://cluster.local/ns/default/sa/client";

struct Verifiers {
    inbound: InboundVerifier,
    outbound: OutboundVerifier,
}

fn verifiers() -> &'static Verifiers {
    static V: OnceLock<Verifiers> = OnceLock::new();
    V.get_or_init(|| {
        let store = fixed_store();
        let provider = meshguard::sidecar::tls::crypto_provider();
        Verifiers {
            inbound: InboundVerifier::new(store.clone(), &provider),
            outbound: OutboundVerifier::new(
                store,
                SpiffeId::parse(EXPECTED).expect("expected ID"),
                &provider,
            ),
        }
    })
}

/// `MESHGUARD_FUZZ_DEBUG=1` prints each verdict (to check what the seeds
/// reach, e.g. `cargo fuzz run svid_verify corpus/svid_verify -- -runs=0`).
fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("MESHGUARD_FUZZ_DEBUG").is_some())
}

fn split<'a>(mut data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    while let Some(i) = data.windows(sep.len()).position(|w| w == sep) {
        parts.push(&data[..i]);
        data = &data[i + sep.len()..];
    }
    parts.push(data);
    parts
}

fn assert_certificate_error(err: &rustls::Error) {
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "refusal is not a certificate error: {err:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data, CHAIN_SEPARATOR);
    if parts.len() > 8 {
        return;
    }
    let leaf = CertificateDer::from(parts[0]);
    let intermediates: Vec<CertificateDer<'_>> = parts[1..]
        .iter()
        .map(|p| CertificateDer::from(*p))
        .collect();
    let now = UnixTime::since_unix_epoch(Duration::from_secs(FIXED_NOW as u64));
    let v = verifiers();
    let store = fixed_store();
    let debug = debug();

    let verdict = v.inbound.verify_client_cert(&leaf, &intermediates, now);
    if debug {
        eprintln!("inbound: {verdict:?}");
    }
    match verdict {
        Ok(_) => {
            let id = check_svid_leaf(&leaf, Role::Client, FIXED_NOW)
                .expect("an accepted client leaf obeys the leaf rules");
            assert!(store.bundles().get(id.trust_domain()).is_some());
            assert!(intermediates.len() <= MAX_INTERMEDIATES);
        }
        Err(e) => assert_certificate_error(&e),
    }

    let name = ServerName::try_from("ignored.test").expect("name");
    let verdict = v
        .outbound
        .verify_server_cert(&leaf, &intermediates, &name, &[], now);
    if debug {
        eprintln!("outbound: {verdict:?}");
    }
    match verdict {
        Ok(_) => {
            let id = check_svid_leaf(&leaf, Role::Server, FIXED_NOW)
                .expect("an accepted server leaf obeys the leaf rules");
            assert_eq!(id.as_str(), EXPECTED);
            assert!(intermediates.len() <= MAX_INTERMEDIATES);
        }
        Err(e) => assert_certificate_error(&e),
    }
});
