//! [`Deaths`]: the last [`RING`] ends of the collector that vigil did not ask for (time,
//! reason, signal, signature, the restart delay that followed), for the status page's crash
//! timeline and `/status` `collector.crashes_per_hour`.
//!
//! A fixed ring, so memory stays bounded however long a crash loop lasts; persisted as
//! `DATA_DIR/deaths.json` so the picture survives a restart of the agent (crash reports
//! themselves are pruned to `crash_reports_keep`). The file is written on the disk thread, and
//! only the newest copy waits for it: a frozen disk holds one ring's bytes, never a queue.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::supervisor::disk::Disk;

/// Deaths kept.
pub const RING: usize = 1000;
/// The file in the data dir.
pub const FILE: &str = "deaths.json";
/// Hours in `crashes_per_hour`.
pub const HOURS: usize = 24;
const HOUR_MS: i64 = 3_600_000;

/// One end of the collector that vigil did not ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Death {
    /// When it ended (ms since the epoch).
    pub at_ms: i64,
    pub incarnation: u64,
    /// `signaled`, `exited` or `unresponsive`.
    pub reason: String,
    pub signal_name: Option<String>,
    pub code: Option<i32>,
    /// The stack's signature, once the report has one.
    #[serde(default)]
    pub signature: Option<String>,
    /// The collector in flight when it died.
    #[serde(default)]
    pub collector: Option<String>,
    /// How long the supervisor waited before the next incarnation (the backoff).
    #[serde(default)]
    pub restart_delay_ms: Option<u64>,
    #[serde(default)]
    pub crash_report: Option<String>,
}

impl Death {
    /// How it ended, short: `SIGSEGV`, `exit 3`, `unresponsive`.
    pub fn how(&self) -> String {
        match (&self.signal_name, self.code) {
            _ if self.reason == "unresponsive" => "unresponsive".into(),
            (Some(s), _) => s.clone(),
            (None, Some(c)) => format!("exit {c}"),
            (None, None) => self.reason.clone(),
        }
    }
}

/// The ring and where it is saved.
#[derive(Debug)]
pub struct Deaths {
    ring: VecDeque<Death>,
    path: PathBuf,
    /// The newest copy not yet written; `Some` while a write is queued on the disk thread.
    unsaved: Arc<Mutex<Option<Arc<Vec<Death>>>>>,
}

