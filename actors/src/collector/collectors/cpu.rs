//! `cpu`: where all CPU time went over the last interval (CONTRACT §4: cpu_user, cpu_system,
//! cpu_iowait, cpu_steal, cpu_idle), each a percent (0-100) of the time of all CPUs together.
//!
//! Reads the aggregate `cpu` line of `/proc/stat` (procfs `KernelStats`) on the live host and
//! under a fixture root alike; sysinfo has no iowait or steal breakdown. The percentages are
//! ratios of tick deltas between two readings, so the first collection only records the
//! counters and emits nothing.
//!
//! # How the kernel's ten columns map to five metrics
//!
//! | metric | columns |
//! |---|---|
//! | cpu_user | user + nice (all user-space time, niced or not; guest time is inside these) |
//! | cpu_system | system + irq + softirq (all time in the kernel on behalf of someone) |
//! | cpu_iowait | iowait |
//! | cpu_steal | steal |
//! | cpu_idle | idle |
//!
//! The total is the sum of those eight columns. `guest` and `guest_nice` are left out: the
//! kernel already counts them in `user` and `nice`, so adding them would count that time
//! twice. The five metrics therefore always add up to 100.

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.cpu]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Collect CPU time percentages.
    pub enabled: bool,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl CollectorConfig for CpuConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

/// The aggregate CPU counters this collector uses, in ticks since boot. Columns an old
/// kernel does not have read as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ticks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl From<&procfs::CpuTime> for Ticks {
    fn from(t: &procfs::CpuTime) -> Self {
        Self {
            user: t.user,
            nice: t.nice,
            system: t.system,
            idle: t.idle,
            iowait: t.iowait.unwrap_or(0),
            irq: t.irq.unwrap_or(0),
            softirq: t.softirq.unwrap_or(0),
            steal: t.steal.unwrap_or(0),
        }
    }
}

/// Percent of all CPU time per category over one interval; the five add up to 100.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub user: f64,
    pub system: f64,
    pub iowait: f64,
    pub steal: f64,
    pub idle: f64,
}

/// The shares between two readings. `None` when any counter went backwards (a reset, or
/// the kernel's iowait/idle accounting stepping back) or no tick passed: there is no
/// trustworthy answer for that interval, so it is skipped.
pub fn shares(prev: &Ticks, cur: &Ticks) -> Option<Shares> {
    let d = |p: u64, c: u64| c.checked_sub(p);
    let user = d(prev.user, cur.user)? + d(prev.nice, cur.nice)?;
    let system = d(prev.system, cur.system)? + d(prev.irq, cur.irq)? + d(prev.softirq, cur.softirq)?;
    let iowait = d(prev.iowait, cur.iowait)?;
    let steal = d(prev.steal, cur.steal)?;
    let idle = d(prev.idle, cur.idle)?;
    let total = user + system + iowait + steal + idle;
    if total == 0 {
        return None;
    }
    let pct = |x: u64| x as f64 * 100.0 / total as f64;
    Some(Shares {
        user: pct(user),
        system: pct(system),
        iowait: pct(iowait),
        steal: pct(steal),
        idle: pct(idle),
    })
}

/// The five samples of one interval.
pub fn samples(s: &Shares, out: &mut Vec<Sample>) {
    out.push(Sample::new("cpu_user", s.user));
    out.push(Sample::new("cpu_system", s.system));
    out.push(Sample::new("cpu_iowait", s.iowait));
    out.push(Sample::new("cpu_steal", s.steal));
    out.push(Sample::new("cpu_idle", s.idle));
}

/// procfs wants a SystemInfo to parse `/proc/stat`, but only for converting ticks to
/// durations, which this collector never does: shares are ratios of ticks, whatever the
/// tick rate. A fixed one reads the live host and a fixture the same way.
const SYSTEM_INFO: procfs::ExplicitSystemInfo = procfs::ExplicitSystemInfo {
    boot_time_secs: 0,
    ticks_per_second: 100,
    page_size: 4096,
    is_little_endian: true,
};

pub struct Cpu {
    env: Env,
    /// The previous reading; `None` before the first collection.
    prev: Option<Ticks>,
}

impl Cpu {
    fn read(&self) -> Result<Ticks, CollectError> {
        use procfs::FromReadSI;
        let stats = procfs::KernelStats::from_file(self.env.path("/proc/stat"), &SYSTEM_INFO)?;
        Ok(Ticks::from(&stats.total))
    }
}

