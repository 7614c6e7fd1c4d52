//! The bearer-token check of vigil's HTTP servers: the status endpoint's `status.token_file`
//! and `vigil receive --token-file` (with the token a check-in directory rotates).

use std::path::PathBuf;

use actix_web::HttpRequest;

/// Compares a presented token with the expected one in time independent of where they differ.
pub fn token_matches(got: &str, want: &str) -> bool {
    let (a, b) = (got.as_bytes(), want.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The bearer tokens accepted, when `--token-file` is given: its token, and the token the
/// check-in directory hands out (`DIR/token`, read at every request, so a rotation through
/// check-ins is accepted at once).
pub struct Token {
    pub fixed: Option<String>,
    pub checkin_dir: Option<PathBuf>,
}

impl Token {
    /// Whether `req` may pass: always without `--token-file`; else when its bearer token is
    /// the `--token-file` token or the current `DIR/token`.
    pub fn allows(&self, req: &HttpRequest) -> bool {
        let Some(fixed) = &self.fixed else { return true };
        let got = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if token_matches(got, fixed) {
            return true;
        }
        let rotated = self
            .checkin_dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("token")).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        rotated.is_some_and(|t| token_matches(got, &t))
    }
}
