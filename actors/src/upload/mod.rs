//! [`Uploader`]: one per `[[upload]]` sink, in the supervisor; the sink types are
//! [`native`] (WebSocket), [`remote_write`] (Prometheus) and [`otlp`] (OpenTelemetry), one
//! file each; the two HTTP ones share [`http`]. Collector restarts never touch
//! it: its connection and spool belong to the supervisor process.
//!
//! Samples arrive from the Supervisor ([`Publish`]) and are buffered. Every
//! `flush_interval_secs` the buffer becomes one [`Batch`] with the spool's next seq, is
//! appended to the spool (synced: the commit point), and only then sent. A batch leaves the
//! spool when the receiver acknowledges its seq. At most [`WINDOW`] batches are in flight on
//! a connection; after a reconnect everything unacknowledged is sent again, in order (the
//! receiver de-duplicates by `(agent_id, seq)`). Failed connections back off exponentially
//! (1 s doubling to 60 s, minus up to 10 % jitter: [`crate::backoff`]); an idle connection is pinged every
//! [`PING_EVERY`].

pub mod columns;
pub mod http;
pub mod native;
pub mod otlp;
pub mod part;
pub mod protocol;
pub mod remote_write;
pub mod spool;
pub mod tls;
pub mod token;

use std::path::Path;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::backoff::Backoff;
use crate::config::{SinkType, UploadConfig};
use crate::upload::protocol::{Batch, WireSample};
use crate::upload::spool::Spool;

