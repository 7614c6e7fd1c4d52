//! [`Uploader`]: one per `[[upload]]` sink, in the supervisor. Collector restarts never touch
//! it: its connection and spool belong to the supervisor process.
//!
//! Samples arrive from the Supervisor ([`Publish`]) and are buffered. Every
//! `flush_interval_secs` the buffer becomes one [`Batch`] with the spool's next seq, is
//! appended to the spool (synced: the commit point), and only then sent. A batch leaves the
//! spool when the receiver acknowledges its seq. At most [`WINDOW`] batches are in flight on
//! a connection; after a reconnect everything unacknowledged is sent again, in order (the
//! receiver de-duplicates by `(agent_id, seq)`). Failed connections back off exponentially
//! (1 s doubling to 60 s, minus up to 20 % jitter); an idle connection is pinged every
//! [`PING_EVERY`].

use std::path::Path;
use std::time::Duration;

use actix::prelude::*;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{SinkType, UploadConfig};
use crate::protocol::{self, Batch, ServerMsg, WireSample};
use crate::remote_write::{self, Outcome};
use crate::spool::{Spool, SpoolError};

/// Batches sent and not yet acknowledged, at most.
pub const WINDOW: u64 = 16;
/// Idle connections are pinged this often.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// Samples buffered between two flushes, at most (the oldest are dropped past it, counted).
pub const MAX_BUFFERED: usize = 1_000_000;
/// The size cap of a batch: a buffer this full is flushed at once, without waiting for the
/// interval (about 4 MiB of MessagePack; receivers accept messages up to 64 MiB).
pub const MAX_BATCH_SAMPLES: usize = 50_000;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// remote_write: a request and its whole answer must be done within this.
const HTTP_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Samples for the next batch.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Publish(pub std::sync::Arc<Vec<WireSample>>);

/// `/status` `uploads` entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub connected: bool,
    /// Batches acknowledged by the receiver since start.
    pub sent_batches: u64,
    /// Batches in the spool, not yet acknowledged.
    pub spooled_batches: u64,
    pub spool_bytes: u64,
    pub dropped_samples: u64,
    /// Drops by reason: `spool_full` (batches), `buffer_full` (samples), `corrupt_records`
    /// (spool records found damaged), `torn_bytes` (spool bytes cut from torn tails).
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
    pub last_seq: u64,
    pub acked_seq: u64,
    /// Failed connections, requests, refusals and spool errors since start.
    pub errors: u64,
    pub last_error: Option<String>,
}

#[derive(Message)]
#[rtype(result = "SinkStatus")]
pub struct GetSinkStatus;

#[derive(Message)]
#[rtype(result = "()")]
enum ConnEvent {
    Acked(u64),
    Closed(String),
}

pub struct Uploader {
    cfg: UploadConfig,
    agent_id: String,
    host: String,
    spool: Spool,
    buffer: Vec<WireSample>,
    /// Sender to the connection's writer task, while connected.
    conn: Option<mpsc::UnboundedSender<Vec<u8>>>,
    connecting: bool,
    /// Highest seq sent on the current connection.
    sent_upto: u64,
    backoff: Duration,
    acked_batches: u64,
    dropped_buffer: u64,
    /// Every error that set `last_error`, counted.
    errors: u64,
    last_error: Option<String>,
    /// Bumped per connection, so events of an old one are ignored.
    generation: u64,
    /// DATA_DIR/crashes: reports go out with the next batch.
    crash_dir: std::path::PathBuf,
    /// DATA_DIR, where a check-in may have stored an upload token (it wins over token_file).
    data_dir: std::path::PathBuf,
    /// Check-ins are on (`checkin.url`): a `vigil` sink uses the token they store.
    checkin_token: bool,
    /// A new token arrived while a connection was being made: make another one with it.
    reconnect: bool,
    /// File holding the newest crash report ID already put into a spooled batch.
    crash_marker: std::path::PathBuf,
    /// remote_write: a request is on its way / a retry is scheduled.
    http_busy: bool,
    /// remote_write: the last request was accepted.
    http_ok: bool,
    /// remote_write: samples of batches the receiver refused with a 4xx (dropped, counted).
    rejected_samples: u64,
    http: Option<awc::Client>,
}

