//! Whether the kernel's OOM killer ended the collector (CONTRACT §6 `oom_killed`).
//!
//! A SIGKILL says nothing about who sent it. The kernel counts its OOM kills: per memory
//! cgroup (`oom_kill` in `memory.events` on cgroup v2, in `memory.oom_control` on v1) and for
//! the whole host (`oom_kill` in /proc/vmstat). The supervisor notes the count of the
//! collector's memory cgroup while the collector lives, and after a SIGKILL compares: the
//! cgroup counted a kill meanwhile, so the OOM killer did it. Where the cgroup cannot be read,
//! the host-wide count is the (weaker) witness; where neither can, the answer is unknown.
//!
//! These are reads of procfs and cgroupfs, which never wait for a disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the counts are taken again while the collector lives (so that OOM kills of
/// other processes long before the death are not blamed on it).
pub const RESAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The OOM-kill counts before the death.
#[derive(Debug, Clone)]
pub struct OomWatch {
    pid: u32,
    /// The collector's memory cgroup counter file and its count.
    cgroup: Option<(PathBuf, u64)>,
    /// /proc/vmstat's count.
    host: Option<u64>,
    taken: Instant,
}

/// The `oom_kill N` line of a counter file.
fn oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// The memory cgroup counter file of `pid`, from /proc/PID/cgroup: the v1 memory
/// hierarchy's `memory.oom_control` where there is one, else the v2 `memory.events`.
fn cgroup_counter(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    counter_file(&text, Path::new("/sys/fs/cgroup")).filter(|f| f.exists())
}

/// Where the counter of the cgroup named in `proc_cgroup` (the text of /proc/PID/cgroup) is
/// under the cgroup mount `root`.
fn counter_file(proc_cgroup: &str, root: &Path) -> Option<PathBuf> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(root.join("memory").join(rel).join("memory.oom_control"));
        }
        if controllers.is_empty() {
            v2 = Some(root.join(rel).join("memory.events"));
        }
    }
    v2
}

impl OomWatch {
    /// Takes the counts for collector `pid` now.
    pub fn take(pid: u32) -> OomWatch {
        let cgroup = cgroup_counter(pid).and_then(|f| oom_kills(&f).map(|n| (f, n)));
        OomWatch { pid, cgroup, host: oom_kills(Path::new("/proc/vmstat")), taken: Instant::now() }
    }

    /// Takes them again if the collector is in another cgroup now (moved by an operator or
    /// a container runtime), or if the last ones are older than [`RESAMPLE_EVERY`].
    pub fn refresh(&mut self) {
        let moved = cgroup_counter(self.pid) != self.cgroup.as_ref().map(|(f, _)| f.clone());
        if moved || self.taken.elapsed() >= RESAMPLE_EVERY {
            *self = OomWatch::take(self.pid);
        }
    }

    /// After the collector died of SIGKILL: whether the OOM killer did it (`None`: unknown).
    pub fn killed(&self) -> Option<bool> {
        match &self.cgroup {
            Some((file, before)) => oom_kills(file).map(|now| now > *before),
            None => {
                let before = self.host?;
                oom_kills(Path::new("/proc/vmstat")).map(|now| now > before)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_file_follows_the_cgroup_version() {
        let root = Path::new("/sys/fs/cgroup");
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(
            counter_file(v1, root).unwrap(),
            Path::new("/sys/fs/cgroup/memory/process_api/abc/memory.oom_control")
        );
        let v2 = "0::/system.slice/vigil.service\n";
        assert_eq!(
            counter_file(v2, root).unwrap(),
            Path::new("/sys/fs/cgroup/system.slice/vigil.service/memory.events")
        );
        assert_eq!(counter_file("garbage", root), None);
    }

    #[test]
    fn the_oom_kill_line_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n").unwrap();
        assert_eq!(oom_kills(&f), Some(2));
        let w = OomWatch { pid: 0, cgroup: Some((f.clone(), 2)), host: None, taken: Instant::now() };
        assert_eq!(w.killed(), Some(false));
        std::fs::write(&f, "oom_kill 3\n").unwrap();
        assert_eq!(w.killed(), Some(true));
        std::fs::remove_file(&f).unwrap();
        assert_eq!(w.killed(), None, "unreadable: unknown");
    }
}
