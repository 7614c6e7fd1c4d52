//! `disk`: I/O operations and latency of every whole block device (CONTRACT §4:
//! disk_reads_sec, disk_writes_sec, disk_latency, tagged `{device}`).
//!
//! # Source
//!
//! `/proc/diskstats`, parsed by the procfs crate (`DiskStats`), on the live host and under a
//! fixture root alike: sysinfo reports per-disk bytes only, not completed operations or the
//! time spent on them.
//!
//! # What the numbers mean
//!
//! Over the interval between two collections (measured, not the configured interval):
//!
//! - `disk_reads_sec`, `disk_writes_sec`: completed reads / writes per second.
//! - `disk_latency`: milliseconds per completed I/O, i.e.
//!   Δ(time reading + time writing) / Δ(reads + writes); 0 when nothing completed. It is the
//!   average time a request spent from issue to completion, queueing included. Discards and
//!   flushes are not counted.
//!
//! The first collection only records counters. A device whose counters went down (a wrap of
//! the kernel's 32-bit counters, or a reset when the device was re-created) is skipped for
//! that interval and measured again from its new values. A device that appears is measured
//! from its second reading on; one that vanishes is forgotten.
//!
//! # Which devices
//!
//! A device is reported when both hold:
//!
//! 1. its name does not start with one of `devices_exclude` (default `loop`, `ram`, `zram`);
//! 2. it is a whole disk: `/sys/block/<name>` exists (with `/` in the name written `!`, as
//!    sysfs does: `cciss/c0d0` is `/sys/block/cciss!c0d0`). Partitions (`sda1`, `nvme0n1p2`)
//!    are not there, so they never double-count their disk. Device-mapper and md devices
//!    (`dm-0`, `md0`) are whole block devices and are reported; their I/O also shows on the
//!    disks beneath them.
//!
//! If `/sys/block` cannot be read (no sysfs in a container, say), rule 2 is dropped and every
//! device not excluded by rule 1 is reported, partitions included.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.disk]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Collect per-device I/O rates and latency.
    pub enabled: bool,
    /// Devices whose name starts with one of these prefixes are not reported.
    pub devices_exclude: Vec<String>,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self { enabled: true, devices_exclude: vec!["loop".into(), "ram".into(), "zram".into()] }
    }
}

impl CollectorConfig for DiskConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Vec<(String, String)> {
        self.devices_exclude
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_empty())
            .map(|(i, _)| {
                (format!("devices_exclude[{i}]"), "an empty prefix would exclude every device".to_string())
            })
            .collect()
    }
}

/// The cumulative counters of one device that the metrics are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskCounters {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Milliseconds spent on completed reads.
    pub time_reading_ms: u64,
    /// Milliseconds spent on completed writes.
    pub time_writing_ms: u64,
}

impl From<&procfs::DiskStat> for DiskCounters {
    fn from(d: &procfs::DiskStat) -> Self {
        Self {
            reads: d.reads,
            writes: d.writes,
            time_reading_ms: d.time_reading,
            time_writing_ms: d.time_writing,
        }
    }
}

/// Whether `name` is reported: not excluded by prefix, and a whole disk when the set of
/// `/sys/block` names is known (`None` = sysfs unreadable: every non-excluded device).
pub fn is_reported(name: &str, exclude: &[String], whole_disks: Option<&HashSet<String>>) -> bool {
    if exclude.iter().any(|p| name.starts_with(p.as_str())) {
        return false;
    }
    match whole_disks {
        Some(set) => set.contains(&name.replace('/', "!")),
        None => true,
    }
}

