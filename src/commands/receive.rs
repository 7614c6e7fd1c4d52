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
use std::rc::Rc;
use std::sync::Mutex;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;
use futures_util::StreamExt;
use vigil_actors::upload::columns::{self, ColumnsError, Decoded, SeriesTable};
use vigil_actors::upload::protocol::{self, ServerMsg};

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

    /// Stores the batch `head` names unless it is a duplicate; true when written. Its line
    /// (CONTRACT §7, keys in that order) is built whole before it is written: `samples` writes
    /// the JSON array's elements, and a batch whose samples turn out damaged writes nothing.
    fn accept(
        &mut self,
        head: &Head,
        samples: impl FnOnce(&mut Vec<u8>) -> Result<(), ColumnsError>,
    ) -> Result<bool, StoreError> {
        if self.seen.get(&(head.agent_id.to_string(), head.sink.to_string())).is_some_and(|&s| head.seq <= s)
        {
            return Ok(false);
        }
        let mut line = Vec::with_capacity(4096);
        line.extend_from_slice(br#"{"agent_id":"#);
        json(&mut line, head.agent_id);
        line.extend_from_slice(br#","sink":"#);
        json(&mut line, head.sink);
        line.extend_from_slice(br#","seq":"#);
        json(&mut line, &head.seq);
        line.extend_from_slice(br#","host":"#);
        json(&mut line, head.host);
        line.extend_from_slice(br#","samples":["#);
        samples(&mut line).map_err(StoreError::Batch)?;
        line.extend_from_slice(br#"],"crash_reports":"#);
        json(&mut line, head.crash_reports);
        line.extend_from_slice(b"}\n");
        self.out.write_all(&line).map_err(StoreError::Io)?;
        // On disk before the ack: an ack must survive a crash of this machine.
        self.out.sync_data().map_err(StoreError::Io)?;
        self.seen.insert((head.agent_id.to_string(), head.sink.to_string()), head.seq);
        Ok(true)
    }
}

/// What a batch's line starts and ends with.
struct Head<'a> {
    agent_id: &'a str,
    sink: &'a str,
    seq: u64,
    host: &'a str,
    crash_reports: &'a [serde_json::Value],
}

enum StoreError {
    /// The batch's columns do not decode.
    Batch(ColumnsError),
    Io(std::io::Error),
}

/// Appends `v` in serde_json's compact form, as the rest of the line.
fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Strings, numbers, maps of strings and JSON values always serialise.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// A sample's JSON object up to its timestamp: `{"name":…,"tags":{…},"ts_ms":`. Made once
/// per series of a connection (columns), or once per sample (the samples form).
fn sample_prefix(name: &str, tags: &std::collections::BTreeMap<String, String>) -> Rc<[u8]> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#"{"name":"#);
    json(&mut out, name);
    out.extend_from_slice(br#","tags":"#);
    json(&mut out, tags);
    out.extend_from_slice(br#","ts_ms":"#);
    out.into()
}

/// Appends one sample: its prefix, then `TS,"value":VALUE}` (a non-finite value is `null`, as
/// serde_json writes it).
fn write_sample(out: &mut Vec<u8>, first: bool, prefix: &[u8], ts_ms: i64, value: f64) {
    if !first {
        out.push(b',');
    }
    out.extend_from_slice(prefix);
    json(out, &ts_ms);
    out.extend_from_slice(br#","value":"#);
    json(out, &value);
    out.push(b'}');
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

/// Why a message was not stored.
enum Refused {
    /// Its columns or refs do not decode (the connection is closed).
    Batch(ColumnsError),
    Io(std::io::Error, PathBuf),
    Poisoned,
}

/// Stores a decoded message of a connection whose series are `table`: its seq, and whether it
/// was new (not a duplicate). The series a message defines are taken even when it is a
/// duplicate, since the sink counts them as sent.
fn store_message(
    store: &Mutex<Store>,
    decoded: &Decoded,
    table: &mut SeriesTable<Rc<[u8]>>,
) -> Result<(u64, bool), Refused> {
    enum Body<'a> {
        Samples(&'a [vigil_actors::upload::protocol::WireSample]),
        Columns(&'a columns::Packed, Vec<Rc<[u8]>>),
    }
    let (head, body) = match decoded {
        Decoded::Samples(b) => (
            Head {
                agent_id: &b.agent_id,
                sink: &b.sink,
                seq: b.seq,
                host: &b.host,
                crash_reports: &b.crash_reports,
            },
            Body::Samples(&b.samples),
        ),
        Decoded::Packed(p) => (
            Head {
                agent_id: &p.agent_id,
                sink: &p.sink,
                seq: p.seq,
                host: &p.host,
                crash_reports: &p.crash_reports,
            },
            Body::Columns(
                p,
                table.local(p, |(name, tags)| sample_prefix(name, tags)).map_err(Refused::Batch)?,
            ),
        ),
    };
    let samples = |out: &mut Vec<u8>| match body {
        Body::Columns(p, local) => {
            let mut first = true;
            p.for_each(local.len(), |i, ts, v| {
                write_sample(out, std::mem::take(&mut first), &local[i], ts, v)
            })
        }
        Body::Samples(samples) => {
            for (k, s) in samples.iter().enumerate() {
                write_sample(out, k == 0, &sample_prefix(&s.name, &s.tags), s.ts_ms, s.value);
            }
            Ok(())
        }
    };
    let mut s = store.lock().map_err(|_| Refused::Poisoned)?;
    match s.accept(&head, samples) {
        Ok(new) => Ok((head.seq, new)),
        Err(StoreError::Batch(e)) => Err(Refused::Batch(e)),
        Err(StoreError::Io(e)) => Err(Refused::Io(e, s.path.clone())),
    }
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
    // A sink that offers the columns encoding gets it (an older sink offers nothing and sends
    // the samples form; both forms are read on every connection).
    let columns_offered = req
        .headers()
        .get_all(protocol::ENCODINGS_HEADER)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.trim() == columns::NAME);
    let (mut resp, mut session, stream) = actix_ws::handle(&req, body)?;
    if columns_offered {
        resp.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(protocol::ENCODING_HEADER),
            actix_web::http::header::HeaderValue::from_static(columns::NAME),
        );
    }
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
        // The series this connection's sink defined (columns encoding), rendered as JSON.
        let mut table = SeriesTable::<Rc<[u8]>>::default();
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
                    // A damaged message on a connection that defines series could have
                    // defined some: the connection's table would no longer match the sink's,
                    // so the connection is closed (the sink reconnects and sends it again).
                    let decoded = match columns::decode(&bytes) {
                        Ok(d) => d,
                        Err(e) if columns_offered => {
                            tracing::warn!(peer = %peer, error = %e, "Not a batch; closing the connection.");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(peer = %peer, error = %e, "Not a batch; ignored.");
                            continue;
                        }
                    };
                    match store_message(&store, &decoded, &mut table) {
                        Ok((seq, new)) => {
                            if !new {
                                tracing::debug!(seq, "Duplicate batch acknowledged.");
                            }
                            if session.binary(protocol::encode(&ServerMsg::Ack { seq })).await.is_err() {
                                break;
                            }
                        }
                        Err(Refused::Batch(e)) => {
                            tracing::warn!(peer = %peer, error = %e, "Not a batch; closing the connection.");
                            break;
                        }
                        Err(Refused::Io(e, path)) => {
                            // Not stored, so not acknowledged: the client keeps it and resends.
                            tracing::error!(error = %e, file = %path.display(), "Cannot store a batch.");
                            break;
                        }
                        Err(Refused::Poisoned) => break,
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

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_actors::upload::protocol::{Batch, WireSample};

    /// The line of a batch is the same whichever form it came in (and whatever the connection
    /// defined before), and is what CONTRACT §7 names, key for key, NaN as null.
    #[test]
    fn both_forms_make_the_same_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mutex::new(Store::open(&dir.path().join("out.jsonl")).unwrap());
        let batch = |seq| Batch {
            agent_id: "a".repeat(32),
            sink: "main".into(),
            seq,
            host: "h\"<x>".into(),
            samples: vec![
                WireSample {
                    name: "load_1".into(),
                    tags: Default::default(),
                    ts_ms: 1_700_000_000_000,
                    value: 0.5,
                },
                WireSample {
                    name: "disk_reads_sec".into(),
                    tags: [("device".to_string(), "sda".to_string())].into_iter().collect(),
                    ts_ms: 1_700_000_000_000,
                    value: f64::NAN,
                },
                WireSample {
                    name: "load_1".into(),
                    tags: Default::default(),
                    ts_ms: 1_700_000_001_000,
                    value: -2.0,
                },
            ],
            crash_reports: vec![serde_json::json!({"id": "x"})],
        };
        let mut table = SeriesTable::default();
        let as_samples = columns::decode(&protocol::encode(&batch(1))).unwrap();
        assert!(matches!(store_message(&store, &as_samples, &mut table), Ok((1, true))));
        let as_columns = columns::decode(&columns::encode(&batch(2))).unwrap();
        assert!(matches!(store_message(&store, &as_columns, &mut table), Ok((2, true))));
        // On a connection: batch 3 defines the series, batch 4 only names them.
        let mut sent = columns::SentSeries::default();
        let mut table = SeriesTable::default();
        for seq in [3, 4] {
            let wire = columns::decode(&sent.wire(&columns::encode(&batch(seq))).unwrap().unwrap()).unwrap();
            let Decoded::Packed(p) = &wire else { panic!("not columns") };
            assert_eq!(p.series.len(), if seq == 3 { 2 } else { 0 });
            assert!(matches!(store_message(&store, &wire, &mut table), Ok((s, true)) if s == seq));
        }
        // A duplicate is acknowledged, not written again.
        assert!(matches!(store_message(&store, &as_columns, &mut table), Ok((2, false))));
        let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let expected = |seq: u64| {
            format!(
                concat!(
                    r#"{{"agent_id":"{}","sink":"main","seq":{},"host":"h\"<x>","samples":["#,
                    r#"{{"name":"load_1","tags":{{}},"ts_ms":1700000000000,"value":0.5}},"#,
                    r#"{{"name":"disk_reads_sec","tags":{{"device":"sda"}},"ts_ms":1700000000000,"value":null}},"#,
                    r#"{{"name":"load_1","tags":{{}},"ts_ms":1700000001000,"value":-2.0}}"#,
                    r#"],"crash_reports":[{{"id":"x"}}]}}"#
                ),
                "a".repeat(32),
                seq
            )
        };
        assert_eq!(lines, [expected(1), expected(2), expected(3), expected(4)]);
    }
}
