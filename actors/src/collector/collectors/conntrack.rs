//! `conntrack`: the netfilter connection-tracking table (CONTRACT §4: conntrack_entries,
//! conntrack_util).
//!
//! # Source
//!
//! `/proc/sys/net/netfilter/nf_conntrack_count` and `nf_conntrack_max` of the agent's
//! network namespace: one number each. A full table drops new connections (the kernel logs
//! "nf_conntrack: table full, dropping packet"), so `conntrack_util` is the figure to alert
//! on.
//!
//! # Silence
//!
//! Where nf_conntrack is not loaded the files do not exist: no samples and no error (the
//! module is loaded on demand by the firewall, and most hosts without a firewall never load
//! it). A max of 0 gives the entries without a utilisation.

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.conntrack]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Collect the size of the connection-tracking table.
    pub enabled: bool,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl CollectorConfig for ConntrackConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

pub struct Conntrack {
    env: Env,
}

impl Conntrack {
    /// The number in a one-number file; `Ok(None)` when the file does not exist.
    fn number(&self, file: &str) -> Result<Option<u64>, CollectError> {
        let path = self.env.path(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| CollectError::Proc(format!("{}: not a number: {text:?}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CollectError::Io { path: path.display().to_string(), source }),
        }
    }
}

/// The samples from the entry count and the table size.
pub fn samples(count: u64, max: u64, out: &mut Vec<Sample>) {
    out.push(Sample::new("conntrack_entries", count as f64));
    if max > 0 {
        out.push(Sample::new("conntrack_util", count as f64 * 100.0 / max as f64));
    }
}

impl Collector for Conntrack {
    const NAME: &'static str = "conntrack";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("conntrack_entries", Unit::None, "Entries in the connection-tracking table."),
        Metric::gauge("conntrack_util", Unit::Percent, "Entries as a share of nf_conntrack_max."),
    ];
    type Config = ConntrackConfig;

    fn new(_: &ConntrackConfig, env: &Env) -> Self {
        Self { env: env.clone() }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let Some(count) = self.number("/proc/sys/net/netfilter/nf_conntrack_count")? else {
            return Ok(());
        };
        let max = self.number("/proc/sys/net/netfilter/nf_conntrack_max")?.unwrap_or(0);
        samples(count, max, out);
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
        // conntrack-1: 6553 of 262144.
        let mut c = Conntrack::new(&ConntrackConfig::default(), &fixture("conntrack-1"));
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(value(&s, "conntrack_entries"), 6553.0);
        assert!((value(&s, "conntrack_util") - 2.4997711).abs() < 1e-6, "{s:?}");
    }

    #[actix_rt::test]
    async fn silent_without_the_module_and_clear_on_garbage() {
        let mut c = Conntrack::new(&ConntrackConfig::default(), &fixture("proc-basic"));
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
        let mut c = Conntrack::new(&ConntrackConfig::default(), &fixture("conntrack-bad"));
        let e = collect_guarded(&mut c).await.unwrap_err().to_string();
        assert!(e.contains("nf_conntrack_count: not a number"), "{e}");
        let mut out = Vec::new();
        samples(5, 0, &mut out);
        assert_eq!(out.len(), 1, "no utilisation of a table of size 0");
    }

    #[actix_rt::test]
    async fn live_host_matches_the_kernel() {
        let count = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count");
        let mut c = Conntrack::new(&ConntrackConfig::default(), &Env::default());
        let s = collect_guarded(&mut c).await.unwrap();
        match count {
            Err(_) => assert!(s.is_empty(), "no module, no samples: {s:?}"),
            Ok(_) => {
                let util = value(&s, "conntrack_util");
                assert!((0.0..=100.0).contains(&util), "{s:?}");
                assert!(value(&s, "conntrack_entries") >= 0.0);
            }
        }
    }
}