/// Batches sent and not yet acknowledged, at most.
pub const WINDOW: u64 = 16;
/// Idle connections are pinged this often.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// Samples buffered between two flushes, at most (the oldest are dropped past it, counted).
pub const MAX_BUFFERED: usize = 1_000_000;
/// Samples held in memory while the spool cannot take them (a full disk, EIO), at most: the
/// oldest past it are dropped and counted as `disk_full_samples`. About 20 MiB, or hours of
/// collection at the default interval.
pub const MAX_HELD: usize = 200_000;
/// The size cap of a batch: a buffer this full is flushed at once, without waiting for the
/// interval (about 4 MiB of MessagePack; receivers accept messages up to 64 MiB).
pub const MAX_BATCH_SAMPLES: usize = 50_000;
/// A sink on its own thread takes at most this many [`Publish`] messages ahead of what it has
/// handled (one per collection); while its thread is stalled (a frozen disk under its spool),
/// what does not fit is dropped and counted as `buffer_full`, never queued without bound.
pub const MAILBOX: usize = 1024;
/// How often a sink publishes its status for [`SinkHandle::status`] (only when it changed).
pub const STATUS_EVERY: Duration = Duration::from_millis(200);
/// Reconnects and retries wait 1 s, doubling to [`BACKOFF_MAX`] ([`crate::backoff`]).
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The crash reports a sink sends, handed in by its owner (the sink never reads the crash
/// dir itself): given the ID of the newest report this sink already spooled (`""` for none),
/// every newer one in ID order, as JSON or the reason it cannot be read.
pub type CrashReportSource = Box<dyn Fn(&str) -> Vec<(String, Result<serde_json::Value, String>)> + Send>;

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
    /// Payload bytes sent since start (WebSocket messages or HTTP request bodies, resends
    /// included): with the samples published, the bytes per sample on the wire.
    pub sent_bytes: u64,
    /// Batches in the spool, not yet acknowledged.
    pub spooled_batches: u64,
    pub spool_bytes: u64,
    /// `spool_max_bytes` in force: the spool's bound.
    pub spool_max_bytes: u64,
    /// The sum of every `dropped` entry counted in samples (`*_samples`).
    pub dropped_samples: u64,
    /// Drops by reason, each key ending in its unit: `spool_full_batches` and
    /// `spool_full_samples` (dropped to stay under `spool_max_bytes`), `buffer_full_samples`,
    /// `disk_full_samples` (held while the spool could not be written, past [`MAX_HELD`]),
    /// `rejected_batches` and `rejected_samples` (refused by the receiver as bad, or samples
    /// refused in an OTLP partial success), `rejected_crash_reports` (OTLP log records refused),
    /// `undecodable_batches` (spooled batches that no longer decode), `corrupt_records` (spool
    /// records found damaged), `torn_bytes` (bytes cut from torn spool tails), `bad_files`
    /// (spool files set aside as `*.bad`), `unreadable_crash_reports`.
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

pub struct Uploader {
    cfg: UploadConfig,
    agent_id: String,
    host: String,
    spool: Spool,
    buffer: Vec<WireSample>,
    /// Sender to the connection's writer task, while connected.
    conn: Option<tokio::sync::mpsc::UnboundedSender<(u64, Vec<u8>)>>,
    connecting: bool,
    /// Connected to a receiver that sends a Hello first; nothing is sent until it arrives.
    awaiting_hello: bool,
    /// The connection's receiver announced the columns encoding: the series it was sent.
    /// `None`: it did not, and batches go out in the `samples` form.
    wire: Option<columns::SentSeries>,
    /// Payload bytes handed to the connection or sent as request bodies, resends included.
    sent_bytes: u64,
    /// Highest seq sent on the current connection.
    sent_upto: u64,
    backoff: Backoff,
    acked_batches: u64,
    dropped_buffer: u64,
    /// Every error that set `last_error`, counted.
    errors: u64,
    last_error: Option<String>,
    /// Bumped per connection, so events of an old one are ignored.
    generation: u64,
    /// Where the crash reports to send come from: reports go out with the next batch.
    crash_reports: Option<CrashReportSource>,
    /// DATA_DIR, where a check-in may have stored an upload token (it wins over token_file).
    data_dir: std::path::PathBuf,
    /// Check-ins are on (`checkin.url`): a `vigil` sink uses the token they store.
    checkin_token: bool,
    /// A new token arrived while a connection was being made: make another one with it.
    reconnect: bool,
    /// File holding the newest crash report ID already put into a spooled batch.
    crash_marker: std::path::PathBuf,
    /// HTTP sinks: a request is on its way / a retry is scheduled.
    http_busy: bool,
    /// HTTP sinks: the last request was accepted.
    http_ok: bool,
    /// HTTP sinks: how many requests ([`http::Part`]) of batch `seq` are through.
    parts_done: Option<(u64, usize)>,
    /// HTTP sinks: the receiver refused the samples of the batch being sent.
    batch_rejected: bool,
    /// Batches the receiver refused as bad (400, 413, 422), and their samples; samples and
    /// crash reports it refused in a partial success (OTLP).
    rejected_batches: u64,
    rejected_samples: u64,
    rejected_crash_reports: u64,
    /// `agent.tags` (also in every sample): OTLP sends them as resource attributes.
    agent_tags: std::collections::BTreeMap<String, String>,
    /// The flush timer (remade when `flush_interval_secs` changes on a reload).
    flush_timer: Option<SpawnHandle>,
    /// Removed by a reload: when stopped, its thread ends too.
    retired: bool,
    /// Spooled batches that did not decode (dropped, counted).
    undecodable_batches: u64,
    /// Samples dropped because the spool could not take them for too long.
    disk_full_samples: u64,
    /// Crash reports that could not be read to be sent.
    unreadable_crash_reports: u64,
    /// Why the spool cannot be written, while it cannot (samples are held in memory).
    spool_failing: Option<String>,
    /// Where [`SinkHandle::status`] reads this sink's status, published every
    /// [`STATUS_EVERY`] when it changed (and when the sink starts).
    status_tx: Option<tokio::sync::watch::Sender<SinkStatus>>,
}

impl Uploader {
    pub fn new(cfg: UploadConfig, data_dir: &Path, agent_id: String, host: String) -> Self {
        let spool_dir = data_dir.join("spool").join(&cfg.name);
        let (spool, open_error) = Spool::open_or_retry(&spool_dir, cfg.spool_max_bytes);
        let spool = spool.with_sample_counter(columns::sample_count);
        if let Some(e) = &open_error {
            tracing::error!(sink = %cfg.name, error = %e, "Cannot open the spool; samples are held in memory (at most {MAX_HELD}) and the spool is tried again at every flush.");
        }
        let st = spool.stats();
        if st.corrupt_records > 0 || st.torn_bytes > 0 {
            tracing::warn!(
                sink = %cfg.name,
                corrupt_records = st.corrupt_records,
                torn_bytes = st.torn_bytes,
                "Spool had damaged records; they were skipped."
            );
        }
        if st.bad_files > 0 {
            tracing::warn!(sink = %cfg.name, bad_files = st.bad_files, "Damaged spool files were set aside as *.bad (counted as bad_files).");
        }
        if open_error.is_none() {
            tracing::info!(sink = %cfg.name, pending = spool.pending_len(), next_seq = spool.next_seq(), "Spool opened.");
        }
        if let Some(w) = crate::config::secret_file_warning(&cfg.token_file, "upload.token_file") {
            tracing::warn!(sink = %cfg.name, "{w}");
        }
        let mut up = Self {
            cfg,
            agent_id,
            host,
            spool,
            buffer: Vec::new(),
            conn: None,
            connecting: false,
            awaiting_hello: false,
            wire: None,
            sent_bytes: 0,
            sent_upto: 0,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            acked_batches: 0,
            dropped_buffer: 0,
            errors: 0,
            last_error: None,
            generation: 0,
            crash_reports: None,
            data_dir: data_dir.to_path_buf(),
            checkin_token: false,
            reconnect: false,
            crash_marker: spool_dir.join("crash_reports_sent"),
            http_busy: false,
            http_ok: false,
            parts_done: None,
            batch_rejected: false,
            rejected_batches: 0,
            rejected_samples: 0,
            rejected_crash_reports: 0,
            agent_tags: Default::default(),
            flush_timer: None,
            retired: false,
            undecodable_batches: 0,
            disk_full_samples: 0,
            unreadable_crash_reports: 0,
            spool_failing: None,
            status_tx: None,
        };
        if let Some(e) = open_error {
            up.error(format!("spool: {e}"));
            up.spool_failing = Some(e.to_string());
        }
        up
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

    /// Crash reports newer than the last one spooled for this sink (IDs sort by time), from
    /// the source the owner handed in ([`Uploader::with_crash_reports`]).
    fn new_crash_reports(&mut self) -> (Vec<serde_json::Value>, Option<String>) {
        let Some(source) = &self.crash_reports else { return (Vec::new(), None) };
        let last =
            std::fs::read_to_string(&self.crash_marker).map(|s| s.trim().to_string()).unwrap_or_default();
        let mut out = Vec::new();
        let mut newest = None;
        for (id, report) in source(&last) {
            match report {
                Ok(r) => out.push(r),
                Err(e) => {
                    self.unreadable_crash_reports += 1;
                    tracing::warn!(sink = %self.cfg.name, id = %id, error = %e, "Cannot read a crash report to upload; it is not sent (counted as unreadable_crash_reports).")
                }
            }
            newest = Some(id);
        }
        (out, newest)
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        // A spool whose directory could not be opened is tried again before anything is
        // numbered (opening it may move the next seq).
        if let Err(e) = self.spool.retry_open() {
            self.spool_failed(format!("spool: {e}"));
            return;
        }
        let (crash_reports, newest_report) = self.new_crash_reports();
        if self.buffer.is_empty() && crash_reports.is_empty() {
            return;
        }
        let batch = self.next_batch(crash_reports);
        let bytes = columns::encode(&batch);
        match self.spool.append(&bytes) {
            Ok(seq) => {
                debug_assert_eq!(seq, batch.seq);
                if let Some(why) = self.spool_failing.take() {
                    tracing::info!(sink = %self.cfg.name, after = %why, "The spool takes batches again; what was held in memory is spooled.");
                }
                // Spooled is as good as delivered (the spool resends until acked): mark the
                // reports sent for this sink.
                if let Some(id) = newest_report {
                    let tmp = self.crash_marker.with_extension("tmp");
                    let write = || {
                        use std::io::Write;
                        use std::os::unix::fs::OpenOptionsExt;
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .mode(0o600)
                            .open(&tmp)?
                            .write_all(id.as_bytes())?;
                        std::fs::rename(&tmp, &self.crash_marker)
                    };
                    if let Err(e) = write() {
                        tracing::warn!(sink = %self.cfg.name, error = %e, "Cannot record which crash reports were sent; they may be sent again.");
                    }
                }
            }
            Err(e) => {
                // Nothing durable was written: keep the samples for the next flush.
                let mut samples = batch.samples;
                samples.append(&mut self.buffer);
                self.buffer = samples;
                self.spool_failed(format!("spool: {e}"));
            }
        }
        self.pump(ctx);
        self.publish_status();
    }

    /// The spool did not take a batch (a full disk, EIO, a directory it cannot open): the
    /// samples stay in memory, at most [`MAX_HELD`]; the oldest past that are counted as
    /// `disk_full_samples`. Logged once per failure spell, counted in `errors` every time.
    fn spool_failed(&mut self, why: String) {
        if self.spool_failing.is_none() {
            tracing::error!(sink = %self.cfg.name, error = %why, held = self.buffer.len(), "Cannot spool a batch; its samples are held in memory (at most {MAX_HELD}) and spooled when the disk takes them again.");
        }
        self.spool_failing = Some(why.clone());
        self.error(why);
        if self.buffer.len() > MAX_HELD {
            let excess = self.buffer.len() - MAX_HELD;
            self.buffer.drain(..excess);
            self.disk_full_samples += excess as u64;
        }
    }

    /// Sends pending batches: over the WebSocket up to the window ([`native`]), or one
    /// request at a time ([`http`]).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        match self.cfg.kind {
            SinkType::RemoteWrite | SinkType::Otlp => self.pump_http(ctx),
            SinkType::Vigil => self.pump_ws(),
        }
    }

    /// `agent.tags`: an OTLP sink sends them as resource attributes (and leaves them out of
    /// each data point's).
    pub fn with_agent_tags(mut self, tags: std::collections::BTreeMap<String, String>) -> Self {
        self.agent_tags = tags;
        self
    }

    /// The TLS settings for a `https://` or `wss://` URL, `None` for plain ones.
    fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        if self.cfg.url.starts_with("https://") || self.cfg.url.starts_with("wss://") {
            crate::upload::tls::client_config(&self.cfg.ca_file).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The crash reports this sink sends with its batches (none without a source).
    pub fn with_crash_reports(mut self, source: CrashReportSource) -> Self {
        self.crash_reports = Some(source);
        self
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
            if let Some(t) = crate::upload::token::stored_token(&self.data_dir) {
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

    fn status(&self) -> SinkStatus {
        let st = self.spool.stats();
        let dropped = std::collections::BTreeMap::from([
            ("spool_full_batches", st.dropped_records),
            ("spool_full_samples", st.dropped_samples),
            ("buffer_full_samples", self.dropped_buffer),
            ("disk_full_samples", self.disk_full_samples),
            ("rejected_batches", self.rejected_batches),
            ("rejected_samples", self.rejected_samples),
            ("rejected_crash_reports", self.rejected_crash_reports),
            ("undecodable_batches", self.undecodable_batches),
            ("corrupt_records", st.corrupt_records),
            ("torn_bytes", st.torn_bytes),
            ("bad_files", st.bad_files),
            ("unreadable_crash_reports", self.unreadable_crash_reports),
        ]);
        let dropped_samples = dropped.iter().filter(|(k, _)| k.ends_with("_samples")).map(|(_, v)| v).sum();
        SinkStatus {
            name: self.cfg.name.clone(),
            kind: match self.cfg.kind {
                crate::config::SinkType::Vigil => "vigil",
                crate::config::SinkType::RemoteWrite => "remote_write",
                crate::config::SinkType::Otlp => "otlp",
            },
            connected: self.conn.is_some() || self.http_ok,
            sent_batches: self.acked_batches,
            sent_bytes: self.sent_bytes,
            spooled_batches: self.spool.pending_len() as u64,
            spool_bytes: self.spool.bytes(),
            spool_max_bytes: self.cfg.spool_max_bytes,
            dropped_samples,
            dropped,
            last_seq: self.spool.next_seq().saturating_sub(1),
            acked_seq: self.spool.acked(),
            errors: self.errors,
            last_error: self.last_error.clone(),
        }
    }
}

impl Actor for Uploader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.status_tx.is_some() {
            ctx.run_interval(STATUS_EVERY, |this, _| this.publish_status());
        }
        self.start_flush_timer(ctx);
        if self.cfg.kind == SinkType::Vigil {
            self.connect(ctx);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.spool_remaining();
        if self.retired {
            actix::Arbiter::current().stop();
        }
    }
}

impl Uploader {
    fn start_flush_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(old) = self.flush_timer.take() {
            ctx.cancel_future(old);
        }
        let every = crate::config::secs(self.cfg.flush_interval_secs);
        self.flush_timer = Some(ctx.run_interval(every, |this, ctx| this.flush(ctx)));
    }
}

/// New settings for a running sink of the same name (a configuration reload): applied in
/// place, so its spool, its seq and everything buffered stay; the connection (or the next
/// request) is made with the new settings.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    pub cfg: UploadConfig,
    pub host: String,
    pub agent_tags: std::collections::BTreeMap<String, String>,
}

