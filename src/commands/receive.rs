//! `vigil receive --listen ADDR --out FILE`: the server side of the native protocol.
//!
//! WebSocket at `/v1/ingest`. Every binary message is a MessagePack `Batch`; a batch whose
//! `(agent_id, sink, seq)` was not accepted before is appended to FILE as one JSON line (and
//! synced) *before* it is acknowledged, so an ack always means "stored". Duplicates
//! (a client resending after a reconnect) are acknowledged without being written again.
//! On start, FILE is read back to learn the highest seq per agent, so a restarted receiver
//! still de-duplicates.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;
use futures_util::StreamExt;
use vigil_actors::upload::protocol::{self, Batch, ServerMsg};

use crate::auth::Token;

struct Store {
    out: File,
    /// Highest accepted seq per (agent_id, sink): a sink's batches arrive in order.
    seen: HashMap<(String, String), u64>,
    path: PathBuf,
}

impl Store {
    /// Opens FILE for appending after reading back the highest seq of every (agent, sink).
    /// Lines that do not parse (not JSON, not UTF-8) are skipped with a warning. A last line
    /// without its newline (a write cut short by a crash) is cut off, its bytes kept in
    /// `FILE.torn` for inspection, so the next batch starts on a line of its own; that batch
    /// was never acknowledged, so its sink sends it again.
    fn open(path: &Path) -> anyhow::Result<Store> {
        let mut seen = HashMap::new();
        if let Ok(f) = File::open(path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let torn = len > 0 && {
                let mut last = [0u8];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut last, len - 1).is_ok() && last[0] != b'\n'
            };
            let mut offset = 0u64;
            let mut last_start = 0u64;
            for (n, line) in BufReader::new(f).split(b'\n').enumerate() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                last_start = offset;
                offset += line.len() as u64 + 1;
                if torn && offset > len {
                    break; // the torn last line: never acknowledged, so never counted
                }
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    tracing::warn!(line = n + 1, "Ignoring an unreadable line of the output file.");
                    continue;
                };
                if let (Some(a), Some(s)) = (v["agent_id"].as_str(), v["seq"].as_u64()) {
                    let sink = v["sink"].as_str().unwrap_or_default().to_string();
                    let e = seen.entry((a.to_string(), sink)).or_insert(0);
                    *e = (*e).max(s);
                }
            }
            if torn {
                repair_torn_tail(path, last_start)?;
            }
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Store { out, seen, path: path.to_path_buf() })
    }

    /// Stores `b` unless it is a duplicate; true when written.
    fn accept(&mut self, b: &Batch) -> std::io::Result<bool> {
        let key = (b.agent_id.clone(), b.sink.clone());
        if self.seen.get(&key).is_some_and(|&s| b.seq <= s) {
            return Ok(false);
        }
        /// The output line, serialised straight from the batch (CONTRACT §7 key order).
        #[derive(serde::Serialize)]
        struct Line<'a> {
            agent_id: &'a str,
            sink: &'a str,
            seq: u64,
            host: &'a str,
            samples: &'a [vigil_actors::upload::protocol::WireSample],
            crash_reports: &'a [serde_json::Value],
        }
        let line = Line {
            agent_id: &b.agent_id,
            sink: &b.sink,
            seq: b.seq,
            host: &b.host,
            samples: &b.samples,
            crash_reports: &b.crash_reports,
        };
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        // On disk before the ack: an ack must survive a crash of this machine.
        self.out.sync_data()?;
        self.seen.insert(key, b.seq);
        Ok(true)
    }
}

/// Cuts FILE at `at` (the start of a last line that has no newline), keeping the cut bytes in
/// `FILE.torn` (appended), and says so in the log.
fn repair_torn_tail(path: &Path, at: u64) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let tail = &data[at as usize..];
    let keep = path.with_extension(match path.extension() {
        Some(e) => format!("{}.torn", e.to_string_lossy()),
        None => "torn".into(),
    });
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&keep)
        .and_then(|mut f| f.write_all(tail).and_then(|_| f.sync_data()))
        .with_context(|| format!("cannot save the torn last line to {}", keep.display()))?;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.set_len(at).and_then(|_| f.sync_data()).with_context(|| format!("cannot cut {}", path.display()))?;
    tracing::warn!(
        file = %path.display(),
        bytes = tail.len(),
        kept_in = %keep.display(),
        "The output file ended in a torn line (a write cut short); it was cut off. Its batch was never acknowledged and will be sent again."
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// IP:port to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// File the accepted batches are appended to.
    #[arg(long)]
    out: PathBuf,
    /// Require `Authorization: Bearer <token in this file>` on every connection and check-in
    /// (with --checkin-dir, the token of DIR/token is accepted too).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve TLS (wss://) with this PEM certificate chain; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also serve check-ins (POST /v1/checkin, GET /v1/modules/VERSION) from the files of
    /// this directory (docs/checkins.md).
    #[arg(long)]
    checkin_dir: Option<PathBuf>,
}

