//! SPIFFE ID parsing: any accepted ID is exactly the input, splits into a
//! valid trust domain and path, and survives every round trip meshguard
//! makes with it (Display, serde, the Kubernetes builder, policy sources).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::identity::{
    validate_trust_domain, SpiffeId, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN,
};
use meshguard::sidecar::policy::Source;

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let td_ok = validate_trust_domain(s).is_ok();
    if td_ok {
        assert!(!s.is_empty() && s.len() <= MAX_TRUST_DOMAIN_LEN);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
    }

    if let Ok(source) = s.parse::<Source>() {
        let again: Source = source.to_string().parse().expect("a source's text parses");
        assert_eq!(again, source);
        assert!(source.covers(&source));
    }

    let Ok(id) = SpiffeId::parse(s) else {
        return;
    };
    assert_eq!(id.to_string(), s);
    assert_eq!(id.as_str(), s);
    assert!(s.len() <= MAX_SPIFFE_ID_LEN);
    assert!(s.is_ascii());
    let td = id.trust_domain();
    assert!(validate_trust_domain(td).is_ok(), "{td:?}");
    assert_eq!(format!("spiffe://{td}{}", id.path()), s);
    assert_eq!(id.is_root(), id.path().is_empty());
    if !id.is_root() {
        let path = id.path().strip_prefix('/').expect("a path starts with '/'");
        for segment in path.split('/') {
            assert!(!segment.is_empty() && segment != "." && segment != "..");
            assert!(segment.chars().all(path_char), "{segment:?}");
        }
    }
    assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
    let json = serde_json::to_string(&id).expect("serialise");
    assert_eq!(
        serde_json::from_str::<SpiffeId>(&json).expect("reparse"),
        id
    );
    if let Some(ns) = id.k8s_namespace() {
        let sa = id.path().rsplit('/').next().expect("a last segment");
        assert_eq!(SpiffeId::from_k8s(td, ns, sa).as_ref(), Ok(&id));
    }
});
