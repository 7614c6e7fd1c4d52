//! Reading the crash reports in `DATA_DIR/crashes` (written by the Supervisor, see
//! `vigil_actors::supervisor::crash_report`), for `vigil crashes list | show ID` and for the status
//! endpoint's `/crashes` and `/crashes/{id}`.
//!
//! Reading never trusts the directory: a report that cannot be read or parsed is listed with
//! its error instead of its fields, and an ID is checked by [`crash_report::valid_id`]
//! before it becomes part of a path, so no request can name a file outside the directory.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use vigil_actors::supervisor::crash_report::{self, CrashReport, ReportError};

/// One report as listed: the `ID.json` object (kept as JSON, so fields added by later
/// versions pass through) with `id` and `stderr_bytes`, or why it could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub report: Result<Map<String, Value>, String>,
    /// Size of `ID.stderr`; `None` when it is missing.
    pub stderr_bytes: Option<u64>,
}

impl Entry {
    /// The `/crashes` element: the report with `id` and `stderr_bytes`, or `{id, error}`.
    pub fn to_json(&self) -> Value {
        let mut obj = match &self.report {
            Ok(r) => r.clone(),
            Err(e) => Map::from_iter([("error".to_string(), Value::from(e.as_str()))]),
        };
        obj.insert("id".into(), Value::from(self.id.as_str()));
        obj.insert("stderr_bytes".into(), self.stderr_bytes.map_or(Value::Null, Value::from));
        Value::Object(obj)
    }

    /// The typed view, for display; `None` for a corrupt entry.
    pub fn typed(&self) -> Option<CrashReport> {
        let r = self.report.as_ref().ok()?;
        serde_json::from_value(Value::Object(r.clone())).ok()
    }
}

/// Every report in `dir`, newest first. A missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<Entry>, ReportError> {
    let mut ids = crash_report::list_ids(dir)?;
    ids.reverse();
    Ok(ids.into_iter().map(|id| read_entry(dir, id)).collect())
}

fn read_entry(dir: &Path, id: String) -> Entry {
    let path = dir.join(format!("{id}.json"));
    let report =
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display())).and_then(|bytes| {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => {
                    // The fields every report has must be there with the right types.
                    serde_json::from_value::<CrashReport>(Value::Object(map.clone()))
                        .map(|_| map)
                        .map_err(|e| format!("not a crash report: {e}"))
                }
                Ok(_) => Err("not a crash report: not a JSON object".to_string()),
                Err(e) => Err(format!("not a crash report: {e}")),
            }
        });
    let stderr_bytes = std::fs::metadata(stderr_path(dir, &id)).ok().map(|m| m.len());
    Entry { id, report, stderr_bytes }
}

/// `ID.stderr` in `dir`; only for an `id` that passed [`crash_report::valid_id`].
pub fn stderr_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.stderr"))
}

/// Why one report cannot be shown.
#[derive(Debug, PartialEq)]
pub enum ShowError {
    /// Not an ID vigil writes (e.g. `../x`): refused before any file is touched.
    InvalidId,
    NotFound,
    /// It exists but cannot be read or parsed.
    Unreadable(String),
}

/// One report and its stderr tail, exactly as stored.
pub struct Shown {
    pub entry: Entry,
    pub stderr: Vec<u8>,
}

/// Reads report `id` from `dir` with its stderr (empty when `ID.stderr` is missing).
pub fn show(dir: &Path, id: &str) -> Result<Shown, ShowError> {
    if !crash_report::valid_id(id) {
        return Err(ShowError::InvalidId);
    }
    if !dir.join(format!("{id}.json")).exists() {
        return Err(ShowError::NotFound);
    }
    let entry = read_entry(dir, id.to_string());
    if let Err(e) = &entry.report {
        return Err(ShowError::Unreadable(e.clone()));
    }
    let stderr = match std::fs::read(stderr_path(dir, id)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ShowError::Unreadable(format!("cannot read {id}.stderr: {e}"))),
    };
    Ok(Shown { entry, stderr })
}

impl Shown {
    /// The `/crashes/{id}` answer: the report, `stderr_bytes`, and `stderr` as text (invalid
    /// UTF-8 replaced; `stderr_lossy` says whether that happened, and `/crashes/{id}/stderr`
    /// has the exact bytes).
    pub fn to_json(&self) -> Value {
        let mut v = self.entry.to_json();
        let text = String::from_utf8_lossy(&self.stderr);
        let lossy = matches!(text, std::borrow::Cow::Owned(_));
        v["stderr"] = Value::from(text.into_owned());
        v["stderr_lossy"] = Value::from(lossy);
        v
    }
}