impl Uploader {
    pub fn new(
        cfg: UploadConfig,
        data_dir: &Path,
        agent_id: String,
        host: String,
    ) -> Result<Self, SpoolError> {
        let spool_dir = data_dir.join("spool").join(&cfg.name);
        let spool = Spool::open(&spool_dir, cfg.spool_max_bytes)?;
        let st = spool.stats();
        if st.corrupt_records > 0 || st.torn_bytes > 0 {
            tracing::warn!(
                sink = %cfg.name,
                corrupt_records = st.corrupt_records,
                torn_bytes = st.torn_bytes,
                "Spool had damaged records; they were skipped."
            );
        }
        tracing::info!(sink = %cfg.name, pending = spool.pending_len(), next_seq = spool.next_seq(), "Spool opened.");
        if let Some(w) = crate::config::secret_file_warning(&cfg.token_file, "upload.token_file") {
            tracing::warn!(sink = %cfg.name, "{w}");
        }
        Ok(Self {
            cfg,
            agent_id,
            host,
            spool,
            buffer: Vec::new(),
            conn: None,
            connecting: false,
            sent_upto: 0,
            backoff: BACKOFF_MIN,
            acked_batches: 0,
            dropped_buffer: 0,
            errors: 0,
            last_error: None,
            generation: 0,
            crash_dir: data_dir.join("crashes"),
            data_dir: data_dir.to_path_buf(),
            checkin_token: false,
            reconnect: false,
            crash_marker: spool_dir.join("crash_reports_sent"),
            http_busy: false,
            http_ok: false,
            rejected_samples: 0,
            http: None,
        })
    }

    /// Records an error: shown in `/status` as `last_error`, counted in `errors`.
    fn error(&mut self, why: String) {
        self.errors += 1;
        self.last_error = Some(why);
    }

    /// The next batch: up to MAX_BATCH_SAMPLES buffered samples, under the spool's next seq.
    fn next_batch(&mut self, crash_reports: Vec<serde_json::Value>) -> Batch {
        let rest = self.buffer.split_off(self.buffer.len().min(MAX_BATCH_SAMPLES));
        Batch {
            agent_id: self.agent_id.clone(),
            sink: self.cfg.name.clone(),
            seq: self.spool.next_seq(),
            host: self.host.clone(),
            samples: std::mem::replace(&mut self.buffer, rest),
            crash_reports,
        }
    }

    /// Crash reports newer than the last one spooled for this sink (IDs sort by time).
    fn new_crash_reports(&self) -> (Vec<serde_json::Value>, Option<String>) {
        let last =
            std::fs::read_to_string(&self.crash_marker).map(|s| s.trim().to_string()).unwrap_or_default();
        let ids = crate::crash_report::list_ids(&self.crash_dir).unwrap_or_default();
        let mut out = Vec::new();
        let mut newest = None;
        for id in ids.into_iter().filter(|id| *id > last) {
            match crate::crash_report::load(&self.crash_dir, &id) {
                Ok(r) => out.push(serde_json::to_value(&r).unwrap_or_default()),
                Err(e) => {
                    tracing::warn!(sink = %self.cfg.name, error = %e, "Cannot read a crash report to upload.")
                }
            }
            newest = Some(id);
        }
        (out, newest)
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        let (crash_reports, newest_report) = self.new_crash_reports();
        if self.buffer.is_empty() && crash_reports.is_empty() {
            return;
        }
        let batch = self.next_batch(crash_reports);
        let bytes = protocol::encode(&batch);
        match self.spool.append(&bytes) {
            Ok(seq) => {
                debug_assert_eq!(seq, batch.seq);
                // Spooled is as good as delivered (the spool resends until acked): mark the
                // reports sent for this sink.
                if let Some(id) = newest_report {
                    let tmp = self.crash_marker.with_extension("tmp");
                    if let Err(e) =
                        std::fs::write(&tmp, &id).and_then(|_| std::fs::rename(&tmp, &self.crash_marker))
                    {
                        tracing::warn!(sink = %self.cfg.name, error = %e, "Cannot record which crash reports were sent; they may be sent again.");
                    }
                }
            }
            Err(e) => {
                // Nothing durable was written: keep the samples for the next flush.
                tracing::error!(sink = %self.cfg.name, error = %e, "Cannot spool a batch; keeping it in memory.");
                self.error(format!("spool: {e}"));
                let mut samples = batch.samples;
                samples.append(&mut self.buffer);
                self.buffer = samples;
            }
        }
        self.pump(ctx);
    }

