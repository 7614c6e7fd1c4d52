//! Logging for both processes: `tracing` with key=value fields, to stderr or a file, as text
//! or as JSON lines (`agent.log_format`).
//!
//! The supervisor's filter always lets the `collector` target through: the collector
//! already filtered its own log by level, and a crash trace it writes has no level at all,
//! so dropping either would lose the reason it died.
//!
//! The log file is held in a [`LogFile`] that SIGHUP reopens: logrotate (in its default
//! `create` mode) renames the file and then signals vigil, and from then on every line goes
//! to a new file at the configured path.
//!
//! # The supervisor's log never blocks it
//!
//! A line is formatted where it is logged and handed to the log thread through a queue of
//! at most [`QUEUE_LINES`] lines ([`NonBlocking`]); the log thread writes it to the file or
//! stderr. When the destination stalls (a frozen disk, a stopped reader of stderr) the queue
//! fills and further lines are dropped, never waited for: counted
//! ([`lines_dropped`], `/metrics` `vigil_log_lines_dropped_total`), and the count is logged as
//! soon as the queue has drained. The crash report's stderr tail does not come from the log
//! (the supervisor keeps it in memory), so it stays byte-exact either way.
//!
//! Until [`Log::start_thread`] (called after `--daemon` forked: a thread would not survive
//! the fork) lines are written directly.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use vigil_actors::config::{LogFormat, LogLevel};
use vigil_actors::supervisor::child_process::OUTPUT_TARGET;

/// The environment variable through which the supervisor hands its level to the collector.
pub const CHILD_LEVEL_ENV: &str = "VIGIL_LOG_LEVEL";

/// A level filter from directives like `info,collector=trace` (no regex engine needed).
fn targets(directives: &str) -> Targets {
    directives.parse().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}

/// The supervisor's log file, opened for appending, and reopened (same path) on demand.
///
/// Every event is formatted into a buffer first and then written with one `write_all` while
/// the lock is held, so a reopen never splits a line between two files.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    pub fn open(path: &Path) -> anyhow::Result<LogFile> {
        let file = open_append(path).with_context(|| format!("cannot open log file {}", path.display()))?;
        Ok(LogFile { path: path.to_path_buf(), file: Arc::new(Mutex::new(file)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again and writes there from now on. On failure the old file is kept
    /// (a log going to a renamed file beats no log).
    pub fn reopen(&self) -> io::Result<()> {
        let new = open_append(&self.path)?;
        *self.lock() = new;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        // A panic while writing a log line leaves a usable file behind.
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// One locked write to the current log file.
pub struct LogFileWriter<'a>(MutexGuard<'a, File>);

impl Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self.lock())
    }
}

/// Lines waiting for the log's destination, at most (about 4 MiB of typical lines).
pub const QUEUE_LINES: usize = 16_384;

/// Lines dropped because the log's destination stalled (or refused them), since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because the log's destination stalled, since start.
pub fn lines_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Where the supervisor's lines go.
#[derive(Clone)]
enum Dest {
    File(LogFile),
    Stderr,
}

impl Dest {
    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        match self {
            Dest::File(f) => f.make_writer().write_all(line),
            Dest::Stderr => io::stderr().lock().write_all(line),
        }
    }
}

enum Item {
    Line(Vec<u8>),
    Reopen,
}

/// The queue between the threads that log and the log thread.
struct Queue {
    dest: Dest,
    /// Set once the log thread runs; lines are written directly before that.
    tx: OnceLock<SyncSender<Item>>,
    /// Lines queued and not yet written.
    queued: AtomicUsize,
    /// A reopen asked for while the queue was full.
    reopen: AtomicBool,
}

/// The supervisor's `MakeWriter`: each event's line goes to the queue in one piece, or is
/// dropped (and counted) when the queue is full.
#[derive(Clone)]
pub struct NonBlocking(Arc<Queue>);

/// One event's line, sent when the formatter is done with it.
pub struct QueuedLine<'a> {
    queue: &'a Queue,
    buf: Vec<u8>,
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        let Some(tx) = self.queue.tx.get() else {
            if self.queue.dest.write_line(&line).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        self.queue.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(Item::Line(line)) {
            self.queue.queued.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine { queue: &self.0, buf: Vec::new() }
    }
}

/// The supervisor's log, as `vigil run` holds it.
pub struct Log {
    queue: Arc<Queue>,
}

impl Log {
    /// The log file, when there is one (else stderr).
    pub fn path(&self) -> Option<&Path> {
        match &self.queue.dest {
            Dest::File(f) => Some(f.path()),
            Dest::Stderr => None,
        }
    }

