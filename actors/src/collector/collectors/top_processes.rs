//! `top_processes`: the processes using the most CPU and the most memory (CONTRACT §4:
//! process_cpu_util, process_mem_bytes, tagged `{pid, name}`).
//!
//! # Bounded on purpose
//!
//! One series per process is thousands of series on a busy host, most of them idle, and a
//! new set with every short-lived process. This collector reports only the `top_n`
//! processes by CPU over the last interval and the `top_n` by resident memory: at most
//! `2 × top_n` processes, each with both metrics, so at most `2 × top_n` series per metric
//! per collection. A process that leaves the top (or exits) stops getting values and its
//! series expires like every other that stops (`/metrics` leaves it out after the stale
//! window, three intervals and at least 30 s, and the supervisor forgets it).
//!
//! # Source
//!
//! Every `/proc/PID/stat`, split in place by [`pid_stat`]: `comm` (the `name` tag, at most 15
//! bytes as the kernel keeps it), `utime + stime` and `rss`. CPU is the share of the whole
//! host (all CPUs = 100 %) over the measured interval, from the difference of the process's
//! ticks; a process is known by (pid, start time), so a reused pid starts from zero. A
//! process that appeared during the interval counts all its ticks. The first collection
//! has no CPU figures and ranks by memory only.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::collector::pid_stat;
use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.top_processes]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopProcessesConfig {
    /// Report the processes using the most CPU and memory.
    pub enabled: bool,
    /// How many processes by CPU, and how many by memory (at most 2 × top_n in all).
    pub top_n: usize,
}

impl Default for TopProcessesConfig {
    fn default() -> Self {
        Self { enabled: true, top_n: 5 }
    }
}

/// The largest `top_n`: the point of the collector is a bounded series count.
pub const MAX_TOP_N: usize = 100;

impl CollectorConfig for TopProcessesConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Vec<(String, String)> {
        if (1..=MAX_TOP_N).contains(&self.top_n) {
            Vec::new()
        } else {
            vec![("top_n".into(), format!("must be between 1 and {MAX_TOP_N}, got {}", self.top_n))]
        }
    }
}

/// One process as one scan saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    pub pid: i32,
    pub name: String,
    /// Percent of the host over the interval; `None` on the first scan.
    pub cpu: Option<f64>,
    pub rss_bytes: u64,
}

