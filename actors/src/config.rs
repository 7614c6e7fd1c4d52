//! The configuration schema: one struct per TOML table, every key documented, unknown keys
//! rejected. Parsing the file (and pointing at `line:column`) is the binary's job; this module
//! owns the shape, the defaults and the semantic checks ([`Config::validate`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub supervisor: SupervisorConfig,
    pub status: StatusConfig,
    pub collectors: CollectorsConfig,
    /// `[[upload]]`: zero or more sinks; none means local only.
    pub upload: Vec<UploadConfig>,
    pub checkin: CheckinConfig,
}

/// `[checkin]`: remote settings, upload tokens and collector modules (docs/checkins.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckinConfig {
    /// `http://` or `https://` URL the check-ins are POSTed to; "" disables check-ins.
    pub url: String,
    /// Seconds between two check-ins (with jitter; failures back off further).
    pub interval_secs: f64,
    /// File holding the Ed25519 public key (64 hex digits) that module manifests must be
    /// signed with; required when `url` is set.
    pub public_key_file: String,
    /// PEM file of CA certificates trusted for an `https://` URL, besides the system's.
    pub ca_file: String,
}

impl Default for CheckinConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            interval_secs: 300.0,
            public_key_file: String::new(),
            ca_file: String::new(),
        }
    }
}

impl CheckinConfig {
    pub fn interval(&self) -> Duration {
        secs(self.interval_secs)
    }
}

/// Which protocol a sink speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkType {
    /// The native protocol: MessagePack batches over a WebSocket (docs/protocol.md).
    #[default]
    Vigil,
    /// Prometheus remote write 1.0.
    RemoteWrite,
}

/// One `[[upload]]` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Unique name; also the spool directory `DATA_DIR/spool/NAME`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// `ws://` or `wss://` for `vigil`; `http://` or `https://` for `remote_write`.
    pub url: String,
    /// File holding a bearer token sent as `Authorization: Bearer`.
    pub token_file: String,
    /// PEM file of CA certificates trusted for `wss://`/`https://`, besides the system's.
    pub ca_file: String,
    /// Seconds between two batches.
    pub flush_interval_secs: f64,
    /// Spool size limit in bytes; the oldest batches are dropped (and counted) past it.
    pub spool_max_bytes: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            name: "main".into(),
            kind: SinkType::Vigil,
            url: "ws://127.0.0.1:9780/v1/ingest".into(),
            token_file: String::new(),
            ca_file: String::new(),
            flush_interval_secs: 10.0,
            spool_max_bytes: 268_435_456,
        }
    }
}

/// `[agent]`: identity, files and logging.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Host name reported with every sample; "" means the system host name.
    pub hostname: String,
    /// Where crash reports (and later the spool) live; "" means the built-in default
    /// (/var/lib/vigil as root, else $XDG_STATE_HOME/vigil or ~/.local/state/vigil).
    pub data_dir: String,
    /// Log destination; "" means stderr.
    pub log_file: String,
    /// Least severe level logged.
    pub log_level: LogLevel,
    /// How each log line is written: `text` or `json` (one object per line).
    pub log_format: LogFormat,
    /// Tags added to every sample.
    pub tags: BTreeMap<String, String>,
}

/// Log levels, most severe first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// The shape of the supervisor's log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL target: message key=value…`, for people.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, `fields`.
    Json,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `[supervisor]`: heartbeats, the restart policy and crash reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Seconds between heartbeats sent to the collector (decimals allowed).
    pub heartbeat_interval_secs: f64,
    /// Seconds without a heartbeat ack after which the collector is killed (SIGKILL).
    pub heartbeat_timeout_secs: f64,
    /// First restart delay in milliseconds; doubles per consecutive crash, with jitter.
    pub restart_initial_delay_ms: u64,
    /// Upper bound of the restart delay, in seconds.
    pub restart_max_delay_secs: f64,
    /// An incarnation that lived this many seconds resets the backoff.
    pub stable_after_secs: f64,
    /// This many crashes within `crash_loop_window_secs` put the collector in `crash_loop`.
    pub crash_loop_crashes: u32,
    /// Window, in seconds, for `crash_loop_crashes`.
    pub crash_loop_window_secs: f64,
    /// On shutdown: seconds between closing the collector's stdin and SIGKILL.
    pub stop_grace_secs: f64,
    /// Bytes of the collector's stderr kept for each crash report.
    pub stderr_tail_bytes: u64,
    /// Crash reports kept in DATA_DIR/crashes (oldest removed first).
    pub crash_reports_keep: usize,
    /// Crashes inside the same collector before it is quarantined.
    pub quarantine_after_crashes: u32,
    /// Seconds a quarantined collector stays disabled.
    pub quarantine_secs: f64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_secs: 5.0,
            heartbeat_timeout_secs: 30.0,
            restart_initial_delay_ms: 250,
            restart_max_delay_secs: 60.0,
            stable_after_secs: 300.0,
            crash_loop_crashes: 5,
            crash_loop_window_secs: 120.0,
            stop_grace_secs: 10.0,
            stderr_tail_bytes: 1_048_576,
            crash_reports_keep: 100,
            quarantine_after_crashes: 2,
            quarantine_secs: 3600.0,
        }
    }
}