    /// Sends pending batches up to the window.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.cfg.kind == SinkType::RemoteWrite {
            return self.pump_http(ctx);
        }
        let Some(tx) = &self.conn else { return };
        let acked = self.spool.acked();
        let start = self.sent_upto.max(acked);
        for rec in self.spool.pending().filter(|r| r.seq > start) {
            if rec.seq > acked + WINDOW {
                break;
            }
            if tx.send(rec.payload.clone()).is_err() {
                break;
            }
            self.sent_upto = rec.seq;
        }
    }

    /// remote_write: POSTs the oldest unacknowledged batch, one request at a time, so
    /// batches arrive in order. 2xx removes it from the spool; 429/5xx/network errors retry
    /// with backoff; any other 4xx drops it (counted as `rejected`): the receiver will never
    /// take it, and keeping it would block every later batch.
    fn pump_http(&mut self, ctx: &mut Context<Self>) {
        if self.http_busy {
            return;
        }
        let Some(rec) = self.spool.pending().next().cloned() else { return };
        let batch: Batch = match protocol::decode(&rec.payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sink = %self.cfg.name, seq = rec.seq, error = %e, "Spooled batch does not decode; dropped.");
                self.ack_http(rec.seq, ctx);
                return;
            }
        };
        let body = remote_write::encode_body(&remote_write::to_write_request(&batch));
        let client = match &self.http {
            Some(c) => c.clone(),
            None => match self.tls() {
                Ok(tls) => {
                    self.http.insert(crate::resolver::http_client(Duration::from_secs(30), tls)).clone()
                }
                Err(e) => return self.retry_http(ctx, e),
            },
        };
        let mut req = client
            .post(self.cfg.url.as_str())
            .insert_header(("Content-Encoding", "snappy"))
            .insert_header(("Content-Type", "application/x-protobuf"))
            .insert_header(("X-Prometheus-Remote-Write-Version", "0.1.0"));
        if let Some(t) = self.token() {
            req = req.bearer_auth(t);
        }
        self.http_busy = true;
        let exchange = async move {
            let mut resp = req.send_body(body).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let text = resp
                .body()
                .limit(4096)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Ok::<_, String>((status, text))
        };
        // The client's timeout ends at the response headers; a receiver that then stalls
        // must not hold the sink (one request at a time) for ever.
        let fut = async move {
            tokio::time::timeout(HTTP_EXCHANGE_TIMEOUT, exchange).await.unwrap_or_else(|_| {
                Err(format!("no complete answer within {} s", HTTP_EXCHANGE_TIMEOUT.as_secs()))
            })
        };
        let samples = batch.samples.len() as u64;
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            this.http_busy = false;
            match res.map(|(code, text)| (remote_write::outcome(code), code, text)) {
                Ok((Outcome::Delivered, _, _)) => {
                    this.http_ok = true;
                    this.backoff = BACKOFF_MIN;
                    this.last_error = None;
                    this.acked_batches += 1;
                    this.ack_http(rec.seq, ctx);
                }
                Ok((Outcome::Reject, code, text)) => {
                    tracing::error!(sink = %this.cfg.name, seq = rec.seq, status = code, response = %text.trim(), "Receiver rejected a batch; dropped (counted as rejected).");
                    this.error(format!("HTTP {code}: {}", text.trim()));
                    this.rejected_samples += samples;
                    this.ack_http(rec.seq, ctx);
                }
                Ok((Outcome::Retry, code, text)) => this.retry_http(ctx, format!("HTTP {code}: {}", text.trim())),
                Err(e) => this.retry_http(ctx, e),
            }
        }));
    }

    fn ack_http(&mut self, seq: u64, ctx: &mut Context<Self>) {
        if let Err(e) = self.spool.ack(seq) {
            tracing::error!(sink = %self.cfg.name, error = %e, "Cannot record an ack in the spool.");
            self.error(format!("spool: {e}"));
            return;
        }
        self.pump_http(ctx);
    }

    fn retry_http(&mut self, ctx: &mut Context<Self>, why: String) {
        self.http_ok = false;
        self.http_busy = true;
        let delay = self.backoff.mul_f64(1.0 - 0.2 * rand::thread_rng().gen::<f64>());
        tracing::warn!(sink = %self.cfg.name, error = %why, retry_in_ms = delay.as_millis() as u64, spooled = self.spool.pending_len(), "remote_write failed; batches stay in the spool.");
        self.error(why);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        ctx.run_later(delay, |this, ctx| {
            this.http_busy = false;
            this.pump_http(ctx);
        });
    }

    /// The TLS settings for a `https://` or `wss://` URL, `None` for plain ones.
    fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        if self.cfg.url.starts_with("https://") || self.cfg.url.starts_with("wss://") {
            crate::tls::client_config(&self.cfg.ca_file).map(Some)
        } else {
            Ok(None)
        }
    }

    /// With check-ins on (`checkin.url` set), a `vigil` sink uses the upload token they
    /// store in place of its `token_file`. Other sinks (`remote_write`) never do.
    pub fn with_checkin_token(mut self, checkins: bool) -> Self {
        self.checkin_token = checkins;
        self
    }

    /// The bearer token: for a `vigil` sink with check-ins on, the one a check-in stored;
    /// else the sink's `token_file`. Read at every connection attempt and request, so a new
    /// one is used from then on.
    fn token(&mut self) -> Option<String> {
        if self.checkin_token && self.cfg.kind == crate::config::SinkType::Vigil {
            if let Some(t) = crate::checkin::stored_token(&self.data_dir) {
                return Some(t);
            }
        }
        match self.cfg.token_file.as_str() {
            "" => None,
            f => match std::fs::read_to_string(f) {
                Ok(t) => Some(t.trim().to_string()),
                Err(e) => {
                    self.error(format!("token_file {f}: {e}"));
                    None
                }
            },
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.conn.is_some() {
            return;
        }
        self.connecting = true;
        self.generation += 1;
        let generation = self.generation;
        let url = self.cfg.url.clone();
        let token = self.token();
        let tls = self.tls();
        let fut = async move {
            // Names resolve through hickory, never libc's getaddrinfo.
            let client = crate::resolver::http_client(Duration::from_secs(10), tls?);
            let mut req = client.ws(url.as_str());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.connect().await.map(|(_, framed)| framed).map_err(|e| e.to_string())
        };
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            this.connecting = false;
            if std::mem::take(&mut this.reconnect) {
                // Made with the old token: connect again with the new one.
                this.backoff = BACKOFF_MIN;
                return this.connect(ctx);
            }
            match res {
                Ok(framed) => {
                    tracing::info!(sink = %this.cfg.name, url = %this.cfg.url, "Upload connection established.");
                    this.backoff = BACKOFF_MIN;
                    this.last_error = None;
                    let (tx, rx) = mpsc::unbounded_channel();
                    this.conn = Some(tx);
                    this.sent_upto = this.spool.acked();
                    run_connection(framed, rx, ctx.address(), generation);
                    this.pump(ctx);
                }
                Err(e) => this.disconnected(ctx, e),
            }
        }));
    }

    fn disconnected(&mut self, ctx: &mut Context<Self>, why: String) {
        self.conn = None;
        let jitter = 1.0 - 0.2 * rand::thread_rng().gen::<f64>();
        let delay = self.backoff.mul_f64(jitter);
        tracing::warn!(
            sink = %self.cfg.name,
            error = %why,
            retry_in_ms = delay.as_millis() as u64,
            spooled = self.spool.pending_len(),
            "Upload connection failed; batches stay in the spool."
        );
        self.error(why);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        ctx.run_later(delay, |this, ctx| this.connect(ctx));
    }

    fn status(&self) -> SinkStatus {
        let st = self.spool.stats();
        let dropped = std::collections::BTreeMap::from([
            ("spool_full", st.dropped_records),
            ("buffer_full", self.dropped_buffer),
            ("corrupt_records", st.corrupt_records),
            ("torn_bytes", st.torn_bytes),
            ("rejected", self.rejected_samples),
        ]);
        SinkStatus {
            name: self.cfg.name.clone(),
            kind: match self.cfg.kind {
                crate::config::SinkType::Vigil => "vigil",
                crate::config::SinkType::RemoteWrite => "remote_write",
            },
            connected: self.conn.is_some() || self.http_ok,
            sent_batches: self.acked_batches,
            spooled_batches: self.spool.pending_len() as u64,
            spool_bytes: self.spool.bytes(),
            dropped_samples: self.dropped_buffer + self.rejected_samples,
            dropped,
            last_seq: self.spool.next_seq().saturating_sub(1),
            acked_seq: self.spool.acked(),
            errors: self.errors,
            last_error: self.last_error.clone(),
        }
    }
}

