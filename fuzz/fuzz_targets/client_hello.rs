//! The egress ClientHello parser: never a panic, never a read past the
//! record; a name it returns is a valid lowercase host name that is in the
//! input; an incomplete record asks for exactly the record's length; and
//! every strict prefix of a record that gave a name asks for more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::egress::sni::{record_len, server_name, valid_host, SniError, MAX_RECORD, RECORD_HEADER};

fuzz_target!(|data: &[u8]| {
    let first = server_name(data);
    assert_eq!(first, server_name(data), "deterministic");
    match first {
        Ok(name) => {
            assert_eq!(valid_host(name.as_bytes()).as_deref(), Some(name.as_str()));
            let lower = data.to_ascii_lowercase();
            assert!(
                lower.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name:?} is not in the input"
            );
            let total = record_len(data).expect("a name comes from a record");
            assert!(total <= data.len() && total <= RECORD_HEADER + MAX_RECORD);
            // Bytes after the record are not looked at.
            let mut longer = data[..total].to_vec();
            longer.extend_from_slice(b"\x00\xff trailing");
            assert_eq!(server_name(&longer).as_deref(), Ok(name.as_str()));
            for cut in [0, 1, RECORD_HEADER, total / 2, total - 1] {
                if cut < total {
                    assert!(
                        matches!(server_name(&data[..cut]), Err(SniError::Incomplete { .. })),
                        "prefix {cut} of {total}"
                    );
                }
            }
        }
        Err(SniError::Incomplete { needed }) => {
            assert!(needed > data.len() && needed <= RECORD_HEADER + MAX_RECORD);
        }
        Err(_) => {}
    }
});