pub fn main(args: Args) -> ExitCode {
    crate::logging::init_stderr("info");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil receive: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The server side of TLS: the certificate chain and key of `--tls-cert`/`--tls-key`.
fn server_tls(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no PEM certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(vigil_actors::upload::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn run(args: Args) -> anyhow::Result<()> {
    let Args { listen, out, token_file, tls_cert, tls_key, checkin_dir } = args;
    let checkin =
        checkin_dir.clone().map(|d| web::Data::new(crate::commands::checkin_server::CheckinDir::new(d)));
    let tls = match (&tls_cert, &tls_key) {
        (Some(c), Some(k)) => Some(server_tls(c, k)?),
        _ => None,
    };
    let token = match &token_file {
        None => None,
        Some(f) => {
            let t = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
            let t = t.trim().to_string();
            anyhow::ensure!(!t.is_empty(), "{} is empty: refusing to accept every connection", f.display());
            Some(t)
        }
    };
    let token = web::Data::new(Token { fixed: token, checkin_dir: checkin_dir.clone() });
    let store = web::Data::new(Mutex::new(Store::open(&out)?));
    tracing::info!(out = %out.display(), agents = store.lock().map(|s| s.seen.len()).unwrap_or(0), "Output file opened.");
    let system = actix_rt::System::new();
    system.block_on(async move {
        let server = HttpServer::new(move || {
            let checkin = checkin.clone();
            App::new()
                .app_data(store.clone())
                .app_data(token.clone())
                .route("/v1/ingest", web::get().to(ingest))
                .configure(|c| {
                    if let Some(dir) = checkin {
                        crate::commands::checkin_server::routes(c, dir)
                    }
                })
        })
        .workers(1);
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let server = match tls {
            Some(tls) => server.bind_rustls_0_23(listen, tls),
            None => server.bind(listen),
        }
        .with_context(|| format!("cannot listen on {listen}"))?;
        for a in server.addrs() {
            tracing::info!(addr = %a, "Receiving at {scheme}://{a}/v1/ingest.");
            if let Some(d) = &checkin_dir {
                let http = if scheme == "wss" { "https" } else { "http" };
                tracing::info!(dir = %d.display(), "Check-ins at {http}://{a}/v1/checkin.");
            }
        }
        server.run().await.context("server failed")
    })
}

async fn ingest(
    req: HttpRequest,
    body: web::Payload,
    store: web::Data<Mutex<Store>>,
    token: web::Data<Token>,
) -> Result<HttpResponse, actix_web::Error> {
    if !token.allows(&req) {
        tracing::warn!(peer = ?req.peer_addr(), "Connection without the right bearer token refused.");
        return Ok(HttpResponse::Unauthorized().finish());
    }
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    // A sink that names itself learns the highest seq stored for it, before anything else.
    let hello = match (header(protocol::AGENT_HEADER), header(protocol::SINK_HEADER)) {
        (Some(agent), Some(sink)) => {
            let high = store.lock().map(|s| s.seen.get(&(agent, sink)).copied().unwrap_or(0)).unwrap_or(0);
            Some(high)
        }
        _ => None,
    };
    let (mut resp, mut session, stream) = actix_ws::handle(&req, body)?;
    if let Some(high) = hello {
        resp.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(protocol::HELLO_HEADER),
            actix_web::http::header::HeaderValue::from_static("1"),
        );
        if session.binary(protocol::encode(&ServerMsg::Hello { high_seq: high })).await.is_err() {
            return Ok(resp);
        }
    }
    let mut stream = stream
        .max_frame_size(64 * 1024 * 1024)
        .aggregate_continuations()
        .max_continuation_size(64 * 1024 * 1024);
    let peer = req.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    actix_rt::spawn(async move {
        while let Some(msg) = stream.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "WebSocket error; closing.");
                    break;
                }
            };
            match msg {
                actix_ws::AggregatedMessage::Binary(bytes) => {
                    let batch: Batch = match protocol::decode(&bytes) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(peer = %peer, error = %e, "Not a batch; ignored.");
                            continue;
                        }
                    };
                    let stored = match store.lock() {
                        Ok(mut s) => s.accept(&batch).map_err(|e| (e, s.path.clone())),
                        Err(_) => break,
                    };
                    match stored {
                        Ok(new) => {
                            if !new {
                                tracing::debug!(agent = %batch.agent_id, seq = batch.seq, "Duplicate batch acknowledged.");
                            }
                            if session
                                .binary(protocol::encode(&ServerMsg::Ack { seq: batch.seq }))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err((e, path)) => {
                            // Not stored, so not acknowledged: the client keeps it and resends.
                            tracing::error!(error = %e, file = %path.display(), "Cannot store a batch.");
                            break;
                        }
                    }
                }
                actix_ws::AggregatedMessage::Ping(p) => match session.pong(&p).await {
                    Ok(()) => {}
                    Err(_) => break,
                },
                actix_ws::AggregatedMessage::Close(_) => break,
                _ => {}
            }
        }
        let _ = session.close(None).await;
    });
    Ok(resp)
}