impl Deaths {
    /// Reads `DATA_DIR/deaths.json` (start-up, before anything is supervised). A missing file
    /// is an empty ring; a damaged one is set aside as `deaths.json.damaged` (kept for a
    /// person to read, never overwritten silently) with an ERROR line, and the ring starts empty.
    pub fn load(data_dir: &Path) -> Deaths {
        let path = data_dir.join(FILE);
        let ring = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Death>>(&bytes) {
                Ok(list) => {
                    let skip = list.len().saturating_sub(RING);
                    list.into_iter().skip(skip).collect()
                }
                Err(e) => {
                    let aside = data_dir.join(format!("{FILE}.damaged"));
                    let moved = std::fs::rename(&path, &aside);
                    tracing::error!(
                        file = %path.display(),
                        error = %e,
                        set_aside = moved.is_ok().then(|| aside.display().to_string()),
                        "The crash timeline's file is damaged; the timeline starts empty (crash reports are not affected)."
                    );
                    VecDeque::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "Cannot read the crash timeline; it starts empty.");
                VecDeque::new()
            }
        };
        Deaths { ring, path, unsaved: Arc::new(Mutex::new(None)) }
    }

    /// Adds a death, forgetting the oldest past [`RING`].
    pub fn push(&mut self, d: Death) {
        if self.ring.len() == RING {
            self.ring.pop_front();
        }
        self.ring.push_back(d);
    }

    /// The newest death, to complete (its restart delay).
    pub fn last_mut(&mut self) -> Option<&mut Death> {
        self.ring.back_mut()
    }

    /// The death whose crash report is `id` (its signature arrives with the stack).
    pub fn by_report(&mut self, id: &str) -> Option<&mut Death> {
        self.ring.iter_mut().rev().find(|d| d.crash_report.as_deref() == Some(id))
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Death> {
        self.ring.iter()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Deaths per hour over the last [`HOURS`] hours before `now_ms`, oldest hour first: the
    /// last element counts the 60 minutes up to now.
    pub fn per_hour(&self, now_ms: i64) -> Vec<u32> {
        per_hour(self.ring.iter().map(|d| d.at_ms), now_ms)
    }

    /// A copy of the ring, oldest first (what the status page reads).
    pub fn snapshot(&self) -> Arc<Vec<Death>> {
        Arc::new(self.ring.iter().cloned().collect())
    }

    /// Saves `copy` (a [`Deaths::snapshot`]) on `disk`'s thread, which also encodes it:
    /// atomically, a temporary file renamed over the old. Only the newest copy waits for a
    /// slow disk.
    pub fn save(&self, disk: &Disk, copy: Arc<Vec<Death>>) {
        let queued = {
            let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
            unsaved.replace(copy).is_some()
        };
        if queued {
            return; // the queued write takes the newest bytes
        }
        let (unsaved, path) = (self.unsaved.clone(), self.path.clone());
        disk.run_job(move || {
            let copy = unsaved.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(copy) = copy {
                let bytes = serde_json::to_vec(&*copy).unwrap_or_default();
                if let Err(e) = crate::supervisor::disk::write_atomically(&path, &bytes) {
                    tracing::error!(file = %path.display(), error = %e, "Cannot save the crash timeline; it will not survive a restart.");
                }
            }
        });
    }
}

/// Counts per hour of `times` (ms) over the [`HOURS`] hours before `now_ms`, oldest first.
pub fn per_hour(times: impl Iterator<Item = i64>, now_ms: i64) -> Vec<u32> {
    let mut counts = vec![0u32; HOURS];
    for at in times {
        let ago = now_ms.saturating_sub(at).max(0) / HOUR_MS;
        if (ago as usize) < HOURS {
            counts[HOURS - 1 - ago as usize] += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death(at_ms: i64, n: u64) -> Death {
        Death {
            at_ms,
            incarnation: n,
            reason: "signaled".into(),
            signal_name: Some("SIGSEGV".into()),
            code: None,
            signature: None,
            collector: Some("dns".into()),
            restart_delay_ms: Some(250),
            crash_report: Some(format!("r{n}")),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_thousand() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Deaths::load(dir.path());
        for n in 0..(RING as u64 + 250) {
            d.push(death(n as i64, n));
        }
        assert_eq!(d.len(), RING);
        assert_eq!(d.iter().next().unwrap().incarnation, 250);
        assert_eq!(d.iter().last().unwrap().incarnation, RING as u64 + 249);
    }

    #[test]
    fn it_survives_a_restart_and_a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::start(dir.path().join("crashes"), 10).unwrap();
        let mut d = Deaths::load(dir.path());
        d.push(death(1_000, 1));
        d.push(death(2_000, 2));
        d.by_report("r1").unwrap().signature = Some("abc".into());
        d.save(&disk, d.snapshot());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !dir.path().join(FILE).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let again = Deaths::load(dir.path());
        assert_eq!(again.iter().cloned().collect::<Vec<_>>(), d.iter().cloned().collect::<Vec<_>>());
        assert_eq!(again.iter().next().unwrap().signature.as_deref(), Some("abc"));

        std::fs::write(dir.path().join(FILE), b"[{\"at_ms\": oops").unwrap();
        let damaged = Deaths::load(dir.path());
        assert!(damaged.is_empty());
        assert_eq!(std::fs::read(dir.path().join("deaths.json.damaged")).unwrap(), b"[{\"at_ms\": oops");
    }

    #[test]
    fn hourly_counts_end_with_the_current_hour() {
        let now = 100 * HOUR_MS;
        let times = [
            now,
            now - 1,
            now - HOUR_MS + 1,
            now - HOUR_MS,
            now - 23 * HOUR_MS - 5,
            now - 24 * HOUR_MS,
            now + 10,
        ];
        let c = per_hour(times.into_iter(), now);
        assert_eq!(c.len(), HOURS);
        // now, now-1, now-HOUR+1 and a clock-skewed now+10: the last hour.
        assert_eq!(c[23], 4);
        assert_eq!(c[22], 1);
        assert_eq!(c[0], 1);
        assert_eq!(c.iter().sum::<u32>(), 6);
    }
}