    /// Starts the log thread; from then on nothing that logs waits for the destination.
    pub fn start_thread(&self) -> io::Result<()> {
        if self.queue.tx.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let queue = self.queue.clone();
        // The thread's own lines (the drop counts, reopen outcomes) go where the caller's do.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::Builder::new()
            .name("vigil-log".into())
            .spawn(move || tracing::dispatcher::with_default(&dispatch, || log_thread(&queue, rx)))?;
        let _ = self.queue.tx.set(tx);
        Ok(())
    }

    /// Has the log thread reopen the file (SIGHUP); lines logged before go to the old file.
    /// Returns at once; the thread logs the outcome.
    pub fn reopen(&self) {
        match self.queue.tx.get() {
            Some(tx) => {
                if tx.try_send(Item::Reopen).is_err() {
                    self.queue.reopen.store(true, Ordering::Relaxed);
                }
            }
            None => reopen_now(&self.queue.dest),
        }
    }

    /// Waits until the queued lines are written, at most `within` (at exit); whether they
    /// were.
    pub fn flush(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while self.queue.queued.load(Ordering::Relaxed) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.queue.queued.load(Ordering::Relaxed) == 0
    }

    /// Writes `line` to the destination now, waiting at most `within` for it (for the
    /// panic hook: the log thread may never get to it).
    pub fn write_direct(&self, line: &[u8], within: Duration) {
        let dest = self.queue.dest.clone();
        let line = line.to_vec();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("vigil-log-panic".into()).spawn(move || {
            let _ = dest.write_line(&line);
            let _ = done_tx.send(());
        });
        if spawned.is_ok() {
            let _ = done_rx.recv_timeout(within);
        }
    }
}

fn reopen_now(dest: &Dest) {
    let Dest::File(log) = dest else { return };
    match log.reopen() {
        Ok(()) => tracing::info!(log_file = %log.path().display(), "Log file reopened (SIGHUP)."),
        Err(e) => tracing::error!(
            log_file = %log.path().display(),
            error = %e,
            "Cannot reopen the log file; still writing to the old one."
        ),
    }
}

/// The log thread: writes queued lines in order; reports drops once the queue has drained.
fn log_thread(queue: &Queue, rx: Receiver<Item>) {
    let mut reported = 0;
    while let Ok(item) = rx.recv() {
        match item {
            Item::Line(line) => {
                if queue.dest.write_line(&line).is_err() {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
                queue.queued.fetch_sub(1, Ordering::Relaxed);
            }
            Item::Reopen => reopen_now(&queue.dest),
        }
        if queue.reopen.swap(false, Ordering::Relaxed) {
            reopen_now(&queue.dest);
        }
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > reported && queue.queued.load(Ordering::Relaxed) == 0 {
            tracing::warn!(
                dropped = dropped - reported,
                dropped_total = dropped,
                "Log lines were dropped because the log's destination stalled; it takes lines again."
            );
            reported = dropped;
        }
    }
}

/// The formatting layer for `format`, writing to `writer`.
fn fmt_layer<W>(format: LogFormat, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.event_format(JsonLines).boxed(),
    }
}

/// Supervisor logging: timestamps, to `log_file` (appended) or stderr, through the queue of
/// [`NonBlocking`] once [`Log::start_thread`] ran.
pub fn init_supervisor(
    level: LogLevel,
    format: LogFormat,
    log_file: Option<&Path>,
) -> anyhow::Result<Arc<Log>> {
    let filter = targets(&format!("{},{OUTPUT_TARGET}=trace", level.as_str()));
    let dest = match log_file {
        Some(path) => Dest::File(LogFile::open(path)?),
        None => Dest::Stderr,
    };
    let queue = Arc::new(Queue {
        dest,
        tx: OnceLock::new(),
        queued: AtomicUsize::new(0),
        reopen: AtomicBool::new(false),
    });
    let layer = fmt_layer(format, NonBlocking(queue.clone()));
    tracing_subscriber::registry().with(layer.with_filter(filter)).init();
    let log = Arc::new(Log { queue });
    let _ = SUPERVISOR_LOG.set(log.clone());
    Ok(log)
}

/// The supervisor's log, for [`flush`] and the panic hook.
static SUPERVISOR_LOG: OnceLock<Arc<Log>> = OnceLock::new();

/// At exit: waits until the supervisor's queued lines are written, at most `within`.
pub fn flush(within: Duration) {
    if let Some(log) = SUPERVISOR_LOG.get() {
        log.flush(within);
    }
}

