//! Crash reports in `DATA_DIR/crashes` (CONTRACT §6): `ID.json` with how the collector ended,
//! and `ID.stderr` with the last bytes of its stderr, exactly as written.
//!
//! Commit point: `ID.stderr` is written and synced first, then `ID.json` through a temporary
//! file and a rename. A report exists once its `.json` exists; a `.stderr` without one is
//! the remains of an interrupted write and is removed by [`prune`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How the collector's incarnation ended (the `last_exit` object of `/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastExit {
    /// RFC 3339 time of the exit.
    pub at: String,
    /// `signaled`, `exited`, `unresponsive` or `stopped`.
    pub reason: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub signal_name: Option<String>,
    pub core_dumped: bool,
    pub uptime_ms: u64,
    /// The collector that was running when the process died, if one was.
    pub collector_in_flight: Option<String>,
    /// ID of the crash report written for this exit (none for a clean exit).
    pub crash_report: Option<String>,
    /// What the supervisor saw beyond the exit status (e.g. stdout closed while alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a SIGKILL: whether the kernel's OOM killer sent it (null when unknown, and for
    /// every other end).
    #[serde(default)]
    pub oom_killed: Option<bool>,
}

/// `ID.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashReport {
    pub id: String,
    pub version: String,
    pub pid: u32,
    pub incarnation: u64,
    #[serde(flatten)]
    pub exit: LastExit,
    /// Bytes the collector wrote to stderr in its whole life.
    pub stderr_total_bytes: u64,
    /// Bytes of that kept in `ID.stderr` (the last ones).
    pub stderr_kept_bytes: u64,
    /// Where it died (CONTRACT §6 "Where it died").
    #[serde(flatten)]
    pub forensics: Forensics,
}

/// Where the collector died: the crashing thread's stack, or why there is none.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Forensics {
    /// Innermost first; null when no stack was captured (see `stack_error`).
    #[serde(default)]
    pub stack: Option<Vec<crate::supervisor::stack::Frame>>,
    /// Frames beyond the 256 kept.
    #[serde(default)]
    pub frames_omitted: usize,
    /// The crashing thread's name.
    #[serde(default)]
    pub thread: Option<String>,
    /// `in_process` (or `ptrace`): how the stack was taken.
    #[serde(default)]
    pub capture: Option<String>,
    /// Hash of the innermost frames of vigil's own code ([`crate::supervisor::stack::signature`]).
    #[serde(default)]
    pub signature: Option<String>,
    /// Why there is no stack, when a death by a fatal signal has none.
    #[serde(default)]
    pub stack_error: Option<String>,
    /// For a hang: every thread of the collector with its stack, taken before the SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<Vec<crate::supervisor::stack::ThreadStack>>,
    /// The panic that ended the process, as its stderr says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<Panic>,
}

/// `panic` of a report: `{message, location}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Panic {
    pub message: String,
    /// `FILE:LINE:COL`.
    pub location: String,
}

impl Panic {
    /// The last panic Rust's standard hook reported in `stderr` (`thread 'NAME' panicked at
    /// FILE:LINE:COL:` then the message, up to a `note:` or `stack backtrace:` line).
    pub fn from_stderr(stderr: &[u8]) -> Option<Panic> {
        let text = String::from_utf8_lossy(stderr);
        // `thread 'NAME' panicked at …`, or `thread 'NAME' (TID) panicked at …` (newer Rust).
        let start = text
            .match_indices(" panicked at ")
            .map(|(i, _)| i)
            .filter(|&i| text[..i].rsplit('\n').next().is_some_and(|l| l.starts_with("thread '")))
            .last()?;
        let rest = &text[start + " panicked at ".len()..];
        let (location, after) = rest.split_once('\n')?;
        let location = location.trim_end().strip_suffix(':').unwrap_or(location).to_string();
        let message: Vec<&str> = after
            .lines()
            .take_while(|l| !l.starts_with("note: ") && !l.starts_with("stack backtrace:"))
            .collect();
        Some(Panic { message: message.join("\n").trim_end().to_string(), location })
    }
}

/// Errors reading or writing reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a crash report: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("no crash report `{0}`")]
    NotFound(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io { path: path.to_path_buf(), source }
}

/// A new report ID: UTC time to the millisecond (so names sort by age) and the child's pid.
pub fn new_id(now: chrono::DateTime<chrono::Utc>, pid: u32) -> String {
    format!("{}-{pid}", now.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// The time an ID was stamped with (ms since the epoch), if it is one of [`new_id`]'s.
pub fn id_time_ms(id: &str) -> Option<i64> {
    let stamp = id.split('-').next()?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ").ok()?;
    Some(t.and_utc().timestamp_millis())
}

/// Report IDs are generated here; anything else is refused before touching a path.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !id.starts_with('.')
}

/// Writes `ID.stderr` then `ID.json` into `dir` (created if missing).
pub fn write(dir: &Path, report: &CrashReport, stderr_tail: &[u8]) -> Result<(), ReportError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    let stderr_path = dir.join(format!("{}.stderr", report.id));
    write_synced(&stderr_path, stderr_tail)?;
    let json = serde_json::to_vec_pretty(report).expect("a crash report always serialises");
    let tmp = dir.join(format!(".{}.json.tmp", report.id));
    write_synced(&tmp, &json)?;
    let final_path = dir.join(format!("{}.json", report.id));
    fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Written with mode 0600 from the start: a stderr tail can hold secrets.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// IDs of the reports in `dir`, oldest first.
pub fn list_ids(dir: &Path) -> Result<Vec<String>, ReportError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReportError::Io { path: dir.to_path_buf(), source: e }),
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_string))
        .filter(|id| valid_id(id))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Reads `ID.json`.
