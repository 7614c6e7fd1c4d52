//! [`Disk`]: the supervisor's disk thread. Every file the Supervisor writes while it
//! supervises (crash reports and their pruning, the module state) is written here, so that a
//! frozen, full or slow disk stalls this thread and nothing else: heartbeats, restarts, the
//! status endpoint and the signals go on (CONTRACT §10).
//!
//! A crash report is handed over in memory and counted as pending until the disk took it
//! (`/status` `collector.pending_crash_reports`). One that cannot be written (a full disk,
//! an unwritable directory) stays in memory and is tried again every [`RETRY_EVERY`]; at most
//! `crash_reports_keep` wait, and past that the oldest is given up, with an ERROR line (the
//! directory would keep only that many anyway).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::supervisor::crash_report::{self, CrashReport};

/// How often a crash report the disk refused is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// The handle the Supervisor keeps; cheap to clone.
#[derive(Clone)]
pub struct Disk {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Crash reports handed over and not yet on disk (queued, being written, or waiting
    /// for a retry).
    pending_reports: AtomicUsize,
    /// The time (ms) in the newest report ID, in the crash dir or handed out since: IDs only go
    /// forward ([`Disk::report_time_ms`]).
    newest_id_ms: AtomicI64,
    /// Why the last crash report could not be written, while reports wait for the disk.
    last_error: Mutex<Option<String>>,
    crash_dir: PathBuf,
    keep: usize,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Reports the disk refused, oldest first, with when they were last tried.
    retry: VecDeque<(Box<Pending>, Instant)>,
}

enum Job {
    Report(Box<Pending>),
    Other(Box<dyn FnOnce() + Send>),
}

struct Pending {
    report: CrashReport,
    stderr_tail: Vec<u8>,
    /// Whether its failure was logged already (once per report, not once per retry).
    failed: bool,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("pending_reports", &self.pending_reports()).finish()
    }
}

