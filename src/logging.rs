//! Logging for both processes: `tracing` with key=value fields, to stderr or a file.
//!
//! The supervisor's filter always lets the `collector` target through: the collector
//! already filtered its own log by level, and a crash trace it writes has no level at all,
//! so dropping either would lose the reason it died.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use vigil_actors::child_process::OUTPUT_TARGET;
use vigil_actors::config::LogLevel;

/// The environment variable through which the supervisor hands its level to the collector.
pub const CHILD_LEVEL_ENV: &str = "VIGIL_LOG_LEVEL";

/// A level filter from directives like `info,collector=trace` (no regex engine needed).
fn targets(directives: &str) -> Targets {
    directives.parse().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}

/// Supervisor logging: timestamps, to `log_file` (appended) or stderr.
pub fn init_supervisor(level: LogLevel, log_file: Option<&Path>) -> anyhow::Result<()> {
    let filter = targets(&format!("{},{OUTPUT_TARGET}=trace", level.as_str()));
    let fmt = tracing_subscriber::fmt::layer().with_ansi(false);
    match log_file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            tracing_subscriber::registry().with(fmt.with_writer(Mutex::new(file)).with_filter(filter)).init();
        }
        None => {
            tracing_subscriber::registry().with(fmt.with_writer(std::io::stderr).with_filter(filter)).init()
        }
    }
    Ok(())
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
