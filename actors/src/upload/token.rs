//! The upload token store: the bearer token a check-in delivered, kept in
//! `DATA_DIR/upload.token` (mode 0600). The check-in actor writes it and announces it
//! ([`TokenChanged`]); the `vigil` sinks read it at every connection, in place of their
//! `token_file`. It lives with the sinks, and the check-in side uses it from here, so neither
//! reaches into the other.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use actix::prelude::*;

/// The upload token a check-in delivered, in the data dir.
pub const TOKEN_FILE: &str = "upload.token";

/// The uploaders' cue: a new upload token is in `DATA_DIR/upload.token`; reconnect with it.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct TokenChanged;

/// The longest upload token accepted from a check-in.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Whether `t` can be an upload token (it goes into an `Authorization` header): 1 to
/// [`MAX_TOKEN_BYTES`] bytes of visible ASCII, no spaces or control characters.
pub fn check_token(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_TOKEN_BYTES {
        return Err(format!("a token must have 1 to {MAX_TOKEN_BYTES} bytes, this one has {}", t.len()));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token must be visible ASCII characters without spaces or control characters".into());
    }
    Ok(())
}

/// The upload token a check-in stored, if any and usable (it overrides the `token_file` of
/// the `vigil` sinks). One that cannot be a bearer token is ignored, with a warning.
pub fn stored_token(data_dir: &Path) -> Option<String> {
    let path = data_dir.join(TOKEN_FILE);
    let t = std::fs::read_to_string(&path).ok()?;
    let t = t.trim();
    match check_token(t) {
        Ok(()) => Some(t.to_string()),
        Err(_) if t.is_empty() => None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "The stored upload token is unusable; ignoring it.");
            None
        }
    }
}

/// Stores `token` with mode 0600 (a temporary file renamed into place).
pub fn store_token(data_dir: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = data_dir.join(format!(".{TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(TOKEN_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_token_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(stored_token(dir.path()), None);
        store_token(dir.path(), "abc").unwrap();
        store_token(dir.path(), "def").unwrap();
        assert_eq!(stored_token(dir.path()).as_deref(), Some("def"));
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tokens_that_cannot_be_a_bearer_header_are_refused_and_ignored() {
        assert_eq!(check_token("abc-DEF_123.~+/="), Ok(()));
        assert!(check_token(&"x".repeat(MAX_TOKEN_BYTES)).is_ok());
        for bad in ["", "a b", "a\nb", "a\rb", "a\tb", "é", "a\u{7f}"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
        assert!(check_token(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        // A bad stored token (written by an older version, or by hand) is not used.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "good\nsecond line\n").unwrap();
        assert_eq!(stored_token(dir.path()), None);
        std::fs::write(dir.path().join(TOKEN_FILE), "good\n").unwrap();
        assert_eq!(stored_token(dir.path()).as_deref(), Some("good"));
    }
}
