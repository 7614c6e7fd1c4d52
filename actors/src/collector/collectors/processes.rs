//! `processes`: how many processes are in each scheduler state, how many threads they run,
//! and how many file handles the kernel has allocated (CONTRACT §4: processes {state},
//! proc_threads, proc_open_files).
//!
//! Every `/proc/<pid>/stat` under the root is read into one reused buffer and only the state
//! letter and `num_threads` are taken from it ([`pid_stat`]). A process that exits between the directory listing and the read of
//! its stat is skipped silently. proc_open_files is system-wide: the first field of
//! `/proc/sys/fs/file-nr` (allocated file handles), not a per-process fd count.
//!
//! # The `state` tag
//!
//! One `processes` sample per state below, every collection, zeros included (so a state
//! that empties shows 0 rather than a gap):
//!
//! | state | stat letter |
//! |---|---|
//! | running | R |
//! | sleeping | S (interruptible wait) |
//! | disk_sleep | D (uninterruptible wait, usually I/O) |
//! | zombie | Z |
//! | stopped | T (stopped by a signal) and t (stopped by a tracer) |
//! | idle | I (idle kernel threads) |
//! | other | X (dead), P (parked), K, W (old kernels), and any letter procfs does not know |
//!
//! A process's state is that of its main thread, as `ps` shows it.

use serde::{Deserialize, Serialize};

use crate::collector::pid_stat::{self, StatLine};
use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.processes]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessesConfig {
    /// Collect process counts per state, threads and open file handles.
    pub enabled: bool,
}

impl Default for ProcessesConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl CollectorConfig for ProcessesConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

/// The `state` tag values, in the order the samples are emitted.
pub const STATES: [&str; 7] = ["running", "sleeping", "disk_sleep", "zombie", "stopped", "idle", "other"];

/// Index into [`STATES`] of a stat state letter; one not in the table above is "other".
pub fn state_index(letter: u8) -> usize {
    match letter {
        b'R' => 0,
        b'S' => 1,
        b'D' => 2,
        b'Z' => 3,
        b'T' | b't' => 4,
        b'I' => 5,
        _ => 6,
    }
}

/// Counts over one scan of all processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Processes per state, indexed like [`STATES`].
    pub by_state: [u64; STATES.len()],
    /// Threads of all processes together.
    pub threads: u64,
}

impl Tally {
    pub fn add(&mut self, stat: &StatLine) {
        self.by_state[state_index(stat.state)] += 1;
        self.threads += stat.field(20).unwrap_or(0);
    }
}

/// The `processes` samples (one per state) and proc_threads.
pub fn samples(t: &Tally, out: &mut Vec<Sample>) {
    for (state, n) in STATES.iter().zip(t.by_state) {
        out.push(Sample::new("processes", n as f64).tag("state", *state));
    }
    out.push(Sample::new("proc_threads", t.threads as f64));
}

pub struct Processes {
    env: Env,
}

impl Processes {
    /// One pass over `/proc/<pid>/stat`. Only failing to list `/proc` is an error; a single
    /// process that cannot be read is left out.
    fn scan(&self) -> Result<Tally, CollectError> {
        let mut tally = Tally::default();
        let proc_dir = self.env.path("/proc");
        let unreadable = pid_stat::for_each(&proc_dir, |_, stat| tally.add(stat))
            .map_err(|source| CollectError::Io { path: proc_dir.display().to_string(), source })?;
        if unreadable > 0 {
            tracing::debug!(
                collector = Self::NAME,
                unreadable,
                "Some processes were left out of the counts."
            );
        }
        Ok(tally)
    }

    /// Allocated file handles, system-wide.
    ///
    /// On the live host procfs parses file-nr (`procfs::sys::fs::file_nr`). That function
    /// always reads `/proc/sys/fs/file-nr` and takes no root, so under a fixture root the
    /// one-line file is read with std and its first field taken.
    fn open_files(&self) -> Result<u64, CollectError> {
        if self.env.root == std::path::Path::new("/") {
            return Ok(procfs::sys::fs::file_nr()?.allocated);
        }
        let path = self.env.path("/proc/sys/fs/file-nr");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| CollectError::Io { path: path.display().to_string(), source })?;
        text.split_whitespace().next().and_then(|f| f.parse().ok()).ok_or_else(|| {
            CollectError::Proc(format!("{}: no allocated-handles count in {text:?}", path.display()))
        })
    }
}