impl Handler<Reconfigure> for Uploader {
    type Result = ();

    fn handle(&mut self, m: Reconfigure, ctx: &mut Context<Self>) {
        debug_assert_eq!(m.cfg.name, self.cfg.name, "the spool belongs to the name");
        let was = std::mem::replace(&mut self.cfg, m.cfg);
        self.host = m.host;
        self.agent_tags = m.agent_tags;
        self.spool.set_max_bytes(self.cfg.spool_max_bytes);
        if was.flush_interval_secs != self.cfg.flush_interval_secs {
            self.start_flush_timer(ctx);
        }
        tracing::info!(sink = %self.cfg.name, kind = ?self.cfg.kind, url = %self.cfg.url, "Sink settings changed; its spool is kept and it connects with the new ones.");
        // Whatever was connected or made with the old settings is let go: events of the old
        // connection are ignored from here on, what it had in flight is sent again.
        http::forget_client(&self.cfg.name);
        self.generation += 1;
        self.conn = None;
        self.awaiting_hello = false;
        self.http_ok = false;
        self.parts_done = None;
        self.backoff.reset();
        match self.cfg.kind {
            SinkType::Vigil if self.connecting => self.reconnect = true,
            SinkType::Vigil => self.connect(ctx),
            SinkType::RemoteWrite | SinkType::Otlp => self.pump_http(ctx),
        }
        self.publish_status();
    }
}