pub fn load(dir: &Path, id: &str) -> Result<CrashReport, ReportError> {
    if !valid_id(id) {
        return Err(ReportError::NotFound(id.to_string()));
    }
    let path = dir.join(format!("{id}.json"));
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReportError::NotFound(id.to_string()))
        }
        Err(e) => return Err(ReportError::Io { path, source: e }),
    };
    serde_json::from_slice(&bytes).map_err(|source| ReportError::Parse { path, source })
}

/// The reports in `dir` newer than a given ID, as a sink's crash-report source
/// ([`crate::upload::CrashReportSource`]): the supervisor hands this to each sink.
pub fn upload_source(dir: PathBuf) -> crate::upload::CrashReportSource {
    Box::new(move |after: &str| {
        let ids = list_ids(&dir).unwrap_or_default();
        ids.into_iter()
            .filter(|id| id.as_str() > after)
            .map(|id| {
                let report = load(&dir, &id)
                    .map_err(|e| e.to_string())
                    .map(|r| serde_json::to_value(&r).unwrap_or_default());
                (id, report)
            })
            .collect()
    })
}

/// Keeps the newest `keep` reports; removes older ones and orphaned `.stderr` files.
/// Returns how many reports were removed.
pub fn prune(dir: &Path, keep: usize) -> Result<usize, ReportError> {
    let ids = list_ids(dir)?;
    let excess = ids.len().saturating_sub(keep);
    for id in &ids[..excess] {
        for ext in ["json", "stderr"] {
            let p = dir.join(format!("{id}.{ext}"));
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(ReportError::Io { path: p, source: e });
                }
            }
        }
    }
    let kept: std::collections::HashSet<&String> = ids[excess..].iter().collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".json.tmp") {
                let _ = fs::remove_file(e.path());
                continue;
            }
            if let Some(id) = name.strip_suffix(".stderr") {
                if !kept.contains(&id.to_string()) && !dir.join(format!("{id}.json")).exists() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(excess)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_panic_in_stderr_gives_message_and_location() {
        let err = b"noise\nthread 'a' panicked at x.rs:1:2:\nold\n\
            thread 'main' (42) panicked at actors/src/collector/fault.rs:150:32:\nVIGIL_FAULT=panic: injected\n\
            second line\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        let p = Panic::from_stderr(err).unwrap();
        assert_eq!(p.location, "actors/src/collector/fault.rs:150:32");
        assert_eq!(p.message, "VIGIL_FAULT=panic: injected\nsecond line");
        assert_eq!(Panic::from_stderr(b"no panic here\n"), None);
    }

    fn report(id: &str) -> CrashReport {
        CrashReport {
            id: id.into(),
            version: "0.1.0".into(),
            pid: 42,
            incarnation: 3,
            exit: LastExit {
                at: "2026-11-27T04:00:00Z".into(),
                reason: "signaled".into(),
                code: None,
                signal: Some(11),
                signal_name: Some("SIGSEGV".into()),
                core_dumped: false,
                uptime_ms: 1500,
                collector_in_flight: None,
                crash_report: Some(id.into()),
                detail: None,
                oom_killed: None,
            },
            stderr_total_bytes: 5,
            stderr_kept_bytes: 5,
            forensics: Default::default(),
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-crash-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn write_load_list_prune() {
        let dir = tempdir("wlp");
        for i in 0..5 {
            let id = format!("20261127T04000{i}.000Z-42");
            write(&dir, &report(&id), b"\xff\x00bytes").unwrap();
        }
        fs::write(dir.join("20200101T000000.000Z-1.stderr"), b"orphan").unwrap();
        let ids = list_ids(&dir).unwrap();
        assert_eq!(ids.len(), 5);
        let r = load(&dir, &ids[0]).unwrap();
        assert_eq!(r, report(&ids[0]));
        assert_eq!(fs::read(dir.join(format!("{}.stderr", ids[0]))).unwrap(), b"\xff\x00bytes");
        assert_eq!(prune(&dir, 2).unwrap(), 3);
        assert_eq!(list_ids(&dir).unwrap(), ids[3..].to_vec());
        assert!(!dir.join("20200101T000000.000Z-1.stderr").exists(), "orphan removed");
        assert!(matches!(load(&dir, "../etc/passwd"), Err(ReportError::NotFound(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_sort_by_time() {
        use chrono::TimeZone;
        let at = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let a = new_id(at, 9);
        assert_eq!(a, "20260102T030405.000Z-9");
        assert!(valid_id(&a));
        assert_eq!(id_time_ms(&a), Some(at.timestamp_millis()));
        assert_eq!(id_time_ms("garbage"), None);
    }
}