/// Drives one WebSocket connection: writes queued batches (and pings when idle), reads
/// acks. Ends with `Closed` on any error or close.
fn run_connection<F>(
    framed: F,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    addr: Addr<Uploader>,
    generation: u64,
) where
    F: futures_util::Sink<ws::Message, Error = awc::error::WsProtocolError>
        + futures_util::Stream<Item = Result<ws::Frame, awc::error::WsProtocolError>>
        + 'static,
{
    let (mut sink, mut stream) = framed.split();
    actix_rt::spawn(async move {
        let why = loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(bytes) => {
                        if let Err(e) = sink.send(ws::Message::Binary(bytes.into())).await {
                            break format!("send: {e}");
                        }
                    }
                    None => break "closed by the uploader".to_string(),
                },
                frame = stream.next() => match frame {
                    Some(Ok(ws::Frame::Binary(b))) => match protocol::decode::<ServerMsg>(&b) {
                        Ok(ServerMsg::Ack { seq }) => addr.do_send(Conn { generation, ev: ConnEvent::Acked(seq) }),
                        Err(e) => tracing::warn!(error = %e, "Ignoring an undecodable message from the receiver."),
                    },
                    Some(Ok(ws::Frame::Ping(p))) => {
                        if sink.send(ws::Message::Pong(p)).await.is_err() {
                            break "send pong failed".to_string();
                        }
                    }
                    Some(Ok(ws::Frame::Close(reason))) => break format!("closed by the receiver: {reason:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("receive: {e}"),
                    None => break "connection closed".to_string(),
                },
                _ = tokio::time::sleep(PING_EVERY) => {
                    if let Err(e) = sink.send(ws::Message::Ping(Vec::new().into())).await {
                        break format!("ping: {e}");
                    }
                }
            }
        };
        addr.do_send(Conn { generation, ev: ConnEvent::Closed(why) });
    });
}

