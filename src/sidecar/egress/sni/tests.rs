use super::*;
use std::sync::Arc;

/// The first flight of a real rustls client for `name`.
fn rustls_hello(name: &str) -> Vec<u8> {
    let provider = crate::sidecar::tls::crypto_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

fn u16b(n: usize) -> [u8; 2] {
    (n as u16).to_be_bytes()
}

/// A hand-built ClientHello record with these extensions (type, body).
fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut exts = Vec::new();
    for (kind, body) in extensions {
        exts.extend(kind.to_be_bytes());
        exts.extend(u16b(body.len()));
        exts.extend(body);
    }
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.push(0); // session id
    body.extend([0, 2, 0x13, 0x01]); // one suite
    body.extend([1, 0]); // null compression
    body.extend(u16b(exts.len()));
    body.extend(exts);
    let mut hs = vec![1, 0];
    hs.extend(u16b(body.len()));
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend(u16b(hs.len()));
    rec.extend(hs);
    rec
}

fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend(u16b(name.len()));
        list.extend(*name);
    }
    let mut body = u16b(list.len()).to_vec();
    body.extend(list);
    body
}

#[test]
fn a_real_client_hello_gives_its_name() {
    let bytes = rustls_hello("API.Payments.example");
    assert_eq!(server_name(&bytes).unwrap(), "api.payments.example");
    assert_eq!(record_len(&bytes).unwrap(), bytes.len());
}

#[test]
fn every_prefix_of_a_hello_asks_for_more() {
    let bytes = rustls_hello("api.payments.example");
    for cut in 0..bytes.len() {
        match server_name(&bytes[..cut]) {
            Err(SniError::Incomplete { needed }) => {
                assert!(needed > cut && needed <= bytes.len(), "cut {cut}")
            }
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

#[test]
fn hand_built_hellos() {
    let one = hello(&[(0, sni_ext(&[(0, b"pay.example.")]))]);
    assert_eq!(server_name(&one).unwrap(), "pay.example");
    let other_first = hello(&[(10, vec![0, 2, 0, 29]), (0, sni_ext(&[(0, b"a.b")]))]);
    assert_eq!(server_name(&other_first).unwrap(), "a.b");

    let cases: &[(Vec<u8>, SniError)] = &[
        (hello(&[]), SniError::Missing),
        (hello(&[(10, vec![0, 2, 0, 29])]), SniError::Missing),
        (
            hello(&[
                (0, sni_ext(&[(0, b"a.example")])),
                (0, sni_ext(&[(0, b"b.example")])),
            ]),
            SniError::Malformed("server_name twice"),
        ),
        (
            hello(&[(0, sni_ext(&[(0, b"a.example"), (0, b"b.example")]))]),
            SniError::Malformed("two host names"),
        ),
        (
            hello(&[(0, sni_ext(&[(0, b"10.0.0.1")]))]),
            SniError::BadName,
        ),
        (hello(&[(0, sni_ext(&[(0, b"::1")]))]), SniError::BadName),
        (hello(&[(0, sni_ext(&[(0, b"a..b")]))]), SniError::BadName),
        (hello(&[(0, sni_ext(&[(0, b"-a.b")]))]), SniError::BadName),
        (hello(&[(0, sni_ext(&[(0, b"a b")]))]), SniError::BadName),
        (hello(&[(0, sni_ext(&[(0, b"")]))]), SniError::BadName),
        (
            hello(&[(0, sni_ext(&[(0, "é.example".as_bytes())]))]),
            SniError::BadName,
        ),
        (hello(&[(0, sni_ext(&[(1, b"x")]))]), SniError::Missing),
        (
            hello(&[
                (0, sni_ext(&[(0, b"public.example")])),
                (0xfe0d, vec![0; 8]),
            ]),
            SniError::Encrypted,
        ),
        (
            hello(&[(0, vec![0, 9, 0])]),
            SniError::Malformed("server name list"),
        ),
        (b"GET / HTTP/1.1\r\n".to_vec(), SniError::NotTls),
        (vec![0x16, 0x02, 0, 0, 1, 1], SniError::NotTls),
        (
            vec![0x16, 0x03, 1, 0, 0],
            SniError::Malformed("record length"),
        ),
        (
            vec![0x16, 0x03, 1, 0x40, 1],
            SniError::Malformed("record length"),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(server_name(bytes).as_ref(), Err(want), "{bytes:02x?}");
    }
}

#[test]
fn a_hello_longer_than_its_record_is_fragmented() {
    let mut bytes = hello(&[(0, sni_ext(&[(0, b"a.example")]))]);
    // Claim a handshake longer than the record carries.
    bytes[7] = bytes[7].wrapping_add(40);
    assert_eq!(server_name(&bytes), Err(SniError::Fragmented));
}

#[test]
fn lengths_that_overrun_are_malformed_not_panics() {
    let good = hello(&[(0, sni_ext(&[(0, b"a.example")]))]);
    for i in 9..good.len() {
        for v in [0x00, 0xff] {
            let mut bytes = good.clone();
            bytes[i] = v;
            // Any answer but a panic; a name only if it is a valid one.
            if let Ok(name) = server_name(&bytes) {
                assert!(valid_host(name.as_bytes()).is_some(), "{name:?}");
            }
        }
    }
}

#[test]
fn host_names() {
    assert_eq!(
        valid_host(b"Api.Example.COM").as_deref(),
        Some("api.example.com")
    );
    assert_eq!(valid_host(b"x_y.example").as_deref(), Some("x_y.example"));
    assert_eq!(valid_host(b"1.2.3.4"), None);
    assert_eq!(valid_host(&[b'a'; 64]), None);
    let long = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(62),
    ]
    .join(".");
    assert_eq!(long.len(), 254);
    assert_eq!(valid_host(long.as_bytes()), None);
    assert!(valid_host(&long.as_bytes()[1..]).is_some());
}