impl Collector for Processes {
    const NAME: &'static str = "processes";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("processes", Unit::None, "Processes in the state."),
        Metric::gauge("proc_threads", Unit::None, "Threads of all processes."),
        Metric::gauge("proc_open_files", Unit::None, "Open file handles, system-wide."),
    ];
    type Config = ProcessesConfig;

    fn new(_: &ProcessesConfig, env: &Env) -> Self {
        Self { env: env.clone() }
    }

    /// The process samples are appended before file-nr is read, so a failing file-nr still
    /// lets them through (the collection is reported as failed).
    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        samples(&self.scan()?, out);
        out.push(Sample::new("proc_open_files", self.open_files()? as f64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use crate::collector::testutil::{fixture, value};

    fn state(s: &[Sample], state: &str) -> f64 {
        let mut it = s
            .iter()
            .filter(|x| x.name == "processes" && x.tags.get("state").map(String::as_str) == Some(state));
        let found = it.next().unwrap_or_else(|| panic!("processes{{state={state}}} missing: {s:?}"));
        assert!(it.next().is_none(), "one sample per state");
        found.value
    }

    #[actix_rt::test]
    async fn fixture_counts() {
        // proc-procs: 1 systemd S, 2 kthreadd S, 10 kworker I, 100 postgres R (8 threads),
        // 101 "my (odd) prog" D (3 threads), 102 Z, 103 T, 104 t, 105 P; 999 has no stat
        // (it exited mid-scan). file-nr: 2048 0 9223372036854775807.
        let mut c = Processes::new(&ProcessesConfig::default(), &fixture("proc-procs"));
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(state(&s, "running"), 1.0);
        assert_eq!(state(&s, "sleeping"), 2.0);
        assert_eq!(state(&s, "disk_sleep"), 1.0, "a comm with spaces and parens still parses");
        assert_eq!(state(&s, "zombie"), 1.0);
        assert_eq!(state(&s, "stopped"), 2.0, "T and t");
        assert_eq!(state(&s, "idle"), 1.0);
        assert_eq!(state(&s, "other"), 1.0, "P");
        assert_eq!(value(&s, "proc_threads"), 18.0, "1+1+1+8+3+1+1+1+1");
        assert_eq!(value(&s, "proc_open_files"), 2048.0);
        assert_eq!(s.len(), STATES.len() + 2, "{s:?}");
    }

    #[test]
    fn state_mapping() {
        let expected = [
            ('R', "running"),
            ('S', "sleeping"),
            ('D', "disk_sleep"),
            ('Z', "zombie"),
            ('T', "stopped"),
            ('t', "stopped"),
            ('I', "idle"),
            ('X', "other"),
            ('P', "other"),
            ('K', "other"),
            ('W', "other"),
            ('?', "other"),
        ];
        for (letter, name) in expected {
            assert_eq!(STATES[state_index(letter as u8)], name, "{letter}");
        }
    }

    #[actix_rt::test]
    async fn missing_proc_is_an_error() {
        let mut c = Processes::new(&ProcessesConfig::default(), &fixture("does-not-exist"));
        assert!(collect_guarded(&mut c).await.is_err());
    }

    #[actix_rt::test]
    async fn missing_file_nr_fails_after_the_process_samples() {
        // proc-cpu-1 has a /proc with no processes and no sys/fs/file-nr.
        let mut c = Processes::new(&ProcessesConfig::default(), &fixture("proc-cpu-1"));
        let mut out = Vec::new();
        let e = c.collect(&mut out).await.unwrap_err();
        assert!(e.to_string().contains("file-nr"), "{e}");
        assert_eq!(out.len(), STATES.len() + 1, "{out:?}");
        assert!(out.iter().all(|x| x.value == 0.0), "{out:?}");
    }

    #[actix_rt::test]
    async fn live_host() {
        let mut c = Processes::new(&ProcessesConfig::default(), &Env::default());
        let s = collect_guarded(&mut c).await.unwrap();
        let total: f64 = STATES.iter().map(|st| state(&s, st)).sum();
        // Processes come and go between the two listings, but not many in a few milliseconds.
        let pids = std::fs::read_dir("/proc")
            .unwrap()
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok()))
            .count() as f64;
        assert!(
            total >= 1.0 && (total - pids).abs() <= 5.0 + pids / 10.0,
            "{total} counted, {pids} in /proc"
        );
        // Every process has at least one thread, and this test binary runs several.
        assert!(value(&s, "proc_threads") > total, "{s:?}");
        assert!(value(&s, "proc_open_files") >= 1.0, "{s:?}");
    }
}