#[derive(Message)]
#[rtype(result = "()")]
struct Conn {
    generation: u64,
    ev: ConnEvent,
}

impl Actor for Uploader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = crate::config::secs(self.cfg.flush_interval_secs);
        ctx.run_interval(every, |this, ctx| this.flush(ctx));
        if self.cfg.kind == SinkType::Vigil {
            self.connect(ctx);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.spool_remaining();
    }
}

/// Put what is buffered into the spool now (the supervisor is stopping).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SpoolNow;

impl Handler<SpoolNow> for Uploader {
    type Result = ();

    fn handle(&mut self, _: SpoolNow, _: &mut Context<Self>) {
        self.spool_remaining();
    }
}

impl Uploader {
    /// On shutdown: the last samples go into the spool (not lost, sent after the restart).
    fn spool_remaining(&mut self) {
        while !self.buffer.is_empty() {
            let batch = self.next_batch(Vec::new());
            if let Err(e) = self.spool.append(&protocol::encode(&batch)) {
                tracing::error!(sink = %self.cfg.name, error = %e, samples = batch.samples.len() + self.buffer.len(), "Cannot spool the last samples at shutdown; they are lost.");
                self.buffer.clear();
            }
        }
    }
}

impl Handler<Publish> for Uploader {
    type Result = ();

    fn handle(&mut self, Publish(samples): Publish, ctx: &mut Context<Self>) {
        // The only sink takes the samples without copying them; several sinks copy.
        match std::sync::Arc::try_unwrap(samples) {
            Ok(v) => self.buffer.extend(v),
            Err(shared) => self.buffer.extend(shared.iter().cloned()),
        }
        if self.buffer.len() > MAX_BUFFERED {
            let excess = self.buffer.len() - MAX_BUFFERED;
            self.buffer.drain(..excess);
            self.dropped_buffer += excess as u64;
        }
        if self.buffer.len() >= MAX_BATCH_SAMPLES {
            self.flush(ctx);
        }
    }
}

