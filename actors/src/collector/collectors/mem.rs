//! `mem`: memory and swap use, and the swap-in rate (CONTRACT §4: mem_util,
//! mem_available_bytes, mem_swap_util, mem_swap_in).
//!
//! - mem_util: percent of RAM in use, `(total - available) / total * 100`, where "available"
//!   is the kernel's MemAvailable estimate (what new programs could get without swapping).
//! - mem_available_bytes: that estimate in bytes.
//! - mem_swap_util: percent of swap in use; 0 on a host without swap.
//! - mem_swap_in: pages swapped in per second (the `pswpin` counter of `/proc/vmstat`).
//!   A rate, so only from the second collection on.
//!
//! On the live host RAM and swap come from sysinfo; under a fixture root (tests) the same
//! numbers are read from `/proc/meminfo` with the procfs crate. sysinfo has no swap-in
//! counter, so `/proc/vmstat` is read with procfs (`VmStat`) in both cases.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.mem]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemConfig {
    /// Collect memory and swap use.
    pub enabled: bool,
}

impl Default for MemConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl CollectorConfig for MemConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

/// RAM and swap at one moment, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemReading {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl From<&procfs::Meminfo> for MemReading {
    /// Before Linux 3.14 there is no MemAvailable; estimate it the way sysinfo does on such
    /// kernels (free + buffers + page cache + reclaimable slab - shmem), so a fixture and the
    /// live host agree.
    fn from(m: &procfs::Meminfo) -> Self {
        let available = m.mem_available.unwrap_or_else(|| {
            (m.mem_free + m.buffers + m.cached + m.s_reclaimable.unwrap_or(0))
                .saturating_sub(m.shmem.unwrap_or(0))
        });
        Self { total: m.mem_total, available, swap_total: m.swap_total, swap_free: m.swap_free }
    }
}

/// mem_util, mem_available_bytes and mem_swap_util. A zero MemTotal (an unreadable or broken
/// meminfo) yields no mem_util rather than a division by zero.
pub fn usage_samples(m: &MemReading, out: &mut Vec<Sample>) {
    if m.total > 0 {
        let used = m.total.saturating_sub(m.available);
        out.push(Sample::new("mem_util", used as f64 * 100.0 / m.total as f64));
    }
    out.push(Sample::new("mem_available_bytes", m.available as f64));
    let swap_util = if m.swap_total == 0 {
        0.0
    } else {
        m.swap_total.saturating_sub(m.swap_free) as f64 * 100.0 / m.swap_total as f64
    };
    out.push(Sample::new("mem_swap_util", swap_util));
}

/// A counter's reading and when it was taken.
#[derive(Debug, Clone, Copy)]
pub struct CounterAt {
    pub value: u64,
    pub at: Instant,
}

/// Per-second increase between two readings; `None` when the counter went down (a reset)
/// or no time passed.
pub fn rate(prev: CounterAt, cur: CounterAt) -> Option<f64> {
    let delta = cur.value.checked_sub(prev.value)?;
    let secs = cur.at.checked_duration_since(prev.at)?.as_secs_f64();
    (secs > 0.0).then(|| delta as f64 / secs)
}

pub struct Mem {
    env: Env,
    /// sysinfo's view of the live host; `None` under a fixture root.
    sys: Option<sysinfo::System>,
    /// The previous `pswpin` reading; `None` before the first collection (or when the
    /// kernel has no such counter).
    prev_swap_in: Option<CounterAt>,
}

impl Mem {
    fn read_usage(&mut self) -> Result<MemReading, CollectError> {
        match &mut self.sys {
            Some(sys) => {
                sys.refresh_memory();
                Ok(MemReading {
                    total: sys.total_memory(),
                    available: sys.available_memory(),
                    swap_total: sys.total_swap(),
                    swap_free: sys.free_swap(),
                })
            }
            None => {
                use procfs::FromRead;
                let m = procfs::Meminfo::from_file(self.env.path("/proc/meminfo"))?;
                Ok(MemReading::from(&m))
            }
        }
    }

    /// The `pswpin` counter; `None` on a kernel without it (or should it ever read negative:
    /// procfs parses vmstat values as i64).
    fn read_swap_in(&self) -> Result<Option<u64>, CollectError> {
        use procfs::FromRead;
        let vm = procfs::VmStat::from_file(self.env.path("/proc/vmstat"))?;
        Ok(vm.0.get("pswpin").and_then(|&v| u64::try_from(v).ok()))
    }
}

