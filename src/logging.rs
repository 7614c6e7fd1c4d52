//! Logging for both processes: `tracing` with key=value fields, to stderr or a file.
//!
//! The supervisor's filter always lets the `collector` target through: the collector
//! already filtered its own log by level, and a crash trace it writes has no level at all,
//! so dropping either would lose the reason it died.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use vigil_actors::child_process::OUTPUT_TARGET;
use vigil_actors::config::LogLevel;

/// The environment variable through which the supervisor hands its level to the collector.
pub const CHILD_LEVEL_ENV: &str = "VIGIL_LOG_LEVEL";

/// Supervisor logging: timestamps, to `log_file` (appended) or stderr.
pub fn init_supervisor(level: LogLevel, log_file: Option<&Path>) -> anyhow::Result<()> {
    let filter = EnvFilter::new(format!("{},{OUTPUT_TARGET}=trace", level.as_str()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match log_file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder.with_writer(Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// Plain stderr logging at `level`, for one-shot commands.
pub fn init_stderr(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(level))
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
}

/// Collector logging: to stderr without timestamps (the supervisor stamps each line it
/// receives), at the level the supervisor passed down.
pub fn init_collector() {
    let level = std::env::var(CHILD_LEVEL_ENV).unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
}