/// The per-second rates and latency of every device present in both readings, `elapsed`
/// apart. Devices with a counter that went down are skipped; nothing is emitted for a
/// zero interval.
pub fn rates(
    prev: &BTreeMap<String, DiskCounters>,
    cur: &BTreeMap<String, DiskCounters>,
    elapsed: Duration,
    out: &mut Vec<Sample>,
) {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return;
    }
    for (device, now) in cur {
        let Some(before) = prev.get(device) else { continue };
        let delta = (|| {
            Some(DiskCounters {
                reads: now.reads.checked_sub(before.reads)?,
                writes: now.writes.checked_sub(before.writes)?,
                time_reading_ms: now.time_reading_ms.checked_sub(before.time_reading_ms)?,
                time_writing_ms: now.time_writing_ms.checked_sub(before.time_writing_ms)?,
            })
        })();
        let Some(d) = delta else {
            tracing::debug!(device = %device, "Disk counters went down (wrap or reset); skipping this interval.");
            continue;
        };
        let ios = d.reads as f64 + d.writes as f64;
        let latency =
            if ios > 0.0 { (d.time_reading_ms as f64 + d.time_writing_ms as f64) / ios } else { 0.0 };
        out.push(Sample::new("disk_reads_sec", d.reads as f64 / secs).tag("device", device));
        out.push(Sample::new("disk_writes_sec", d.writes as f64 / secs).tag("device", device));
        out.push(Sample::new("disk_latency", latency).tag("device", device));
    }
}

/// One reading of every reported device, and when it was taken.
struct Reading {
    at: Instant,
    devices: BTreeMap<String, DiskCounters>,
}

pub struct Disk {
    env: Env,
    exclude: Vec<String>,
    prev: Option<Reading>,
}