impl Collector for Cpu {
    const NAME: &'static str = "cpu";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("cpu_user", Unit::Percent, "Share of CPU time spent in user mode over the last interval (1 = all CPUs)."),
        Metric::gauge("cpu_system", Unit::Percent, "Share of CPU time spent in kernel mode over the last interval."),
        Metric::gauge("cpu_iowait", Unit::Percent, "Share of CPU time spent idle waiting for I/O over the last interval."),
        Metric::gauge("cpu_steal", Unit::Percent, "Share of CPU time stolen by the hypervisor over the last interval."),
        Metric::gauge("cpu_idle", Unit::Percent, "Share of CPU time spent idle over the last interval."),
    ];
    type Config = CpuConfig;

    fn new(_: &CpuConfig, env: &Env) -> Self {
        Self { env: env.clone(), prev: None }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let cur = self.read()?;
        match self.prev.replace(cur).map(|prev| shares(&prev, &cur)) {
            Some(Some(s)) => samples(&s, out),
            Some(None) => tracing::debug!(
                collector = Self::NAME,
                "CPU counters went back or stood still; skipping this interval."
            ),
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use crate::collector::testutil::{fixture, value};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn fixture_is_parsed_column_by_column() {
        let c = Cpu::new(&CpuConfig::default(), &fixture("proc-cpu-1"));
        let t = c.read().unwrap();
        assert_eq!(
            t,
            Ticks {
                user: 1000,
                nice: 100,
                system: 400,
                idle: 8000,
                iowait: 200,
                irq: 50,
                softirq: 50,
                steal: 100
            }
        );
    }

    #[actix_rt::test]
    async fn first_collection_is_silent_then_shares_of_the_interval() {
        let mut c = Cpu::new(&CpuConfig::default(), &fixture("proc-cpu-1"));
        assert!(collect_guarded(&mut c).await.unwrap().is_empty(), "first reading only records counters");

        // Between the two fixtures 1000 ticks passed: user +300 nice +50, system +100 irq +20
        // softirq +30, iowait +50, steal +50, idle +400. guest +100 and guest_nice +20 are
        // already inside user and nice; counting them again would make the total 1120.
        c.env = fixture("proc-cpu-2");
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(s.len(), 5, "{s:?}");
        assert!(close(value(&s, "cpu_user"), 35.0), "{s:?}");
        assert!(close(value(&s, "cpu_system"), 15.0), "{s:?}");
        assert!(close(value(&s, "cpu_iowait"), 5.0), "{s:?}");
        assert!(close(value(&s, "cpu_steal"), 5.0), "{s:?}");
        assert!(close(value(&s, "cpu_idle"), 40.0), "{s:?}");
        assert!(s.iter().all(|x| x.tags.is_empty()));

        // The same reading again: no tick passed, nothing to divide by, nothing emitted.
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn counters_going_back_skip_one_interval_then_resume() {
        let mut c = Cpu::new(&CpuConfig::default(), &fixture("proc-cpu-2"));
        collect_guarded(&mut c).await.unwrap();
        c.env = fixture("proc-cpu-1");
        assert!(collect_guarded(&mut c).await.unwrap().is_empty(), "every counter went down");
        // The backwards reading became the new baseline, so the next interval is measured.
        c.env = fixture("proc-cpu-2");
        assert!(close(value(&collect_guarded(&mut c).await.unwrap(), "cpu_idle"), 40.0));
    }

    #[test]
    fn one_backwards_column_skips_the_interval() {
        let prev =
            Ticks { user: 10, nice: 0, system: 10, idle: 100, iowait: 50, irq: 0, softirq: 0, steal: 0 };
        let mut cur = Ticks { user: 20, idle: 200, iowait: 49, ..prev };
        assert_eq!(shares(&prev, &cur), None, "iowait stepped back by one tick");
        cur.iowait = 50;
        let s = shares(&prev, &cur).unwrap();
        assert!(close(s.user, 100.0 * 10.0 / 110.0) && close(s.idle, 100.0 * 100.0 / 110.0), "{s:?}");
        assert_eq!((s.system, s.iowait, s.steal), (0.0, 0.0, 0.0));
    }

    #[test]
    fn near_the_top_of_u64_still_exact() {
        // Counters never wrap in practice (u64 ticks), but huge values must not overflow.
        let prev = Ticks { user: u64::MAX - 30, idle: u64::MAX - 30, ..Ticks::default() };
        let cur = Ticks { user: u64::MAX - 10, idle: u64::MAX - 20, ..Ticks::default() };
        let s = shares(&prev, &cur).unwrap();
        assert!(close(s.user, 100.0 * 20.0 / 30.0) && close(s.idle, 100.0 * 10.0 / 30.0), "{s:?}");
    }

    #[actix_rt::test]
    async fn missing_file_is_an_error() {
        let mut c = Cpu::new(&CpuConfig::default(), &fixture("does-not-exist"));
        let e = collect_guarded(&mut c).await.unwrap_err();
        assert!(e.to_string().contains("stat"), "{e}");
    }

    #[actix_rt::test]
    async fn live_host() {
        let mut c = Cpu::new(&CpuConfig::default(), &Env::default());
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
        // Burn a little CPU so at least one tick passes on every CPU-count.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(s.len(), 5, "{s:?}");
        for x in &s {
            assert!((0.0..=100.0).contains(&x.value), "{x:?}");
        }
        let sum: f64 = s.iter().map(|x| x.value).sum();
        assert!((sum - 100.0).abs() < 1e-6, "shares add up to 100: {s:?}");
        assert!(value(&s, "cpu_user") + value(&s, "cpu_system") > 0.0, "we just spun: {s:?}");
    }
}