impl Collector for Mem {
    const NAME: &'static str = "mem";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("mem_util", Unit::Percent, "Share of memory in use (total minus available)."),
        Metric::gauge("mem_available_bytes", Unit::Bytes, "Memory available for new work without swapping."),
        Metric::gauge("mem_swap_util", Unit::Percent, "Share of swap space in use."),
        Metric::gauge("mem_swap_in", Unit::PerSecond, "Pages swapped in per second over the last interval.").exposed_as("vigil_mem_swap_in_pages_per_second"),
    ];
    type Config = MemConfig;

    fn new(_: &MemConfig, env: &Env) -> Self {
        // On a live host sysinfo reads the numbers; where it cannot, /proc/meminfo is read as on
        // a fixture tree.
        let sys = (env.root == std::path::Path::new("/")).then(|| sysinfo::System::new().ok()).flatten();
        Self { env: env.clone(), sys, prev_swap_in: None }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let usage = self.read_usage()?;
        let swap_in = self.read_swap_in()?;
        let at = Instant::now();
        usage_samples(&usage, out);

        let cur = swap_in.map(|value| CounterAt { value, at });
        match (self.prev_swap_in, cur) {
            (Some(prev), Some(cur)) => match rate(prev, cur) {
                Some(r) => out.push(Sample::new("mem_swap_in", r)),
                None => tracing::debug!(
                    collector = Self::NAME,
                    "pswpin went back; skipping mem_swap_in this interval."
                ),
            },
            (_, None) => {
                tracing::debug!(collector = Self::NAME, "No pswpin in /proc/vmstat; no mem_swap_in.")
            }
            (None, Some(_)) => {}
        }
        self.prev_swap_in = cur;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collector::collect_guarded;
    use crate::collector::testutil::fixture;

    fn find<'a>(s: &'a [Sample], name: &str) -> Option<&'a Sample> {
        s.iter().find(|x| x.name == name)
    }

    fn value(s: &[Sample], name: &str) -> f64 {
        find(s, name).unwrap_or_else(|| panic!("{name} missing: {s:?}")).value
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[actix_rt::test]
    async fn fixture_usage_and_swap_in_rate() {
        let mut c = Mem::new(&MemConfig::default(), &fixture("proc-mem-1"));
        assert!(c.sys.is_none(), "a fixture root never reads the live host");

        // MemTotal 8000000 kB, MemAvailable 2000000 kB, SwapTotal 1000000 kB, SwapFree 750000 kB.
        let s = collect_guarded(&mut c).await.unwrap();
        assert!(close(value(&s, "mem_util"), 75.0), "{s:?}");
        assert_eq!(value(&s, "mem_available_bytes"), 2_000_000.0 * 1024.0);
        assert!(close(value(&s, "mem_swap_util"), 25.0), "{s:?}");
        assert!(find(&s, "mem_swap_in").is_none(), "a rate needs two readings: {s:?}");
        assert_eq!(s.len(), 3);

        // Pretend the first reading was taken 10 s ago; pswpin went 1000 -> 1500.
        let prev = c.prev_swap_in.as_mut().unwrap();
        assert_eq!(prev.value, 1000);
        prev.at -= Duration::from_secs(10);
        c.env = fixture("proc-mem-2");
        let s = collect_guarded(&mut c).await.unwrap();
        // MemAvailable 6000000 of 8000000 kB, swap entirely free.
        assert!(close(value(&s, "mem_util"), 25.0), "{s:?}");
        assert_eq!(value(&s, "mem_available_bytes"), 6_000_000.0 * 1024.0);
        assert_eq!(value(&s, "mem_swap_util"), 0.0);
        // 500 pages over 10 s and the few microseconds the collection took.
        let r = value(&s, "mem_swap_in");
        assert!(r <= 50.0 && r > 49.9, "{r}");
        assert!(s.iter().all(|x| x.tags.is_empty()));
    }

    #[actix_rt::test]
    async fn swap_in_counter_going_back_is_skipped_then_resumes() {
        let mut c = Mem::new(&MemConfig::default(), &fixture("proc-mem-2"));
        collect_guarded(&mut c).await.unwrap();
        c.env = fixture("proc-mem-1");
        let s = collect_guarded(&mut c).await.unwrap();
        assert!(find(&s, "mem_swap_in").is_none(), "1500 -> 1000 is a reset: {s:?}");
        assert_eq!(s.len(), 3, "the non-rate samples still come: {s:?}");
        c.prev_swap_in.as_mut().unwrap().at -= Duration::from_secs(5);
        c.env = fixture("proc-mem-2");
        let r = value(&collect_guarded(&mut c).await.unwrap(), "mem_swap_in");
        assert!(r <= 100.0 && r > 99.9, "the reset reading is the new baseline: {r}");
    }

    #[test]
    fn rate_arithmetic() {
        let t0 = Instant::now();
        let at = |value, secs: f64| CounterAt { value, at: t0 + Duration::from_secs_f64(secs) };
        assert_eq!(rate(at(100, 0.0), at(350, 2.5)), Some(100.0));
        assert_eq!(rate(at(100, 0.0), at(100, 2.5)), Some(0.0));
        assert_eq!(rate(at(100, 0.0), at(99, 2.5)), None, "went down");
        assert_eq!(rate(at(100, 0.0), at(200, 0.0)), None, "no time passed");
        assert_eq!(rate(at(100, 1.0), at(200, 0.0)), None, "clock order reversed");
        assert_eq!(rate(at(u64::MAX - 10, 0.0), at(u64::MAX, 1.0)), Some(10.0));
    }

    #[test]
    fn no_swap_and_no_memavailable() {
        use procfs::FromRead;
        // An old kernel without MemAvailable and a host without swap.
        let text = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 300 kB\nSwapCached: 0 kB\n\
                    Active: 1 kB\nInactive: 1 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\nDirty: 0 kB\nWriteback: 0 kB\n\
                    Mapped: 1 kB\nSlab: 80 kB\nSReclaimable: 60 kB\nShmem: 10 kB\nCommitted_AS: 1 kB\n\
                    VmallocTotal: 1 kB\nVmallocUsed: 1 kB\nVmallocChunk: 1 kB\n";
        let m = MemReading::from(&procfs::Meminfo::from_read(text.as_bytes()).unwrap());
        // 100 + 50 + 300 + 60 - 10 = 500 kB available.
        assert_eq!(m, MemReading { total: 1_024_000, available: 512_000, swap_total: 0, swap_free: 0 });
        let mut s = Vec::new();
        usage_samples(&m, &mut s);
        assert!(close(value(&s, "mem_util"), 50.0), "{s:?}");
        assert_eq!(value(&s, "mem_swap_util"), 0.0);
    }

    #[test]
    fn zero_total_gives_no_util_and_available_above_total_clamps() {
        let mut s = Vec::new();
        usage_samples(&MemReading { total: 0, available: 0, swap_total: 10, swap_free: 20 }, &mut s);
        assert!(find(&s, "mem_util").is_none(), "{s:?}");
        assert_eq!(value(&s, "mem_swap_util"), 0.0, "free above total is clamped, not negative");
        let mut s = Vec::new();
        usage_samples(&MemReading { total: 100, available: 120, swap_total: 0, swap_free: 0 }, &mut s);
        assert_eq!(value(&s, "mem_util"), 0.0);
    }

    #[actix_rt::test]
    async fn live_host() {
        let mut c = Mem::new(&MemConfig::default(), &Env::default());
        assert!(c.sys.is_some());
        let s = collect_guarded(&mut c).await.unwrap();
        let util = value(&s, "mem_util");
        assert!(util > 0.0 && util < 100.0, "{s:?}");
        let avail = value(&s, "mem_available_bytes");
        assert!(avail > 1e6, "more than a megabyte is available: {s:?}");
        // sysinfo and procfs read the same /proc/meminfo: they agree on the total.
        use procfs::FromRead;
        let m = procfs::Meminfo::from_file("/proc/meminfo").unwrap();
        assert_eq!(c.sys.as_ref().unwrap().total_memory(), m.mem_total);
        assert!((0.0..=100.0).contains(&value(&s, "mem_swap_util")));
        assert!(find(&s, "mem_swap_in").is_none());

        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = collect_guarded(&mut c).await.unwrap();
        assert!(value(&s, "mem_swap_in") >= 0.0, "the live kernel has pswpin: {s:?}");
    }
}
