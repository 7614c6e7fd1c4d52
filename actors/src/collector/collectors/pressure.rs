//! `pressure`: Linux pressure stall information (PSI) for cpu, memory and io (CONTRACT §4:
//! pressure_some_avg10, pressure_full_avg10, pressure_some_ms_sec, tagged `{resource}`).
//!
//! # Source
//!
//! `/proc/pressure/{cpu,memory,io}` (kernel 4.20 and later), each line parsed by the procfs
//! crate (`parse_pressure_record`). Lines are read one by one rather than as procfs' pair,
//! because kernels before 5.13 have no `full` line for cpu.
//!
//! # What the numbers mean
//!
//! - `pressure_some_avg10`: percent of the last 10 s in which at least one task was stalled
//!   on the resource (the kernel's own average).
//! - `pressure_full_avg10`: percent of the last 10 s in which every non-idle task was
//!   stalled at once. Not emitted where the kernel has no `full` line (cpu before 5.13);
//!   at the system level the kernel reports cpu `full` as 0.
//! - `pressure_some_ms_sec`: milliseconds of `some` stall per second over the last interval,
//!   from the `total` counter (microseconds): unlike avg10 it sees every stall between two
//!   collections, whatever the interval. The first collection only records the counter.
//!
//! # Silence
//!
//! A host without `/proc/pressure` (an old kernel, or one booted with `psi=0`, where the
//! files exist but cannot be read) yields no samples and no error: there is nothing to
//! measure, and such a host must not show a failing collector for ever.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.pressure]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PressureConfig {
    /// Collect pressure stall information.
    pub enabled: bool,
}

impl Default for PressureConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl CollectorConfig for PressureConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

/// The `resource` tag values, which are also the file names under `/proc/pressure`.
pub const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// One resource's file: the `some` record and the `full` one where the kernel has it.
#[derive(Debug, Clone)]
pub struct Reading {
    pub some: procfs::PressureRecord,
    pub full: Option<procfs::PressureRecord>,
}

/// Parses the text of one `/proc/pressure/*` file.
pub fn parse(text: &str) -> Result<Reading, CollectError> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let rec = procfs::parse_pressure_record(line)
            .map_err(|e| CollectError::Proc(format!("pressure line {line:?}: {e}")))?;
        if line.starts_with("some") {
            some = Some(rec);
        } else {
            full = Some(rec);
        }
    }
    let some = some.ok_or_else(|| CollectError::Proc(format!("no `some` line in {text:?}")))?;
    Ok(Reading { some, full })
}

pub struct Pressure {
    env: Env,
    /// The `some` totals (µs) of the last collection, per resource, and when it was read.
    last: Option<([Option<u64>; 3], Instant)>,
}

impl Pressure {
    /// Each resource's reading; `None` for a resource whose file is absent. `Ok(None)` when
    /// the host has no PSI at all.
    fn read(&self) -> Result<Option<[Option<Reading>; 3]>, CollectError> {
        let dir = self.env.path("/proc/pressure");
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut out: [Option<Reading>; 3] = Default::default();
        let mut unsupported = 0;
        for (slot, resource) in out.iter_mut().zip(RESOURCES) {
            let path = dir.join(resource);
            match std::fs::read_to_string(&path) {
                Ok(text) => *slot = Some(parse(&text)?),
                // `psi=0` on the kernel command line: the files are there, reads fail.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => unsupported += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CollectError::Io { path: path.display().to_string(), source }),
            }
        }
        Ok(if unsupported == RESOURCES.len() { None } else { Some(out) })
    }
}

/// The samples of one collection; `rate_of(i, total)` is resource i's stall rate in ms/s, or
/// `None` when there is no earlier reading to compare with.
pub fn samples(readings: &[Option<Reading>; 3], rate_of: impl Fn(usize, u64) -> Option<f64>, out: &mut Vec<Sample>) {
    for (i, (reading, resource)) in readings.iter().zip(RESOURCES).enumerate() {
        let Some(r) = reading else { continue };
        out.push(Sample::new("pressure_some_avg10", r.some.avg10 as f64).tag("resource", resource));
        if let Some(full) = &r.full {
            out.push(Sample::new("pressure_full_avg10", full.avg10 as f64).tag("resource", resource));
        }
        if let Some(rate) = rate_of(i, r.some.total) {
            out.push(Sample::new("pressure_some_ms_sec", rate).tag("resource", resource));
        }
    }
}