/// The indices of the `n` processes with most CPU and the `n` with most memory, without
/// repeats, in that order. Ties go to the lower pid, so the choice is stable.
pub fn select(procs: &[Proc], n: usize) -> Vec<usize> {
    let mut by_cpu: Vec<usize> = (0..procs.len()).filter(|&i| procs[i].cpu.is_some()).collect();
    by_cpu.sort_by(|&a, &b| {
        procs[b].cpu.partial_cmp(&procs[a].cpu).unwrap_or(std::cmp::Ordering::Equal).then(procs[a].pid.cmp(&procs[b].pid))
    });
    let mut by_mem: Vec<usize> = (0..procs.len()).collect();
    by_mem.sort_by(|&a, &b| procs[b].rss_bytes.cmp(&procs[a].rss_bytes).then(procs[a].pid.cmp(&procs[b].pid)));
    let mut out: Vec<usize> = by_cpu.into_iter().take(n).collect();
    for i in by_mem.into_iter().take(n) {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// The samples of the selected processes.
pub fn samples(procs: &[Proc], n: usize, out: &mut Vec<Sample>) {
    for i in select(procs, n) {
        let p = &procs[i];
        let pid = p.pid.to_string();
        if let Some(cpu) = p.cpu {
            out.push(Sample::new("process_cpu_util", cpu).tag("pid", pid.clone()).tag("name", p.name.clone()));
        }
        out.push(Sample::new("process_mem_bytes", p.rss_bytes as f64).tag("pid", pid).tag("name", p.name.clone()));
    }
}

/// CPU ticks (user + system) by (pid, start time).
type Ticks = HashMap<(i32, u64), u64>;

pub struct TopProcesses {
    env: Env,
    top_n: usize,
    cpus: f64,
    ticks_per_sec: f64,
    page_size: u64,
    /// CPU ticks by (pid, start time) at the last scan, and when it was made. Replaced by
    /// every scan: it holds the processes alive then, no more.
    last: Option<(Ticks, Instant)>,
}

impl TopProcesses {
    fn scan(&mut self) -> Result<Vec<Proc>, CollectError> {
        let at = Instant::now();
        let proc_dir = self.env.path("/proc");
        let last = self.last.take();
        let secs = last.as_ref().map(|(_, then)| at.duration_since(*then).as_secs_f64());
        let mut ticks = HashMap::new();
        let mut out = Vec::new();
        // A process that exited since the listing, or one we may not read, is left out.
        pid_stat::for_each(&proc_dir, |pid, stat| {
            let (Ok(pid), Some(utime), Some(stime), Some(starttime), Some(rss)) =
                (i32::try_from(pid), stat.field(14), stat.field(15), stat.field(22), stat.field(24))
            else {
                return;
            };
            let total = utime + stime;
            let key = (pid, starttime);
            let cpu = match (&last, secs) {
                (Some((prev, _)), Some(secs)) if secs > 0.0 => {
                    // Not seen last time: it started during the interval, all its ticks are in it.
                    let delta = total.saturating_sub(prev.get(&key).copied().unwrap_or(0));
                    Some(delta as f64 / self.ticks_per_sec / secs / self.cpus * 100.0)
                }
                _ => None,
            };
            ticks.insert(key, total);
            let name = String::from_utf8_lossy(stat.comm).into_owned();
            out.push(Proc { pid, name, cpu, rss_bytes: rss * self.page_size });
        })
        .map_err(|source| CollectError::Io { path: proc_dir.display().to_string(), source })?;
        self.last = Some((ticks, at));
        Ok(out)
    }
}

impl Collector for TopProcesses {
    const NAME: &'static str = "top_processes";
    const METRICS: &'static [Metric] = &[
        Metric::gauge(
            "process_cpu_util",
            Unit::Percent,
            "CPU used by the process over the last interval, as a share of all CPUs (top_n by CPU and by memory only).",
        ),
        Metric::gauge(
            "process_mem_bytes",
            Unit::Bytes,
            "Resident memory of the process (top_n by CPU and by memory only).",
        ),
    ];
    type Config = TopProcessesConfig;

    fn new(c: &TopProcessesConfig, env: &Env) -> Self {
        Self {
            env: env.clone(),
            top_n: c.top_n,
            cpus: super::load::cpu_count(env).max(1) as f64,
            ticks_per_sec: procfs::ticks_per_second() as f64,
            page_size: procfs::page_size(),
            last: None,
        }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let procs = self.scan()?;
        samples(&procs, self.top_n, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use crate::collector::testutil::fixture;

    fn p(pid: i32, cpu: Option<f64>, rss: u64) -> Proc {
        Proc { pid, name: format!("p{pid}"), cpu, rss_bytes: rss }
    }

    #[test]
    fn selection_is_top_n_by_cpu_then_by_memory_without_repeats() {
        let procs = [
            p(1, Some(0.0), 10),
            p(2, Some(50.0), 1),
            p(3, Some(20.0), 500),
            p(4, Some(20.0), 2),
            p(5, Some(0.1), 900),
        ];
        // by CPU: 2, then 3 and 4 tie at 20 → lower pid 3; by memory: 5, then 3 (already in).
        assert_eq!(select(&procs, 2), [1, 2, 4]);
        assert_eq!(select(&procs, 10).len(), 5, "never more processes than there are");
        let first = [p(1, None, 10), p(2, None, 30)];
        assert_eq!(select(&first, 1), [1], "first scan: by memory only");
        let mut out = Vec::new();
        samples(&procs, 1, &mut out);
        let names: Vec<_> = out.iter().map(|s| (s.name.as_str(), s.tags["pid"].as_str())).collect();
        assert_eq!(
            names,
            [("process_cpu_util", "2"), ("process_mem_bytes", "2"), ("process_cpu_util", "5"), ("process_mem_bytes", "5")]
        );
    }

    #[test]
    fn top_n_is_bounded() {
        let bad = TopProcessesConfig { top_n: 0, ..Default::default() }.validate();
        assert_eq!(bad[0].0, "top_n");
        assert!(TopProcessesConfig { top_n: MAX_TOP_N + 1, ..Default::default() }.validate().len() == 1);
        assert!(TopProcessesConfig::default().validate().is_empty());
    }

    #[actix_rt::test]
    async fn fixture_memory_first_then_cpu() {
        // proc-procs: nine processes, each with rss 412 pages and 15 ticks.
        let mut c = TopProcesses::new(&TopProcessesConfig { top_n: 2, ..Default::default() }, &fixture("proc-procs"));
        let s = collect_guarded(&mut c).await.unwrap();
        assert!(s.iter().all(|x| x.name == "process_mem_bytes"), "no CPU on the first scan: {s:?}");
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].value, (412 * procfs::page_size()) as f64);
        assert_eq!(s[0].tags["pid"], "1", "ties: lowest pid first");
        assert_eq!(s[0].tags["name"], "systemd");
        let s = collect_guarded(&mut c).await.unwrap();
        let cpu: Vec<_> = s.iter().filter(|x| x.name == "process_cpu_util").collect();
        assert_eq!(cpu.len(), 2, "{s:?}");
        assert!(cpu.iter().all(|x| x.value == 0.0), "unchanged ticks: 0 % ({s:?})");
    }

    /// A real busy process, made here, is the top by CPU at about one CPU's share.
    #[actix_rt::test]
    async fn live_host_finds_a_busy_process() {
        let mut busy = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let mut c = TopProcesses::new(&TopProcessesConfig::default(), &Env::default());
        collect_guarded(&mut c).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        let s = collect_guarded(&mut c).await.unwrap();
        busy.kill().unwrap();
        busy.wait().unwrap();
        let pid = busy.id().to_string();
        let found = s
            .iter()
            .find(|x| x.name == "process_cpu_util" && x.tags["pid"] == pid)
            .unwrap_or_else(|| panic!("the busy sh ({pid}) is not in the top: {s:?}"));
        assert_eq!(found.tags["name"], "sh");
        let one_cpu = 100.0 / c.cpus;
        // Other tests may spin at the same time: the share is well above idle, never above one CPU.
        assert!(found.value > one_cpu * 0.1 && found.value <= one_cpu * 1.1, "{} of {one_cpu}", found.value);
        assert!(s.iter().filter(|x| x.name == "process_cpu_util").count() <= 10);
        assert!(s.iter().filter(|x| x.name == "process_mem_bytes").count() <= 10);
    }
}
