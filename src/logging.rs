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

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// Supervisor logging: timestamps, to `log_file` (appended) or stderr. Returns the file's
/// handle, for reopening it on SIGHUP.
pub fn init_supervisor(
    level: LogLevel,
    format: LogFormat,
    log_file: Option<&Path>,
) -> anyhow::Result<Option<LogFile>> {
    let filter = targets(&format!("{},{OUTPUT_TARGET}=trace", level.as_str()));
    let (layer, file) = match log_file {
        Some(path) => {
            let file = LogFile::open(path)?;
            (fmt_layer(format, file.clone()), Some(file))
        }
        None => (fmt_layer(format, io::stderr), None),
    };
    tracing_subscriber::registry().with(layer.with_filter(filter)).init();
    Ok(file)
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
