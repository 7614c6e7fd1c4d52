//! `load`: load averages, and the 1-minute one per CPU (CONTRACT §4: load_1, load_5, load_15,
//! load_1_norm).
//!
//! On the live host the numbers come from sysinfo; under a fixture root (tests) the same
//! files are read with the procfs crate. The arithmetic is shared.

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.load]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Collect load averages.
    pub enabled: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl CollectorConfig for LoadConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

pub struct Load {
    env: Env,
    cpus: usize,
}

impl Load {
    fn read(&self) -> Result<[f64; 3], CollectError> {
        if self.env.root == std::path::Path::new("/") {
            let l = sysinfo::System::load_average().map_err(|e| CollectError::Other(format!("load average: {e}")))?;
            Ok([l.one, l.five, l.fifteen])
        } else {
            use procfs::FromRead;
            let l = procfs::LoadAverage::from_file(self.env.path("/proc/loadavg"))?;
            Ok([l.one as f64, l.five as f64, l.fifteen as f64])
        }
    }
}

/// Logical CPUs of the host (sysinfo), or of a fixture root (its /proc/cpuinfo); 0 if unknown.
pub(crate) fn cpu_count(env: &Env) -> usize {
    if env.root == std::path::Path::new("/") {
        let sys = sysinfo::System::new_with_specifics(
            sysinfo::RefreshKind::nothing().with_cpu(sysinfo::CpuRefreshKind::nothing()),
        );
        sys.map(|s| s.cpus().len()).unwrap_or(0)
    } else {
        use procfs::FromRead;
        procfs::CpuInfo::from_file(env.path("/proc/cpuinfo")).map(|c| c.num_cores()).unwrap_or(0)
    }
}

/// The four samples from the three averages and the CPU count (0 = unknown: no norm).
pub fn samples(avg: [f64; 3], cpus: usize, out: &mut Vec<Sample>) {
    out.push(Sample::new("load_1", avg[0]));
    out.push(Sample::new("load_5", avg[1]));
    out.push(Sample::new("load_15", avg[2]));
    if cpus > 0 {
        out.push(Sample::new("load_1_norm", avg[0] / cpus as f64));
    }
}

impl Collector for Load {
    const NAME: &'static str = "load";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("load_1", Unit::None, "Load average over 1 minute."),
        Metric::gauge("load_5", Unit::None, "Load average over 5 minutes."),
        Metric::gauge("load_15", Unit::None, "Load average over 15 minutes."),
        Metric::gauge("load_1_norm", Unit::None, "Load average over 1 minute divided by the number of CPUs."),
    ];
    type Config = LoadConfig;

    fn new(_: &LoadConfig, env: &Env) -> Self {
        Self { env: env.clone(), cpus: cpu_count(env) }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let avg = self.read()?;
        samples(avg, self.cpus, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use crate::collector::testutil::{fixture, value};

    #[actix_rt::test]
    async fn fixture_values() {
        let env = fixture("proc-basic");
        let mut c = Load::new(&LoadConfig::default(), &env);
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(value(&s, "load_1"), 1.5);
        assert_eq!(value(&s, "load_5"), 0.75);
        assert_eq!(value(&s, "load_15"), 0.25);
        assert_eq!(value(&s, "load_1_norm"), 0.75, "two CPUs in the fixture");
    }

    #[actix_rt::test]
    async fn live_host() {
        let mut c = Load::new(&LoadConfig::default(), &Env::default());
        let s = collect_guarded(&mut c).await.unwrap();
        assert!(value(&s, "load_1") >= 0.0);
        let n = value(&s, "load_1_norm");
        assert!(n >= 0.0 && (n - value(&s, "load_1") / c.cpus as f64).abs() < 1e-9);
        assert!(c.cpus >= 1);
    }
}
