//! The webhook signature-header parsers and `webhook::verify` on arbitrary
//! input (the first line is a header value, the rest a body): never a
//! panic; whatever a parser accepts is exactly what the header says (the
//! signatures re-encode to the header's items, counts are bounded); no
//! header the fuzzer writes passes `verify` (it cannot know the secret);
//! a header signed here with the secret passes, and fails once the body
//! changes by one byte.
#![no_main]

use aws_lc_rs::hmac;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::webhook::{
    hex, parse_generic, parse_github, parse_slack, parse_standard, parse_stripe, verify, Check,
    Encoding, Format, Generic, Reject, SecretSet, Signed, StandardSig,
};

const SECRET: &str = "whsec_fuzz-secret";
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, body) = text.split_once('\n').unwrap_or((text, ""));
    stripe(header);
    hex_prefixed(header, "sha256=", parse_github);
    hex_prefixed(header, "v0=", parse_slack);
    standard(header);
    generic(header);
    forged(header, body.as_bytes());
    signed(body.as_bytes());
});

fn items(header: &str) -> Vec<&str> {
    header.split(',').map(str::trim).collect()
}

fn stripe(header: &str) {
    let Ok((t, v1)) = parse_stripe(header) else {
        return;
    };
    let items = items(header);
    assert!((1..=8).contains(&v1.len()));
    assert_eq!(items.iter().filter(|i| i.starts_with("t=")).count(), 1);
    assert!(items.contains(&format!("t={t}").as_str()));
    for v in v1 {
        assert!(!v.contains(','));
        assert!(items.contains(&format!("v1={v}").as_str()));
    }
}

fn hex_prefixed(header: &str, prefix: &str, parse: fn(&str) -> Result<Vec<u8>, Reject>) {
    let Ok(sig) = parse(header) else {
        return;
    };
    assert_eq!(sig.len(), 32);
    let rest = header.strip_prefix(prefix).expect("the prefix");
    assert_eq!(rest.to_ascii_lowercase(), hex(&sig));
}

fn standard(header: &str) {
    let Ok(sigs) = parse_standard(header) else {
        return;
    };
    assert!((1..=16).contains(&sigs.len()));
    let entries: Vec<&str> = header.split(' ').filter(|s| !s.is_empty()).collect();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for sig in sigs {
        let entry = match &sig {
            StandardSig::V1(b) => format!("v1,{}", b64(b)),
            StandardSig::V1a(b) => format!("v1a,{}", b64(b)),
        };
        assert!(entries.contains(&entry.as_str()), "{entry}");
    }
}

fn generic(header: &str) {
    for encoding in [Encoding::Hex, Encoding::Base64] {
        let g = scheme(encoding);
        let Ok(sig) = parse_generic(&g, header) else {
            continue;
        };
        let rest = header.strip_prefix("sig=").expect("the prefix");
        match encoding {
            Encoding::Hex => assert_eq!(rest.to_ascii_lowercase(), hex(&sig)),
            Encoding::Base64 => {
                assert_eq!(rest, base64::engine::general_purpose::STANDARD.encode(&sig))
            }
        }
    }
}

fn scheme(encoding: Encoding) -> Generic {
    Generic {
        header: "x-signature".into(),
        algorithm: Default::default(),
        encoding,
        prefix: "sig=".into(),
        timestamp_header: Some("x-timestamp".into()),
        id_header: None,
        signed: Signed::TimestampBody,
    }
}

fn formats() -> Vec<Format> {
    vec![
        Format::Stripe,
        Format::Github,
        Format::Slack,
        Format::StandardWebhooks,
        Format::Generic(scheme(Encoding::Hex)),
        Format::Generic(scheme(Encoding::Base64)),
    ]
}

fn secrets(format: &Format) -> SecretSet {
    let text = match format {
        Format::StandardWebhooks => {
            let key = base64::engine::general_purpose::STANDARD.encode(SECRET);
            format!("whsec_{key}\n")
        }
        _ => format!("{SECRET}\n"),
    };
    SecretSet::parse(format, &text, "fuzz").expect("the fuzz secret")
}

/// The fuzzer's header under every format's signature header name, with a
/// fresh timestamp and an id: never accepted.
fn forged(header: &str, body: &[u8]) {
    let Ok(value) = HeaderValue::from_str(header) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for name in [
        "stripe-signature",
        "x-hub-signature-256",
        "x-slack-signature",
        "webhook-signature",
        "x-signature",
    ] {
        headers.insert(HeaderName::from_static(name), value.clone());
    }
    let now = HeaderValue::from(NOW);
    for name in [
        "x-slack-request-timestamp",
        "webhook-timestamp",
        "x-timestamp",
    ] {
        headers.insert(HeaderName::from_static(name), now.clone());
    }
    headers.insert("webhook-id", HeaderValue::from_static("msg_fuzz"));
    for format in formats() {
        let secrets = secrets(&format);
        let check = Check {
            format: &format,
            secrets: &secrets,
            tolerance: 300,
            now: NOW,
        };
        assert!(
            verify(&headers, body, &check).is_err(),
            "{format:?} accepted a forged header"
        );
    }
}

/// A Stripe and a GitHub header signed here: accepted, with the id of the
/// signature; refused once the body changes.
fn signed(body: &[u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let t = NOW.to_string();
    let stripe_sig = hex(hmac::sign(&key, &[t.as_bytes(), b".", body].concat()).as_ref());
    let github_sig = hex(hmac::sign(&key, body).as_ref());
    let cases = [
        (
            Format::Stripe,
            "stripe-signature",
            format!("t={t},v1={stripe_sig}"),
        ),
        (
            Format::Github,
            "x-hub-signature-256",
            format!("sha256={github_sig}"),
        ),
    ];
    let mut altered = body.to_vec();
    match altered.first_mut() {
        Some(b) => *b ^= 1,
        None => altered.push(0),
    }
    for (format, name, value) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(&value).expect("ascii"));
        let secrets = secrets(&format);
        let check = Check {
            format: &format,
            secrets: &secrets,
            tolerance: 300,
            now: NOW,
        };
        let verified = verify(&headers, body, &check).expect("signed with the secret");
        assert!(verified.id.ends_with(&value[value.len() - 64..]));
        assert_eq!(
            verify(&headers, &altered, &check).unwrap_err(),
            Reject::BadSignature
        );
    }
}
