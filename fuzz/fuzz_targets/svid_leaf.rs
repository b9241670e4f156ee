//! The X509-SVID leaf rules on arbitrary DER: never a panic; an accepted
//! leaf names a workload and is inside its validity window; the role
//! changes nothing but the extended key usage verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::identity::{check_svid_leaf, svid_validity, Role, SvidError};
use meshguard_fuzz::FIXED_NOW;

fuzz_target!(|der: &[u8]| {
    let client = check_svid_leaf(der, Role::Client, FIXED_NOW);
    let server = check_svid_leaf(der, Role::Server, FIXED_NOW);
    match (&client, &server) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => {
            assert!(matches!(e, SvidError::WrongExtendedKeyUsage(_)), "{e:?}")
        }
        (Err(_), Err(_)) => {}
    }
    for id in client.iter().chain(server.iter()) {
        assert!(!id.is_root());
        let (not_before, not_after) = svid_validity(der).expect("an accepted leaf has a validity");
        assert!(not_before <= FIXED_NOW && FIXED_NOW <= not_after);
    }
    // Extreme clocks must not overflow anything.
    for now in [i64::MIN, -1, 0, i64::MAX] {
        let _ = check_svid_leaf(der, Role::Client, now);
    }
    let _ = svid_validity(der);
});