/// The sink was removed from the configuration: what it buffers goes into its spool (kept
/// on disk, sent if the sink comes back), then it stops, and its thread with it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for Uploader {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        tracing::info!(sink = %self.cfg.name, spooled = self.spool.pending_len(), "Sink removed from the configuration; its spool stays in the data dir.");
        self.retired = true;
        ctx.stop();
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
        let _ = self.spool.retry_open();
        while !self.buffer.is_empty() {
            let batch = self.next_batch(Vec::new());
            if let Err(e) = self.spool.append(&columns::encode(&batch)) {
                self.disk_full_samples += (batch.samples.len() + self.buffer.len()) as u64;
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
            // Taken whole when nothing is buffered and the buffer's memory would not hold it.
            Ok(v) if self.buffer.is_empty() && self.buffer.capacity() < v.len() => self.buffer = v,
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

impl Handler<crate::upload::token::TokenChanged> for Uploader {
    type Result = ();

    fn handle(&mut self, _: crate::upload::token::TokenChanged, ctx: &mut Context<Self>) {
        tracing::info!(sink = %self.cfg.name, "New upload token; reconnecting with it.");
        self.backoff.reset();
        if self.cfg.kind != SinkType::Vigil {
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

impl Uploader {
    /// Runs the sink on a thread of its own (an Arbiter), so that nothing it waits for (an
    /// fsync on a frozen or slow disk, a stalled receiver) can hold up the thread that
    /// supervises the collector. Everything the rest of the process needs of it goes through
    /// the returned handle, which never waits for the sink.
    pub fn start_on_own_thread(mut self) -> SinkHandle {
        let (tx, rx) = tokio::sync::watch::channel(self.status());
        self.status_tx = Some(tx);
        let name = self.cfg.name.clone();
        let arbiter = actix::Arbiter::new();
        let addr = Uploader::start_in_arbiter(&arbiter.handle(), move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX);
            self
        });
        SinkHandle { name, addr, status: rx, refused: Default::default() }
    }

    /// Publishes the status for the handle, when it changed (a no-op for a sink started
    /// with `start()`, which is asked with [`GetSinkStatus`] instead).
    pub(super) fn publish_status(&mut self) {
        if self.status_tx.is_none() {
            return;
        }
        let st = self.status();
        if let Some(tx) = &self.status_tx {
            tx.send_if_modified(|old| {
                let changed = *old != st;
                if changed {
                    *old = st;
                }
                changed
            });
        }
    }
}

/// A sink running on its own thread ([`Uploader::start_on_own_thread`]), as the Supervisor,
/// the check-ins and the status endpoint hold it. Nothing here waits for the sink.
#[derive(Clone)]
pub struct SinkHandle {
    name: String,
    addr: Addr<Uploader>,
    status: tokio::sync::watch::Receiver<SinkStatus>,
    /// Samples the sink's full mailbox refused (its thread was stalled).
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle").field("name", &self.name).finish()
    }
}

impl SinkHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> &Addr<Uploader> {
        &self.addr
    }

    /// Hands samples to the sink without waiting: when its mailbox is full (the sink is
    /// stalled), they are dropped and counted as `buffer_full`.
    pub fn publish(&self, samples: std::sync::Arc<Vec<WireSample>>) {
        use actix::dev::SendError;
        if let Err(SendError::Full(Publish(lost)) | SendError::Closed(Publish(lost))) =
            self.addr.try_send(Publish(samples))
        {
            let before = self.refused.fetch_add(lost.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if before == 0 {
                tracing::warn!(sink = %self.name, "Sink is stalled (its mailbox is full); samples are dropped and counted as buffer_full until it catches up.");
            }
        }
    }

    /// Applies new settings of the same sink (a reload), without waiting.
    pub fn reconfigure(&self, m: Reconfigure) {
        self.addr.do_send(m);
    }

    /// Stops the sink (removed by a reload), without waiting: it spools what it buffers
    /// first.
    pub fn retire(&self) {
        self.addr.do_send(Retire);
    }

    /// The sink's last published status, with the samples its mailbox refused.
    pub fn status(&self) -> SinkStatus {
        let mut st = self.status.borrow().clone();
        let refused = self.refused.load(std::sync::atomic::Ordering::Relaxed);
        *st.dropped.entry("buffer_full_samples").or_default() += refused;
        st.dropped_samples += refused;
        st
    }

    /// Asks the sink to spool what it buffers (the supervisor is stopping), waiting at most
    /// `within`: a sink stalled on its disk must not keep the process from exiting. Returns
    /// whether it finished in time.
    pub async fn spool_now(&self, within: Duration) -> bool {
        matches!(tokio::time::timeout(within, self.addr.send(SpoolNow)).await, Ok(Ok(())))
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
        let up = Uploader::new(cfg, &dir, "agent".into(), "host".into()).start();
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
        let mut spool = Spool::open(&dir.join("spool/cap"), 1 << 30).unwrap();
        for rec in spool.read_all() {
            let b: Batch = columns::decode_batch(&rec.payload).unwrap();
            assert_eq!(b.samples.len(), MAX_BATCH_SAMPLES);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_vigil_sinks_with_check_ins_use_the_checkin_token() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own-token");
        std::fs::write(&own, "own\n").unwrap();
        crate::upload::token::store_token(dir.path(), "rotated").unwrap();
        let token = |kind, checkins| {
            let cfg = UploadConfig {
                name: format!("{kind:?}-{checkins}"),
                kind,
                url: "http://127.0.0.1:9/api/v1/write".into(),
                token_file: own.display().to_string(),
                ..UploadConfig::default()
            };
            let mut up = Uploader::new(cfg, dir.path(), "a".into(), "h".into()).with_checkin_token(checkins);
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