impl Disk {
    /// Starts the thread. It prunes `crash_dir` to `keep` reports first.
    pub fn start(crash_dir: PathBuf, keep: usize) -> std::io::Result<Disk> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            pending_reports: AtomicUsize::new(0),
            newest_id_ms: AtomicI64::new(i64::MIN),
            last_error: Mutex::new(None),
            crash_dir,
            keep: keep.max(1),
        });
        let worker = inner.clone();
        std::thread::Builder::new().name("vigil-disk".into()).spawn(move || worker.run())?;
        Ok(Disk { inner })
    }

    /// The time for a new report's ID: `now_ms`, or 1 ms after the newest ID so far when the
    /// clock is behind it (it stepped back). Report IDs, which name the files and order them
    /// for pruning and upload, so always increase in the order the reports are made; the
    /// report's `at` keeps the wall-clock time.
    pub fn report_time_ms(&self, now_ms: i64) -> i64 {
        let mut cur = self.inner.newest_id_ms.load(Ordering::Relaxed);
        loop {
            let next = now_ms.max(cur.saturating_add(1));
            match self.inner.newest_id_ms.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Hands a crash report over; returns at once.
    pub fn write_report(&self, report: CrashReport, stderr_tail: Vec<u8>) {
        self.hold_report();
        self.write_held_report(report, stderr_tail);
    }

    /// Counts a report as pending before it exists (it waits for its stack); the
    /// matching [`Disk::write_held_report`] hands it over without counting it again.
    pub fn hold_report(&self) {
        self.inner.pending_reports.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands over a report counted by [`Disk::hold_report`].
    pub fn write_held_report(&self, report: CrashReport, stderr_tail: Vec<u8>) {
        self.push(Job::Report(Box::new(Pending { report, stderr_tail, failed: false })));
    }

    /// Runs `f` on the disk thread, after everything handed over before it.
    pub fn run_job(&self, f: impl FnOnce() + Send + 'static) {
        self.push(Job::Other(Box::new(f)));
    }

    /// Crash reports not yet on disk.
    pub fn pending_reports(&self) -> usize {
        self.inner.pending_reports.load(Ordering::Relaxed)
    }

    /// Why crash reports cannot be written (an unwritable or missing crash dir, a full disk),
    /// while any wait for the disk: `/status` `collector.crash_report_error`.
    pub fn report_error(&self) -> Option<String> {
        if self.pending_reports() == 0 {
            return None;
        }
        self.inner.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (without blocking the caller's thread) until every crash report is on disk, at
    /// most `within`; returns how many are still pending.
    pub async fn flush_reports(&self, within: Duration) -> usize {
        let until = Instant::now() + within;
        while self.pending_reports() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.pending_reports()
    }

    fn push(&self, job: Job) {
        let mut q = self.inner.lock();
        q.jobs.push_back(job);
        self.inner.give_up_past_keep(&mut q);
        drop(q);
        self.inner.wake.notify_one();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At most `keep` reports wait; the oldest beyond that are given up (the crash dir would
    /// prune them anyway), loudly.
    fn give_up_past_keep(&self, q: &mut Queue) {
        let queued =
            |q: &Queue| q.jobs.iter().filter(|j| matches!(j, Job::Report(_))).count() + q.retry.len();
        while queued(q) > self.keep {
            let lost = match q.retry.pop_front() {
                Some((p, _)) => p,
                None => {
                    let i = q.jobs.iter().position(|j| matches!(j, Job::Report(_))).expect("counted above");
                    match q.jobs.remove(i) {
                        Some(Job::Report(p)) => p,
                        _ => unreachable!("position found a report"),
                    }
                }
            };
            self.pending_reports.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(
                report = %lost.report.id,
                keep = self.keep,
                "Crash report given up before it reached the disk: more than crash_reports_keep are waiting for it."
            );
        }
    }

    fn run(&self) {
        if let Err(e) = crash_report::prune(&self.crash_dir, self.keep) {
            tracing::warn!(error = %e, "Cannot prune old crash reports.");
        }
        // New IDs sort after every report already there, whatever the clock says now.
        let newest = crash_report::list_ids(&self.crash_dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|id| crash_report::id_time_ms(id))
            .max();
        if let Some(ms) = newest {
            self.newest_id_ms.fetch_max(ms, Ordering::Relaxed);
        }
        loop {
            let job = {
                let mut q = self.lock();
                loop {
                    if let Some(j) = q.jobs.pop_front() {
                        break Some(j);
                    }
                    let due = q.retry.front().map(|&(_, at)| at + RETRY_EVERY);
                    match due {
                        Some(at) if at <= Instant::now() => break None,
                        Some(at) => {
                            let wait = at.saturating_duration_since(Instant::now());
                            q = self.wake.wait_timeout(q, wait).unwrap_or_else(|e| e.into_inner()).0;
                        }
                        None => q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            match job {
                Some(Job::Other(f)) => f(),
                Some(Job::Report(p)) => self.write(p),
                None => {
                    let p = self.lock().retry.pop_front();
                    if let Some((p, _)) = p {
                        self.write(p);
                    }
                }
            }
        }
    }

    fn write(&self, mut p: Box<Pending>) {
        match crash_report::write(&self.crash_dir, &p.report, &p.stderr_tail) {
            Ok(()) => {
                self.pending_reports.fetch_sub(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if p.failed {
                    tracing::info!(report = %p.report.id, "Crash report written (the disk takes it again).");
                }
                if let Err(e) = crash_report::prune(&self.crash_dir, self.keep) {
                    tracing::warn!(error = %e, "Cannot prune old crash reports.");
                }
            }
            Err(e) => {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                if !p.failed {
                    tracing::error!(
                        report = %p.report.id,
                        error = %e,
                        retry_secs = RETRY_EVERY.as_secs(),
                        "Cannot write the crash report; it is kept in memory and tried again."
                    );
                }
                p.failed = true;
                let mut q = self.lock();
                q.retry.push_back((p, Instant::now()));
                self.give_up_past_keep(&mut q);
            }
        }
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one:
/// a temp file `.NAME.tmp` beside it, fsynced, renamed over it, then the directory fsynced
/// (the rename survives a crash only once the directory is). Creates the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::crash_report::LastExit;

    fn report(id: &str) -> CrashReport {
        CrashReport {
            id: id.into(),
            version: "v".into(),
            pid: 1,
            incarnation: 1,
            exit: LastExit {
                at: "t".into(),
                reason: "signaled".into(),
                code: None,
                signal: Some(11),
                signal_name: Some("SIGSEGV".into()),
                core_dumped: false,
                uptime_ms: 1,
                collector_in_flight: None,
                crash_report: Some(id.into()),
                detail: None,
                oom_killed: None,
            },
            stderr_total_bytes: 1,
            stderr_kept_bytes: 1,
            forensics: Default::default(),
        }
    }

    async fn until_zero(disk: &Disk) {
        assert_eq!(disk.flush_reports(Duration::from_secs(10)).await, 0);
    }

    /// A report the disk refuses (its directory's place is taken by a file) stays pending
    /// and is written once the disk takes it.
    #[actix_rt::test]
    async fn a_refused_report_waits_in_memory_and_is_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let crashes = dir.path().join("crashes");
        std::fs::write(&crashes, b"in the way").unwrap();
        let disk = Disk::start(crashes.clone(), 10).unwrap();
        disk.write_report(report("20200101T000000.000Z-1"), b"tail\xff".to_vec());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(disk.pending_reports(), 1, "not on disk, still counted");
        std::fs::remove_file(&crashes).unwrap();
        until_zero(&disk).await;
        assert_eq!(std::fs::read(crashes.join("20200101T000000.000Z-1.stderr")).unwrap(), b"tail\xff");
        assert!(crashes.join("20200101T000000.000Z-1.json").exists());
    }

    /// Past `keep` waiting reports the oldest is given up, so memory stays bounded.
    #[actix_rt::test]
    async fn at_most_keep_reports_wait() {
        let dir = tempfile::tempdir().unwrap();
        let crashes = dir.path().join("crashes");
        std::fs::write(&crashes, b"in the way").unwrap();
        let disk = Disk::start(crashes.clone(), 2).unwrap();
        for i in 0..5 {
            disk.write_report(report(&format!("20200101T000000.00{i}Z-1")), vec![b'x']);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(disk.pending_reports(), 2);
        std::fs::remove_file(&crashes).unwrap();
        until_zero(&disk).await;
        let mut names: Vec<_> = std::fs::read_dir(&crashes)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        assert_eq!(names, ["20200101T000000.003Z-1.json", "20200101T000000.004Z-1.json"], "the newest kept");
    }
}