impl SupervisorConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        secs(self.heartbeat_interval_secs)
    }
    pub fn heartbeat_timeout(&self) -> Duration {
        secs(self.heartbeat_timeout_secs)
    }
    pub fn restart_initial_delay(&self) -> Duration {
        Duration::from_millis(self.restart_initial_delay_ms)
    }
    pub fn restart_max_delay(&self) -> Duration {
        secs(self.restart_max_delay_secs)
    }
    pub fn stable_after(&self) -> Duration {
        secs(self.stable_after_secs)
    }
    pub fn crash_loop_window(&self) -> Duration {
        secs(self.crash_loop_window_secs)
    }
    pub fn stop_grace(&self) -> Duration {
        secs(self.stop_grace_secs)
    }
}

/// `[status]`: the local HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// "IP:port", "unix:/path", or "" to disable. Host names are refused on purpose: the
    /// supervisor never resolves names through libc.
    pub listen: String,
    /// File holding the bearer token; required when `listen` is not a loopback address.
    pub token_file: String,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9779".into(), token_file: String::new() }
    }
}

/// Where the status endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Disabled,
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl StatusConfig {
    /// Parses `listen`; the error says what form is expected.
    pub fn listen_addr(&self) -> Result<ListenAddr, String> {
        let s = self.listen.trim();
        if s.is_empty() {
            return Ok(ListenAddr::Disabled);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("`{s}`: a unix socket path must be absolute (unix:/path)"));
            }
            return Ok(ListenAddr::Unix(path.into()));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "`{s}` is not IP:port or unix:/path (host names are not accepted, e.g. use 127.0.0.1:9779)"
            )
        })
    }
}

pub use crate::collectors::CollectorsConfig;

/// One semantic error: the dotted key path (`supervisor.heartbeat_timeout_secs`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl Config {
    /// Every semantic problem in the config (empty when it is valid).
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad =
            |path: &str, message: String| out.push(ConfigProblem { path: path.to_string(), message });
        let s = &self.supervisor;
        for (key, v) in [
            ("supervisor.heartbeat_interval_secs", s.heartbeat_interval_secs),
            ("supervisor.heartbeat_timeout_secs", s.heartbeat_timeout_secs),
            ("supervisor.restart_max_delay_secs", s.restart_max_delay_secs),
            ("supervisor.crash_loop_window_secs", s.crash_loop_window_secs),
            ("collectors.interval_secs", self.collectors.interval_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1e7) {
                bad(key, format!("must be a number of seconds above 0 and at most 10000000, got {v}"));
            }
        }
        for (key, v) in [
            ("supervisor.stable_after_secs", s.stable_after_secs),
            ("supervisor.stop_grace_secs", s.stop_grace_secs),
            ("supervisor.quarantine_secs", s.quarantine_secs),
        ] {
            if !(v.is_finite() && (0.0..=1e7).contains(&v)) {
                bad(key, format!("must be a number of seconds from 0 to 10000000, got {v}"));
            }
        }
        if s.heartbeat_timeout_secs <= s.heartbeat_interval_secs {
            bad(
                "supervisor.heartbeat_timeout_secs",
                format!(
                    "must be longer than heartbeat_interval_secs ({}), or every collector would be killed",
                    s.heartbeat_interval_secs
                ),
            );
        }
        if s.restart_initial_delay_ms as f64 > s.restart_max_delay_secs * 1000.0 {
            bad(
                "supervisor.restart_initial_delay_ms",
                format!("must not exceed restart_max_delay_secs ({} s)", s.restart_max_delay_secs),
            );
        }
        if s.restart_initial_delay_ms == 0 {
            bad(
                "supervisor.restart_initial_delay_ms",
                "must be at least 1: restarting with no delay is a busy loop".into(),
            );
        }
        if s.crash_loop_crashes == 0 {
            bad("supervisor.crash_loop_crashes", "must be at least 1".into());
        }
        if s.quarantine_after_crashes == 0 {
            bad("supervisor.quarantine_after_crashes", "must be at least 1".into());
        }
        if s.stderr_tail_bytes > 256 * 1024 * 1024 {
            bad("supervisor.stderr_tail_bytes", "must be at most 268435456 (256 MiB)".into());
        }
        if s.crash_reports_keep == 0 {
            bad("supervisor.crash_reports_keep", "must be at least 1: a crash must leave a report".into());
        }
        match self.status.listen_addr() {
            Err(e) => bad("status.listen", e),
            Ok(ListenAddr::Tcp(addr)) if !addr.ip().is_loopback() && self.status.token_file.is_empty() => {
                bad(
                    "status.listen",
                    format!(
                    "{addr} is not a loopback address: set status.token_file so requests need a bearer token"
                ),
                )
            }
            Ok(_) => {}
        }
        for k in self.agent.tags.keys() {
            if k.is_empty() {
                bad("agent.tags", "tag names must not be empty".into());
            }
        }
        out.extend(self.collectors.validate());
        let c = &self.checkin;
        if !(c.interval_secs.is_finite() && c.interval_secs > 0.0 && c.interval_secs <= 1e7) {
            out.push(ConfigProblem {
                path: "checkin.interval_secs".into(),
                message: format!(
                    "must be a number of seconds above 0 and at most 10000000, got {}",
                    c.interval_secs
                ),
            });
        }
        if !c.url.is_empty() {
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                out.push(ConfigProblem {
                    path: "checkin.url".into(),
                    message: "must start with http:// or https://".into(),
                });
            }
            if c.public_key_file.is_empty() {
                out.push(ConfigProblem {
                    path: "checkin.url".into(),
                    message: "needs checkin.public_key_file: modules are only run when signed with that key"
                        .into(),
                });
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.upload.iter().enumerate() {
            let at = |k: &str| format!("upload.{i}.{k}");
            if u.name.is_empty()
                || !u.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                out.push(ConfigProblem {
                    path: at("name"),
                    message: "must be letters, digits, - or _ (it names the spool directory)".into(),
                });
            } else if !names.insert(u.name.clone()) {
                out.push(ConfigProblem {
                    path: at("name"),
                    message: format!("sink name `{}` is used twice", u.name),
                });
            }
            let schemes: &[&str] = match u.kind {
                SinkType::Vigil => &["ws://", "wss://"],
                SinkType::RemoteWrite => &["http://", "https://"],
            };
            if !schemes.iter().any(|s| u.url.starts_with(s)) {
                out.push(ConfigProblem {
                    path: at("url"),
                    message: format!("must start with {}", schemes.join(" or ")),
                });
            }
            if !(u.flush_interval_secs.is_finite()
                && u.flush_interval_secs > 0.0
                && u.flush_interval_secs <= 1e7)
            {
                out.push(ConfigProblem {
                    path: at("flush_interval_secs"),
                    message: "must be a number of seconds above 0".into(),
                });
            }
            if u.spool_max_bytes < 1024 * 1024 {
                out.push(ConfigProblem {
                    path: at("spool_max_bytes"),
                    message: "must be at least 1048576 (1 MiB)".into(),
                });
            }
        }
        out
    }
}