/// `vigil run`: a panic on any thread of the supervisor ends the process with exit status 1
/// (CONTRACT §10), so that systemd restarts it, instead of leaving a process whose
/// supervising actor is gone but which still answers, or ignores, signals. The message, its
/// place and the thread's stack go to the log, also under `--daemon` (where stderr is
/// /dev/null); directly when the log thread does not get them out within a second.
pub fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        let backtrace = std::backtrace::Backtrace::force_capture();
        let what = info.to_string().replace('\n', " ");
        tracing::error!(
            thread = %thread,
            panic = %what,
            "The supervisor panicked ({what}); exiting with status 1 so that it is restarted rather than left running without supervising. Stack:\n{backtrace}"
        );
        if let Some(log) = SUPERVISOR_LOG.get() {
            if !log.flush(Duration::from_secs(1)) {
                let line = format!(
                    "vigil: the supervisor panicked on thread {thread}: {what}; exiting with status 1\n"
                );
                log.write_direct(line.as_bytes(), Duration::from_secs(1));
            }
        }
        std::process::exit(1);
    }));
}

/// Plain stderr logging at `level`, for one-shot commands.
pub fn init_stderr(level: &str) {
    let fmt = tracing_subscriber::fmt::layer().with_ansi(false).without_time().with_writer(std::io::stderr);
    tracing_subscriber::registry().with(fmt.with_filter(targets(level))).init();
}

/// Collector logging: to stderr without timestamps (the supervisor stamps each line it
/// receives), at the level the supervisor passed down.
pub fn init_collector() {
    let level = std::env::var(CHILD_LEVEL_ENV).unwrap_or_else(|_| "info".into());
    init_stderr(&level);
}

/// `agent.log_format = "json"`: one object per line,
/// `{"timestamp", "level", "target", "message", "fields": {…}}`. The event's key/value fields
/// stay in `fields` so that none can collide with the five fixed keys.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = JsonLine {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            level: meta.level().as_str(),
            target: meta.target(),
            message: &fields.message,
            fields: &fields.fields,
        };
        let line = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(w, "{line}")
    }
}

/// One JSON log line, keys in this order.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    timestamp: String,
    level: &'a str,
    target: &'a str,
    message: &'a str,
    fields: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Default)]
struct JsonFields {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl JsonFields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, format!("{value:#}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_have_the_fixed_keys_and_the_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = LogFile::open(&path).unwrap();
        let subscriber = tracing_subscriber::registry().with(fmt_layer(LogFormat::Json, file.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(pid = 7, signal = "SIGSEGV", ok = false, "Collector \"x\" crashed.");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "Collector \"x\" crashed.");
        assert_eq!(v["fields"], serde_json::json!({"pid": 7, "signal": "SIGSEGV", "ok": false}));
        assert!(v["target"].as_str().unwrap().starts_with("vigil"), "{v}");
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
    }

    /// A destination that stops taking lines (a pipe nobody reads) never holds up the code
    /// that logs: past the queue, lines are dropped and counted, and once the destination
    /// takes lines again the count is logged.
    #[test]
    fn a_stalled_destination_drops_and_counts_lines_without_blocking() {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let file = LogFile::open(Path::new(&format!("/proc/self/fd/{}", fds[1]))).unwrap();
        let queue = Arc::new(Queue {
            dest: Dest::File(file),
            tx: OnceLock::new(),
            queued: AtomicUsize::new(0),
            reopen: AtomicBool::new(false),
        });
        let log = Log { queue: queue.clone() };
        let subscriber = tracing_subscriber::registry().with(fmt_layer(LogFormat::Text, NonBlocking(queue)));
        let before = lines_dropped();
        tracing::subscriber::with_default(subscriber, || {
            log.start_thread().unwrap();
            let t0 = Instant::now();
            // 20 MiB of lines into a 64 KiB pipe that nobody reads.
            for i in 0..100_000 {
                tracing::info!(i, "{}", "x".repeat(200));
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "logging waited for the stalled pipe");
            assert!(lines_dropped() - before > 50_000, "dropped {}", lines_dropped() - before);
            // Read the pipe: the backlog drains and the count is reported.
            let mut reader = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
            let mut seen = Vec::new();
            let mut buf = vec![0; 1 << 16];
            let until = Instant::now() + Duration::from_secs(20);
            while !String::from_utf8_lossy(&seen).contains("Log lines were dropped") {
                assert!(Instant::now() < until, "no drop report");
                let n = io::Read::read(&mut reader, &mut buf).unwrap();
                seen.extend_from_slice(&buf[..n]);
                if seen.len() > 1 << 20 {
                    seen.drain(..seen.len() - 4096);
                }
            }
        });
    }

    #[test]
    fn reopen_writes_to_a_new_file_at_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = LogFile::open(&path).unwrap();
        file.make_writer().write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("log.1")).unwrap();
        file.make_writer().write_all(b"two\n").unwrap();
        file.reopen().unwrap();
        file.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("log.1")).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