impl Collector for Pressure {
    const NAME: &'static str = "pressure";
    const METRICS: &'static [Metric] = &[
        Metric::gauge(
            "pressure_some_avg10",
            Unit::Percent,
            "Share of the last 10 s in which some tasks were stalled on the resource (PSI some avg10).",
        ),
        Metric::gauge(
            "pressure_full_avg10",
            Unit::Percent,
            "Share of the last 10 s in which all non-idle tasks were stalled on the resource (PSI full avg10).",
        ),
        Metric::gauge(
            "pressure_some_ms_sec",
            Unit::Milliseconds,
            "Time some tasks were stalled on the resource, per second over the last interval (PSI some total).",
        )
        .exposed_as("vigil_pressure_some_stall_seconds_per_second"),
    ];
    type Config = PressureConfig;

    fn new(_: &PressureConfig, env: &Env) -> Self {
        Self { env: env.clone(), last: None }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let at = Instant::now();
        let Some(readings) = self.read()? else {
            self.last = None;
            return Ok(());
        };
        let totals = readings.each_ref().map(|r| r.as_ref().map(|r| r.some.total));
        let last = self.last.take();
        let rate_of = |i: usize, total: u64| {
            let (prev, then) = last.as_ref()?;
            let secs = at.duration_since(*then).as_secs_f64();
            // A counter that went down (never, short of a reboot) gives no rate this time.
            let delta = total.checked_sub(prev[i]?)?;
            (secs > 0.0).then(|| delta as f64 / 1000.0 / secs)
        };
        samples(&readings, rate_of, out);
        self.last = Some((totals, at));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use crate::collector::testutil::fixture;

    fn find(s: &[Sample], name: &str, resource: &str) -> Option<f64> {
        s.iter()
            .find(|x| x.name == name && x.tags.get("resource").map(String::as_str) == Some(resource))
            .map(|x| x.value)
    }

    #[actix_rt::test]
    async fn fixture_values_and_an_old_kernel_without_cpu_full() {
        // pressure-1: cpu has only a `some` line (kernel < 5.13); memory and io have both.
        let mut c = Pressure::new(&PressureConfig::default(), &fixture("pressure-1"));
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(find(&s, "pressure_some_avg10", "cpu"), Some(3.15f32 as f64));
        assert_eq!(find(&s, "pressure_full_avg10", "cpu"), None, "no full line, no sample");
        assert_eq!(find(&s, "pressure_some_avg10", "memory"), Some(1.5f32 as f64));
        assert_eq!(find(&s, "pressure_full_avg10", "memory"), Some(0.75f32 as f64));
        assert_eq!(find(&s, "pressure_full_avg10", "io"), Some(12.25f32 as f64));
        assert!(s.iter().all(|x| x.name != "pressure_some_ms_sec"), "first collection: no rates");
        assert_eq!(s.len(), 5, "{s:?}");
    }

    #[test]
    fn stall_rate_is_the_total_delta_in_ms_per_second() {
        let r = parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=5000000\n").unwrap();
        let readings = [Some(r), None, None];
        let mut out = Vec::new();
        // 2.5 s of stall (µs) over 10 s: 250 ms per second.
        samples(&readings, |_, total| Some((total - 2_500_000) as f64 / 1000.0 / 10.0), &mut out);
        assert_eq!(find(&out, "pressure_some_ms_sec", "cpu"), Some(250.0));
        assert!(parse("bogus line\n").is_err());
        assert!(parse("").is_err(), "a file with no `some` line is an error");
    }

    #[actix_rt::test]
    async fn a_host_without_psi_is_silent() {
        let mut c = Pressure::new(&PressureConfig::default(), &fixture("proc-basic"));
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn live_host_stall_grows_under_a_cpu_hog() {
        if !std::path::Path::new("/proc/pressure/cpu").exists() {
            panic!("this kernel has no PSI; the tests need a host with /proc/pressure");
        }
        let mut c = Pressure::new(&PressureConfig::default(), &Env::default());
        collect_guarded(&mut c).await.unwrap();
        // One busy thread more than there are CPUs: someone always waits for a CPU.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hogs: Vec<_> = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let s = collect_guarded(&mut c).await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hogs.into_iter().for_each(|h| h.join().unwrap());
        for resource in RESOURCES {
            let avg = find(&s, "pressure_some_avg10", resource).unwrap();
            assert!((0.0..=100.0).contains(&avg), "{resource}: {avg}");
        }
        let cpu = find(&s, "pressure_some_ms_sec", "cpu").unwrap();
        assert!(cpu > 50.0 && cpu <= 1000.0 * 1.05, "{threads} spinning threads stall someone: {cpu} ms/s");
    }
}
