//! TLS uploads with real peers: `vigil receive` serving wss:// and a real Prometheus serving
//! https://, both with a self-signed certificate the sink trusts through `ca_file`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::upload::{config, wait_lines, Receiver};

const T: Duration = Duration::from_secs(30);

/// A self-signed certificate for `localhost` and 127.0.0.1: (cert.pem, key.pem) in `dir`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("certificate generation");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// A minimal HTTPS GET (HTTP/1.0, so the body is never chunked) trusting only `ca`.
pub fn https_get(addr: &str, path: &str, ca: &Path) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let ip = addr.rsplit_once(':').unwrap().0.to_string();
    let name = rustls::pki_types::ServerName::try_from(ip).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").and_then(|_| s.flush()).is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    // A server that closes without close_notify ends the read with an error; keep what came.
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}

fn with_ca(cfg: String, ca: &Path) -> String {
    cfg.replace(
        "flush_interval_secs = 0.3\n",
        &format!("flush_interval_secs = 0.3\nca_file = \"{}\"\n", ca.display()),
    )
}

#[test]
fn a_wss_sink_delivers_to_a_tls_receiver_it_trusts_and_refuses_one_it_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let r = Receiver::start_with(
        "127.0.0.1:0",
        &dir.path().join("out.jsonl"),
        &dir.path().join("recv.log"),
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let port = r.addr.rsplit_once(':').unwrap().1;
    // A host name, so the certificate's DNS name is checked (resolved by hickory, /etc/hosts).
    let url = format!("wss://localhost:{port}/v1/ingest");

    // Without ca_file the self-signed certificate is not trusted: no connection, batches kept.
    let untrusting = Agent::start(&config(&url), &[]);
    let s = untrusting.wait_status(T, "a refused TLS handshake", |s| {
        s["uploads"][0]["last_error"].is_string() && s["uploads"][0]["spooled_batches"].as_u64() >= Some(2)
    });
    // The refusal is rustls rejecting this certificate's issuer, not a TLS setup that failed
    // before any handshake (an empty system trust store also mentions certificates).
    let err = s["uploads"][0]["last_error"].as_str().unwrap().to_string();
    assert!(err.contains("invalid peer certificate") && err.contains("UnknownIssuer"), "{err}");
    assert!(!err.contains("no trusted CA"), "{err}");
    assert_eq!(s["uploads"][0]["connected"], false);
    assert!(r.lines().is_empty(), "nothing may arrive over an unverified connection");
    drop(untrusting);

    let agent = Agent::start(&with_ca(config(&url), &cert), &[]);
    let lines = wait_lines(&r, 2);
    assert_eq!((lines[0]["seq"].as_u64(), lines[1]["seq"].as_u64()), (Some(1), Some(2)));
    assert!(lines[0]["samples"].as_array().unwrap().iter().any(|s| s["name"] == "load_1"));
    let s = agent.wait_status(T, "connected", |s| s["uploads"][0]["connected"] == true);
    assert!(s["uploads"][0]["last_error"].is_null(), "{s}");
}

#[test]
fn a_ca_file_that_cannot_be_read_is_reported_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let agent = Agent::start(&with_ca(config("wss://127.0.0.1:9/v1/ingest"), &missing), &[]);
    let s = agent.wait_status(T, "a ca_file error", |s| s["uploads"][0]["last_error"].is_string());
    let err = s["uploads"][0]["last_error"].as_str().unwrap();
    assert!(err.contains("ca_file") && err.contains("missing-ca.pem"), "{err}");
}

#[test]
fn remote_write_over_https_reaches_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let prom = Prometheus::start_tls(
        "global:\n  scrape_interval: 1h\n",
        &["--web.enable-remote-write-receiver"],
        Some((&cert, &key)),
    );
    let cfg = format!(
        "{}\n[agent]\nhostname = \"tls-host\"\n[collectors]\ninterval_secs = 0.3\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"prom\"\ntype = \"remote_write\"\nurl = \"https://{}/api/v1/write\"\n\
         flush_interval_secs = 0.3\nca_file = \"{}\"\n",
        fast_config(""),
        prom.addr,
        cert.display()
    );
    let agent = Agent::start(&cfg, &[]);
    let t0 = Instant::now();
    loop {
        let v = prom.query("load_1");
        let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
        if let Some(series) = r.first() {
            assert_eq!(series["metric"]["host"], "tls-host");
            break;
        }
        assert!(
            t0.elapsed() < T,
            "load_1 never reached Prometheus over https; agent log:\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Plain HTTP to the same port is not served (Go's TLS server answers "400 … HTTP
    // request to an HTTPS server", whatever the HTTP version asked): the data went over TLS.
    let mut plain = std::net::TcpStream::connect(&prom.addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(plain, "GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let code = answer.strip_prefix("HTTP/").and_then(|r| r.split_whitespace().nth(1));
    assert!(code.is_none() || code == Some("400"), "plain HTTP got {code:?}: {answer}");
    assert!(!answer.contains("Ready"), "plain HTTP was served: {answer}");
    // And the same request over TLS is.
    let (code, body) = https_get(&prom.addr, "/-/ready", &cert);
    assert_eq!(code, 200);
    assert!(body.contains("Ready"), "{body}");
}
