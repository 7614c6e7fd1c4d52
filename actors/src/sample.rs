//! The types both processes speak about measurements: a [`Sample`] as collectors make it,
//! the child sends it (`ipc`) and the supervisor keeps, exposes and uploads it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Self { name: name.into(), tags: BTreeMap::new(), value }
    }

    /// Adds a tag (builder style).
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
}

/// The unit a collector samples a metric in. Exposition (`/metrics`) converts to the base
/// unit Prometheus expects and says it in the name; the native and remote-write sinks send
/// the value as sampled, under the native name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// 0–100; exposed as a `_ratio` (0–1).
    Percent,
    /// Milliseconds; exposed as `_seconds`.
    Milliseconds,
    /// A rate per second (native names end in `_sec` or name the thing counted); exposed as
    /// `_per_second`.
    PerSecond,
    /// Bytes; exposed with a `_bytes` suffix.
    Bytes,
    /// A count, a ratio of its own (a load average) or a 0/1 flag: no unit, no conversion.
    None,
}

impl Unit {
    /// Multiplied into a sampled value to reach the base unit.
    pub fn scale(self) -> f64 {
        match self {
            Unit::Percent => 0.01,
            Unit::Milliseconds => 0.001,
            Unit::PerSecond | Unit::Bytes | Unit::None => 1.0,
        }
    }
}

/// How a metric's value behaves: a gauge goes up and down, a counter only up (its exposition
/// name ends in `_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One metric a collector produces, declared in the collector's own file
/// (`Collector::METRICS`): the native sample name (CONTRACT §4), its unit and kind, and the
/// HELP text. `/metrics`, docs/metrics.md (checked by a test) and any later sink derive
/// their names from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
    pub kind: Kind,
    pub help: &'static str,
    /// The exposition name when the rule of [`Metric::exposition_name`] does not give it.
    pub exposed: Option<&'static str>,
}

impl Metric {
    /// A gauge: what every collector metric is (rates are computed by the collector, not
    /// left to `rate()`).
    pub const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Self {
        Self { name, unit, kind: Kind::Gauge, help, exposed: None }
    }

    /// Overrides the derived exposition name (when the native name does not say the thing
    /// counted, e.g. `net_rcvd_byte` → `vigil_net_rcvd_bytes_per_second`).
    pub const fn exposed_as(mut self, name: &'static str) -> Self {
        self.exposed = Some(name);
        self
    }

    /// The `/metrics` name: `vigil_` + the native name in base units with the unit as a
    /// suffix: `_ratio` for percentages, `_seconds` for milliseconds, `_per_second` for rates
    /// (a native `_sec` suffix dropped first), `_bytes` for bytes (unless already there),
    /// `_total` for counters; or the declared override.
    pub fn exposition_name(&self) -> String {
        if let Some(name) = self.exposed {
            return name.to_string();
        }
        let mut base = self.name;
        if self.unit == Unit::PerSecond {
            base = base.strip_suffix("_sec").unwrap_or(base);
        }
        let suffix = match self.unit {
            Unit::Percent => "_ratio",
            Unit::Milliseconds => "_seconds",
            Unit::PerSecond => "_per_second",
            Unit::Bytes if !base.ends_with("_bytes") => "_bytes",
            Unit::Bytes | Unit::None => "",
        };
        let total = if self.kind == Kind::Counter && !base.ends_with("_total") { "_total" } else { "" };
        metric_name(&format!("vigil_{base}{suffix}{total}"))
    }
}

/// The one metric-name sanitiser: a valid Prometheus metric or label name,
/// `[a-zA-Z_][a-zA-Z0-9_]*`. Every other character becomes `_`, colons included (they are
/// reserved for recording rules), and a name that does not start with a letter or `_` gets
/// one `_` in front. Used by `/metrics` and by the remote-write sink.
pub fn metric_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_follow_the_unit() {
        let n = |name, unit| Metric::gauge(name, unit, "").exposition_name();
        assert_eq!(n("cpu_user", Unit::Percent), "vigil_cpu_user_ratio");
        assert_eq!(n("disk_reads_sec", Unit::PerSecond), "vigil_disk_reads_per_second");
        assert_eq!(n("disk_latency", Unit::Milliseconds), "vigil_disk_latency_seconds");
        assert_eq!(n("mem_available_bytes", Unit::Bytes), "vigil_mem_available_bytes");
        assert_eq!(n("heap", Unit::Bytes), "vigil_heap_bytes");
        assert_eq!(n("load_1", Unit::None), "vigil_load_1");
        let c = Metric { kind: Kind::Counter, ..Metric::gauge("restarts", Unit::None, "") };
        assert_eq!(c.exposition_name(), "vigil_restarts_total");
        let o = Metric::gauge("dns", Unit::Milliseconds, "").exposed_as("vigil_dns_resolution_seconds");
        assert_eq!(o.exposition_name(), "vigil_dns_resolution_seconds");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(metric_name("a.b-c:d"), "a_b_c_d");
        assert_eq!(metric_name("9lives"), "_9lives");
        assert_eq!(metric_name(""), "_");
        assert_eq!(metric_name("é"), "_");
        assert_eq!(metric_name("_ok"), "_ok");
    }
}
