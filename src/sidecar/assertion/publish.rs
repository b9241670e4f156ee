//! What the app reads to verify: the HMAC key file (mode 0400) or the JWKS
//! of the public keys (mode 0444), each replaced atomically so a reader
//! never sees half a file.

use super::keys::SigningKey;
use super::AssertionError;
use std::io::Write;
use std::path::Path;

/// The key file's text: one `<kid> <base64url key>` per line, newest first.
pub(super) fn key_file_text(keys: &[&SigningKey]) -> String {
    keys.iter().filter_map(|k| k.secret_line()).collect()
}

/// `{"keys": [...]}`, newest first (RFC 7517 section 5).
pub(super) fn jwks_json(keys: &[&SigningKey]) -> String {
    let keys: Vec<_> = keys.iter().filter_map(|k| k.public_jwk()).collect();
    let doc = serde_json::json!({ "keys": keys });
    // A Value of strings only: serialising it cannot fail.
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// Replaces `file` with `text`: a temporary file beside it (mode `mode`
/// set explicitly, whatever the umask), fsync, rename.
pub(super) fn write_atomic(file: &Path, text: &str, mode: u32) -> Result<(), AssertionError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| AssertionError::Write {
        file: file.display().to_string(),
        source,
    };
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = file.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600 & mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    // No fsync: the rename makes the switch atomic for readers, and after a
    // crash the sidecar writes new keys at start anyway, so durability buys
    // nothing but a disk flush in the start.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)
}