/// A warning when a file holding a secret (a bearer token) can be read by its group or by
/// others; `None` when it is private or cannot be inspected.
pub fn secret_file_warning(path: &str, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!("{what} {path} is readable by group or others (mode {mode:03o}); `chmod 600 {path}` it")
    })
}

/// Seconds (validated finite and non-negative) as a `Duration`.
pub fn secs(v: f64) -> Duration {
    if v.is_finite() && v > 0.0 {
        Duration::from_secs_f64(v.min(1e9))
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let c = Config::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.supervisor.heartbeat_interval(), Duration::from_secs(5));
        assert_eq!(c.supervisor.heartbeat_timeout(), Duration::from_secs(30));
        assert_eq!(c.supervisor.stderr_tail_bytes, 1 << 20);
        assert_eq!(c.status.listen_addr(), Ok(ListenAddr::Tcp("127.0.0.1:9779".parse().unwrap())));
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut c = Config::default();
        c.supervisor.heartbeat_interval_secs = 0.0;
        c.supervisor.crash_loop_crashes = 0;
        c.status.listen = "localhost:9779".into();
        let paths: Vec<String> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            ["supervisor.heartbeat_interval_secs", "supervisor.crash_loop_crashes", "status.listen"]
        );
    }

    #[test]
    fn a_checkin_url_needs_a_public_key_and_http() {
        let mut c = Config::default();
        c.checkin.url = "ftp://x".into();
        c.checkin.interval_secs = 0.0;
        let paths: Vec<String> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["checkin.interval_secs", "checkin.url", "checkin.url"]);
        c.checkin = CheckinConfig {
            url: "http://127.0.0.1:9780/v1/checkin".into(),
            public_key_file: "/etc/vigil/module.pub".into(),
            ..CheckinConfig::default()
        };
        assert!(c.validate().is_empty());
    }

    #[test]
    fn non_loopback_listen_needs_a_token() {
        let mut c = Config::default();
        c.status.listen = "0.0.0.0:9779".into();
        assert_eq!(c.validate().len(), 1);
        c.status.token_file = "/etc/vigil/token".into();
        assert!(c.validate().is_empty());
        c.status.listen = "unix:relative".into();
        assert_eq!(c.validate().len(), 1);
    }
}