impl Handler<Conn> for Uploader {
    type Result = ();

    fn handle(&mut self, Conn { generation, ev }: Conn, ctx: &mut Context<Self>) {
        if generation != self.generation {
            return;
        }
        match ev {
            ConnEvent::Acked(seq) => {
                let before = self.spool.acked();
                if let Err(e) = self.spool.ack(seq) {
                    tracing::error!(sink = %self.cfg.name, error = %e, "Cannot record an ack in the spool.");
                    self.error(format!("spool: {e}"));
                }
                self.acked_batches += self.spool.acked().saturating_sub(before);
                self.pump(ctx);
            }
            ConnEvent::Closed(why) => {
                if self.conn.is_some() {
                    self.disconnected(ctx, why);
                }
            }
        }
    }
}

impl Handler<crate::checkin::TokenChanged> for Uploader {
    type Result = ();

    fn handle(&mut self, _: crate::checkin::TokenChanged, ctx: &mut Context<Self>) {
        tracing::info!(sink = %self.cfg.name, "New upload token; reconnecting with it.");
        self.backoff = BACKOFF_MIN;
        if self.cfg.kind == SinkType::RemoteWrite {
            return; // read at every request
        }
        if self.connecting {
            self.reconnect = true;
            return;
        }
        // Events of the old connection are ignored from here on; what it had in flight is
        // sent again on the new one.
        self.generation += 1;
        self.conn = None;
        self.connect(ctx);
    }
}

impl Handler<GetSinkStatus> for Uploader {
    type Result = MessageResult<GetSinkStatus>;

    fn handle(&mut self, _: GetSinkStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst is cut into batches of at most MAX_BATCH_SAMPLES at once (before the flush
    /// interval), so no batch can outgrow what a receiver accepts.
    #[actix_rt::test]
    async fn bursts_are_cut_into_capped_batches_without_waiting_for_the_interval() {
        let dir = std::env::temp_dir().join(format!("vigil-uploader-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = UploadConfig {
            name: "cap".into(),
            url: "ws://127.0.0.1:9/v1/ingest".into(),
            flush_interval_secs: 3600.0,
            ..UploadConfig::default()
        };
        let up = Uploader::new(cfg, &dir, "agent".into(), "host".into()).unwrap().start();
        let sample = WireSample { name: "x".into(), tags: Default::default(), ts_ms: 1, value: 1.0 };
        for _ in 0..12 {
            up.send(Publish(std::sync::Arc::new(vec![sample.clone(); 10_000]))).await.unwrap();
        }
        let st = up.send(GetSinkStatus).await.unwrap();
        assert_eq!(
            st.last_seq, 2,
            "120,000 samples: two full batches spooled at once, 20,000 still buffered"
        );
        assert_eq!(st.spooled_batches, 2);
        let spool = Spool::open(&dir.join("spool/cap"), 1 << 30).unwrap();
        for rec in spool.pending() {
            let b: Batch = protocol::decode(&rec.payload).unwrap();
            assert_eq!(b.samples.len(), MAX_BATCH_SAMPLES);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_vigil_sinks_with_check_ins_use_the_checkin_token() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own-token");
        std::fs::write(&own, "own\n").unwrap();
        crate::checkin::store_token(dir.path(), "rotated").unwrap();
        let token = |kind, checkins| {
            let cfg = UploadConfig {
                name: format!("{kind:?}-{checkins}"),
                kind,
                url: "http://127.0.0.1:9/api/v1/write".into(),
                token_file: own.display().to_string(),
                ..UploadConfig::default()
            };
            let mut up =
                Uploader::new(cfg, dir.path(), "a".into(), "h".into()).unwrap().with_checkin_token(checkins);
            up.token()
        };
        use crate::config::SinkType;
        assert_eq!(token(SinkType::Vigil, true).as_deref(), Some("rotated"));
        assert_eq!(
            token(SinkType::Vigil, false).as_deref(),
            Some("own"),
            "check-ins off: a leftover file is ignored"
        );
        assert_eq!(token(SinkType::RemoteWrite, true).as_deref(), Some("own"));
        assert_eq!(token(SinkType::RemoteWrite, false).as_deref(), Some("own"));
    }
}
