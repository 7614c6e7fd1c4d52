//! TLS for the upload sinks (`wss://`, `https://`): rustls with ring as the crypto provider.
//!
//! Trusted roots are the system's CA store (read once, through rustls-native-certs: the
//! files of `SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's bundle, no OpenSSL) plus the
//! sink's `ca_file`, for receivers with a private CA or a self-signed certificate. Only
//! HTTP/1.1 is offered in ALPN: the WebSocket upgrade needs it, and one batch at a time does
//! not gain from HTTP/2.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The crypto provider every TLS config of vigil is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's CA certificates, loaded once per process. Certificates that do not parse
/// are skipped; the problems are returned for the log.
fn system_roots() -> &'static (Vec<CertificateDer<'static>>, Vec<String>) {
    static ROOTS: OnceLock<(Vec<CertificateDer<'static>>, Vec<String>)> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        (found.certs, found.errors.iter().map(|e| e.to_string()).collect())
    })
}

/// The client TLS settings of a sink: system roots plus the PEM certificates of `ca_file`
/// (when not empty). Fails when `ca_file` cannot be read or holds no certificate, or when no
/// trusted root is left at all.
pub fn client_config(ca_file: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let (system, problems) = system_roots();
    let (added, _ignored) = roots.add_parsable_certificates(system.iter().cloned());
    if !ca_file.is_empty() {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("ca_file {ca_file}: {e}"))? {
            let cert = cert.map_err(|e| format!("ca_file {ca_file}: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca_file {ca_file}: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("ca_file {ca_file}: no PEM certificate in it"));
        }
    }
    if roots.is_empty() {
        let why = problems.first().map(|p| format!(" ({p})")).unwrap_or_default();
        return Err(format!(
            "no trusted CA certificate: the system store is empty{why}; install ca-certificates or set ca_file"
        ));
    }
    tracing::debug!(system_roots = added, ca_file, "TLS roots loaded.");
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(missing.to_str().unwrap()).unwrap_err();
        assert!(e.contains("nope.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(empty.to_str().unwrap()).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
