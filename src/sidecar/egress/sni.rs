//! The server name of a TLS ClientHello, read from bytes peeked off the
//! app's connection (RFC 8446 §4.1.2, RFC 6066 §3). Bounded: one TLS
//! record (at most 2^14 bytes of payload), every length checked against
//! what encloses it, nothing allocated but the name. A ClientHello split
//! over several records is refused rather than reassembled: clients send
//! it in one record, and a reassembly buffer would be one more thing an
//! app can make us hold.

/// The TLS record header: type, legacy version, length.
pub const RECORD_HEADER: usize = 5;
/// The largest record payload a TLS 1.2/1.3 peer may send (RFC 8446 §5.1).
pub const MAX_RECORD: usize = 1 << 14;
/// Largest DNS name in text form (RFC 1035, without the final dot).
const MAX_NAME: usize = 253;

const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
/// encrypted_client_hello (draft-ietf-tls-esni): the real name is inside.
const EXT_ECH: u16 = 0xfe0d;
const NAME_TYPE_HOST: u8 = 0x00;

/// Why no server name could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The first bytes are not a TLS handshake record.
    #[error("not a TLS handshake")]
    NotTls,
    /// More bytes are needed: the whole record is `needed` bytes long.
    #[error("incomplete ClientHello ({needed} bytes needed)")]
    Incomplete { needed: usize },
    /// The ClientHello does not fit in its first record.
    #[error("ClientHello split over several records")]
    Fragmented,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// A valid ClientHello without a server_name extension.
    #[error("ClientHello carries no server name")]
    Missing,
    /// The server name is not a DNS host name (an IP literal, bad bytes).
    #[error("server name is not a DNS host name")]
    BadName,
    /// Encrypted ClientHello: the SNI in clear is only the provider's
    /// public name, the one the connection is for is hidden; allowing it
    /// would allow everything behind that provider.
    #[error("encrypted ClientHello hides the server name")]
    Encrypted,
}

impl SniError {
    pub fn label(self) -> &'static str {
        match self {
            SniError::NotTls => "not_tls",
            SniError::Incomplete { .. } => "incomplete",
            SniError::Fragmented => "fragmented",
            SniError::Malformed(_) => "malformed",
            SniError::Missing => "no_sni",
            SniError::BadName => "bad_sni",
            SniError::Encrypted => "encrypted_client_hello",
        }
    }
}

/// A cursor over a byte slice that never reads past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if self.buf.len() < n {
            return Err(SniError::Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a length prefix of `len_bytes` (1 or 2) bytes.
    fn vec(&mut self, len_bytes: usize, what: &'static str) -> Result<Reader<'a>, SniError> {
        let len = match len_bytes {
            1 => usize::from(self.u8(what)?),
            _ => usize::from(self.u16(what)?),
        };
        Ok(Reader {
            buf: self.take(len, what)?,
        })
    }
}

/// The record length of a TLS handshake record starting `buf`, once its
/// header is there: how many bytes to peek for the whole record.
pub fn record_len(buf: &[u8]) -> Result<usize, SniError> {
    if buf.is_empty() {
        return Err(SniError::Incomplete {
            needed: RECORD_HEADER,
        });
    }
    if buf[0] != CONTENT_HANDSHAKE {
        return Err(SniError::NotTls);
    }
    if buf.len() < RECORD_HEADER {
        return Err(SniError::Incomplete {
            needed: RECORD_HEADER,
        });
    }
    // Legacy record version: 0x0301 to 0x0303 in practice; 0x03xx always.
    if buf[1] != 0x03 {
        return Err(SniError::NotTls);
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if len == 0 || len > MAX_RECORD {
        return Err(SniError::Malformed("record length"));
    }
    Ok(RECORD_HEADER + len)
}

/// The server name of the ClientHello at the start of `buf`, lowercased.
pub fn server_name(buf: &[u8]) -> Result<String, SniError> {
    let total = record_len(buf)?;
    if buf.len() < total {
        return Err(SniError::Incomplete { needed: total });
    }
    let mut record = Reader {
        buf: &buf[RECORD_HEADER..total],
    };
    if record.u8("handshake type")? != HANDSHAKE_CLIENT_HELLO {
        return Err(SniError::Malformed("not a ClientHello"));
    }
    let len = record.take(3, "handshake length")?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    if len > record.buf.len() {
        return Err(SniError::Fragmented);
    }
    let mut hello = Reader {
        buf: record.take(len, "handshake length")?,
    };
    hello.take(2, "legacy version")?;
    hello.take(32, "random")?;
    if hello.vec(1, "session id")?.buf.len() > 32 {
        return Err(SniError::Malformed("session id"));
    }
    let suites = hello.vec(2, "cipher suites")?;
    if suites.buf.is_empty() || suites.buf.len() % 2 != 0 {
        return Err(SniError::Malformed("cipher suites"));
    }
    if hello.vec(1, "compression methods")?.buf.is_empty() {
        return Err(SniError::Malformed("compression methods"));
    }
    if hello.buf.is_empty() {
        // No extensions at all (a TLS 1.0-era hello): no name.
        return Err(SniError::Missing);
    }
    let mut extensions = hello.vec(2, "extensions")?;
    if !hello.buf.is_empty() {
        return Err(SniError::Malformed("bytes after extensions"));
    }
    let mut found = None;
    while !extensions.buf.is_empty() {
        let kind = extensions.u16("extension type")?;
        let body = extensions.vec(2, "extension length")?;
        if kind == EXT_ECH {
            return Err(SniError::Encrypted);
        }
        if kind == EXT_SERVER_NAME {
            // RFC 8446 §4.2: an extension type appears at most once.
            if found.is_some() {
                return Err(SniError::Malformed("server_name twice"));
            }
            found = Some(host_name(body)?);
        }
    }
    found.ok_or(SniError::Missing)
}

/// The one `host_name` of a server_name extension body.
fn host_name(mut body: Reader<'_>) -> Result<String, SniError> {
    let mut list = body.vec(2, "server name list")?;
    if !body.buf.is_empty() {
        return Err(SniError::Malformed("bytes after server name list"));
    }
    let mut name = None;
    while !list.buf.is_empty() {
        let kind = list.u8("name type")?;
        let value = list.vec(2, "name length")?;
        // RFC 6066 §3: one name per type.
        if kind == NAME_TYPE_HOST {
            if name.is_some() {
                return Err(SniError::Malformed("two host names"));
            }
            name = Some(value.buf);
        }
    }
    let name = name.ok_or(SniError::Missing)?;
    valid_host(name).ok_or(SniError::BadName)
}

/// `name` as a lowercased DNS host name (letters, digits, `-`, `_` and
/// dots, labels of 1 to 63 bytes, one trailing dot dropped), never an IP
/// literal (RFC 6066 forbids those in SNI).
pub fn valid_host(name: &[u8]) -> Option<String> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    for label in name.split(|&b| b == b'.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && label[0] != b'-'
            && label[label.len() - 1] != b'-';
        if !ok {
            return None;
        }
    }
    let text = std::str::from_utf8(name).ok()?;
    // All digits and dots: an IPv4 literal in some notation, not a name.
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