impl Disk {
    /// The names under `/sys/block`, or `None` when it cannot be listed.
    fn whole_disks(&self) -> Option<HashSet<String>> {
        let dir = std::fs::read_dir(self.env.path("/sys/block")).ok()?;
        Some(dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
    }

    /// The counters of every reported device; `None` when the host has no
    /// `/proc/diskstats` (a kernel without a block layer).
    fn read(&self) -> Result<Option<BTreeMap<String, DiskCounters>>, CollectError> {
        use procfs::FromRead;
        let stats = match procfs::DiskStats::from_file(self.env.path("/proc/diskstats")) {
            Ok(s) => s,
            Err(procfs::ProcError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let whole = self.whole_disks();
        if whole.is_none() {
            tracing::debug!("/sys/block unreadable; reporting every device not excluded by prefix.");
        }
        Ok(Some(
            stats
                .0
                .iter()
                .filter(|d| is_reported(&d.name, &self.exclude, whole.as_ref()))
                .map(|d| (d.name.clone(), DiskCounters::from(d)))
                .collect(),
        ))
    }

    /// Emits the rates since the previous reading (if any) and keeps this one as the next
    /// baseline; devices absent from it are thereby forgotten.
    fn advance(&mut self, devices: BTreeMap<String, DiskCounters>, at: Instant, out: &mut Vec<Sample>) {
        if let Some(prev) = &self.prev {
            rates(&prev.devices, &devices, at.saturating_duration_since(prev.at), out);
        }
        self.prev = Some(Reading { at, devices });
    }
}

impl Collector for Disk {
    const NAME: &'static str = "disk";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("disk_reads_sec", Unit::PerSecond, "Completed reads per second over the last interval."),
        Metric::gauge("disk_writes_sec", Unit::PerSecond, "Completed writes per second over the last interval."),
        Metric::gauge("disk_latency", Unit::Milliseconds, "Average time per completed I/O over the last interval."),
    ];
    type Config = DiskConfig;

    fn new(config: &DiskConfig, env: &Env) -> Self {
        Self { env: env.clone(), exclude: config.devices_exclude.clone(), prev: None }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let at = Instant::now();
        match self.read()? {
            Some(devices) => self.advance(devices, at, out),
            None => tracing::debug!("No /proc/diskstats on this host; no disk samples."),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;

    fn fixture(n: u32) -> Env {
        Env {
            root: format!("{}/../tests/fixtures/disk-{n}", env!("CARGO_MANIFEST_DIR")).into(),
            ..Env::default()
        }
    }

    fn value(s: &[Sample], name: &str, device: &str) -> f64 {
        s.iter()
            .find(|x| x.name == name && x.tags.get("device").map(String::as_str) == Some(device))
            .unwrap_or_else(|| panic!("{name}{{device={device}}} missing: {s:?}"))
            .value
    }

    fn devices(s: &[Sample]) -> Vec<String> {
        let mut d: Vec<String> = s.iter().map(|x| x.tags["device"].clone()).collect();
        d.dedup();
        d
    }

    fn counters(reads: u64, writes: u64, tr: u64, tw: u64) -> DiskCounters {
        DiskCounters { reads, writes, time_reading_ms: tr, time_writing_ms: tw }
    }

    fn read(env: &Env) -> BTreeMap<String, DiskCounters> {
        Disk::new(&DiskConfig::default(), env).read().unwrap().unwrap()
    }

    #[test]
    fn fixture_selects_whole_disks_only() {
        let d1: Vec<String> = read(&fixture(1)).into_keys().collect();
        // Not loop0/loop1/ram0/zram0 (prefix), not sda1/sda2/nvme0n1p1 (partitions).
        assert_eq!(d1, ["cciss/c0d0", "dm-0", "nvme0n1", "sda", "sdb", "sdd"]);
        let d2: Vec<String> = read(&fixture(2)).into_keys().collect();
        assert_eq!(d2, ["cciss/c0d0", "dm-0", "nvme0n1", "sda", "sdc", "sdd"]);
        assert_eq!(read(&fixture(1))["sda"], counters(1000, 2000, 5000, 12000));
    }

    #[test]
    fn fixture_rates_over_ten_seconds() {
        let mut out = Vec::new();
        rates(&read(&fixture(1)), &read(&fixture(2)), Duration::from_secs(10), &mut out);
        // sda: +500 reads, +500 writes, +1000 ms reading, +4000 ms writing.
        assert_eq!(value(&out, "disk_reads_sec", "sda"), 50.0);
        assert_eq!(value(&out, "disk_writes_sec", "sda"), 50.0);
        assert_eq!(value(&out, "disk_latency", "sda"), 5.0);
        // nvme0n1: +250 reads, +750 writes, +50 ms + 450 ms.
        assert_eq!(value(&out, "disk_reads_sec", "nvme0n1"), 25.0);
        assert_eq!(value(&out, "disk_writes_sec", "nvme0n1"), 75.0);
        assert_eq!(value(&out, "disk_latency", "nvme0n1"), 0.5);
        // cciss/c0d0: +30 reads, no writes, +90 ms: its sysfs name is cciss!c0d0.
        assert_eq!(value(&out, "disk_reads_sec", "cciss/c0d0"), 3.0);
        assert_eq!(value(&out, "disk_writes_sec", "cciss/c0d0"), 0.0);
        assert_eq!(value(&out, "disk_latency", "cciss/c0d0"), 3.0);
        // sdd: idle, so latency 0 rather than 0/0.
        assert_eq!(value(&out, "disk_reads_sec", "sdd"), 0.0);
        assert_eq!(value(&out, "disk_latency", "sdd"), 0.0);
        // dm-0 was reset (reads went down), sdb vanished, sdc appeared: no samples.
        assert_eq!(devices(&out), ["cciss/c0d0", "nvme0n1", "sda", "sdd"]);
        assert_eq!(out.len(), 4 * 3);
    }

    #[test]
    fn rate_scales_with_elapsed_time() {
        let prev = BTreeMap::from([("sda".to_string(), counters(0, 0, 0, 0))]);
        let cur = BTreeMap::from([("sda".to_string(), counters(30, 10, 70, 50))]);
        let mut out = Vec::new();
        rates(&prev, &cur, Duration::from_millis(2500), &mut out);
        assert_eq!(value(&out, "disk_reads_sec", "sda"), 12.0);
        assert_eq!(value(&out, "disk_writes_sec", "sda"), 4.0);
        assert_eq!(value(&out, "disk_latency", "sda"), 3.0, "120 ms over 40 IOs, independent of elapsed");
        out.clear();
        rates(&prev, &cur, Duration::ZERO, &mut out);
        assert!(out.is_empty(), "a zero interval yields no rate: {out:?}");
    }

    #[test]
    fn any_counter_going_down_skips_the_device() {
        let prev = BTreeMap::from([("sda".to_string(), counters(100, 100, 100, 100))]);
        for cur in [
            counters(99, 200, 200, 200),
            counters(200, 99, 200, 200),
            counters(200, 200, 99, 200),
            counters(200, 200, 200, 99),
        ] {
            let mut out = Vec::new();
            rates(&prev, &BTreeMap::from([("sda".to_string(), cur)]), Duration::from_secs(1), &mut out);
            assert!(out.is_empty(), "{cur:?}: {out:?}");
        }
        // A 32-bit kernel's counter wrapping: near u32::MAX, then small.
        let before = BTreeMap::from([("sda".to_string(), counters(4_294_967_000, 10, 10, 10))]);
        let after = BTreeMap::from([("sda".to_string(), counters(200, 20, 20, 20))]);
        let mut out = Vec::new();
        rates(&before, &after, Duration::from_secs(1), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Counters that did not move at all are fine.
        let mut out = Vec::new();
        rates(&prev, &prev, Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn device_rule_without_sysfs_keeps_partitions_but_not_excluded() {
        let exclude = DiskConfig::default().devices_exclude;
        for name in ["sda", "sda1", "nvme0n1p1", "dm-0"] {
            assert!(is_reported(name, &exclude, None), "{name}");
        }
        for name in ["loop0", "ram0", "zram0"] {
            assert!(!is_reported(name, &exclude, None), "{name}");
        }
        let whole = HashSet::from(["sda".to_string(), "loop0".to_string()]);
        assert!(is_reported("sda", &exclude, Some(&whole)));
        assert!(!is_reported("sda1", &exclude, Some(&whole)));
        assert!(!is_reported("loop0", &exclude, Some(&whole)), "prefix wins over sysfs");
        assert!(is_reported("loop0", &[], Some(&whole)), "the exclude list is configurable");
    }

    #[test]
    fn collector_state_across_readings() {
        let mut c = Disk::new(&DiskConfig::default(), &fixture(1));
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.advance(read(&fixture(1)), t0, &mut out);
        assert!(out.is_empty(), "first reading only records counters: {out:?}");
        c.advance(read(&fixture(2)), t0 + Duration::from_secs(10), &mut out);
        assert_eq!(value(&out, "disk_reads_sec", "sda"), 50.0);
        let kept: Vec<&String> = c.prev.as_ref().unwrap().devices.keys().collect();
        assert!(!kept.iter().any(|d| *d == "sdb"), "vanished sdb is forgotten");
        // Third reading = the second again, 5 s later: sdc (new last time) and dm-0 (reset
        // last time) now have a baseline and report zero rates.
        out.clear();
        c.advance(read(&fixture(2)), t0 + Duration::from_secs(15), &mut out);
        assert_eq!(devices(&out), ["cciss/c0d0", "dm-0", "nvme0n1", "sda", "sdc", "sdd"]);
        assert!(out.iter().all(|s| s.value == 0.0), "{out:?}");
    }

    #[actix_rt::test]
    async fn first_collection_emits_nothing_and_missing_diskstats_is_not_an_error() {
        let mut c = Disk::new(&DiskConfig::default(), &fixture(1));
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
        let env = Env { root: "/nonexistent/vigil-fixture".into(), ..Env::default() };
        let mut c = Disk::new(&DiskConfig::default(), &env);
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
    }

    #[test]
    fn empty_prefix_is_a_config_problem() {
        assert!(DiskConfig::default().validate().is_empty());
        let c = DiskConfig { devices_exclude: vec!["loop".into(), "".into()], ..DiskConfig::default() };
        assert_eq!(c.validate().len(), 1);
        assert_eq!(c.validate()[0].0, "devices_exclude[1]");
    }

    #[actix_rt::test]
    async fn live_host() {
        let env = Env::default();
        let mut c = Disk::new(&DiskConfig::default(), &env);
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = collect_guarded(&mut c).await.unwrap();
        let expected: Vec<String> = c.prev.as_ref().unwrap().devices.keys().cloned().collect();
        // Every reported device is a whole disk, not loop/ram/zram, and has all three metrics.
        let sys_block = std::path::Path::new("/sys/block");
        for d in &expected {
            assert!(!d.starts_with("loop") && !d.starts_with("ram") && !d.starts_with("zram"), "{d}");
            if sys_block.is_dir() {
                assert!(sys_block.join(d.replace('/', "!")).exists(), "{d} is not a whole disk");
            }
        }
        // A host with a real disk in /sys/block gets it reported.
        let real_disks = std::fs::read_dir(sys_block)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(expected.is_empty(), real_disks == 0, "reported {expected:?}");
        assert_eq!(devices(&s), expected, "devices don't change in 200 ms");
        assert_eq!(s.len(), expected.len() * 3);
        for x in &s {
            assert!(x.value.is_finite() && x.value >= 0.0, "{x:?}");
            if x.name != "disk_latency" {
                assert!(x.value < 10_000_000.0, "implausible IO rate: {x:?}");
            }
        }
    }
}
