//! THE list of collectors, and each collector (`collectors/NAME.rs`).
//!
//! Adding a collector touches three places: its file here, one line `name: Type,` in
//! `registry!` below (the line declares the module too), and its commented block in
//! `config/vigil.toml` (see docs/adding-a-collector.md). Everything else is generated from
//! the list: the `[collectors]` config table and its validation, [`NAMES`], [`METRICS`] (the
//! `/metrics` names and docs/metrics.md come from the collectors' own declarations), the
//! actors started in the child, `vigil once`; tests take the names from here, never a copy.

use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

#[allow(unused_imports)] // used by the expansion of `registry!`
use crate::collector::{
    collect_guarded, CollectError, Collector, CollectorActor, CollectorConfig, CollectorContext, Env, Sample,
    StopCollector,
};
use crate::sample::Metric;
use crate::validate::ConfigProblem;

macro_rules! registry {
    // The list proper: `name: Type` declares `pub mod name;` (the file `name.rs` here) and
    // registers `name::Type` under the table `[collectors.name]`.
    ($($name:ident: $ty:ident),* $(,)?) => {
        $(pub mod $name;)*
        registry!(@items $($name: $name::$ty),*);
    };
    // What the list generates, from (table name, collector type) pairs; a test registers a
    // throwaway collector through this arm.
    (@items $($name:ident: $ty:ty),* $(,)?) => {

        /// `[collectors]`: the interval, and one table per collector.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct CollectorsConfig {
            /// Seconds between two collections.
            pub interval_secs: f64,
            $(pub $name: <$ty as Collector>::Config,)*
        }

        impl Default for CollectorsConfig {
            fn default() -> Self {
                Self { interval_secs: 10.0, $($name: Default::default(),)* }
            }
        }

        /// Every collector's name, in list order.
        pub const NAMES: &[&str] = &[$(<$ty as Collector>::NAME),*];

        /// Every collector's declared metrics, in list order, by collector name.
        pub const METRICS: &[(&str, &[Metric])] = &[$((<$ty as Collector>::NAME, <$ty as Collector>::METRICS)),*];

        impl CollectorsConfig {
            pub fn interval(&self) -> Duration {
                crate::validate::secs(self.interval_secs)
            }

            /// How long a series without a new value still counts as current: three
            /// intervals, at least 30 s. Older ones are left out of `/metrics` and forgotten
            /// by the supervisor (a container, interface, mount or process that is gone).
            pub fn stale_after(&self) -> Duration {
                (self.interval() * 3).max(Duration::from_secs(30))
            }

            /// Each collector's name and whether its table enables it.
            pub fn enabled(&self) -> Vec<(&'static str, bool)> {
                vec![$((<$ty as Collector>::NAME, self.$name.enabled()),)*]
            }

            /// Problems in the collector tables, with full key paths.
            pub fn validate(&self) -> Vec<ConfigProblem> {
                let mut out = Vec::new();
                $(for (key, message) in self.$name.validate() {
                    out.push(ConfigProblem {
                        path: format!("collectors.{}.{}", stringify!($name), key),
                        message,
                    });
                })*
                out
            }

            /// Starts an actor for every enabled collector not in `disabled`.
            pub fn start(&self, disabled: &[String], ctx: &CollectorContext) -> Vec<Recipient<StopCollector>> {
                let mut running = Vec::new();
                $(
                    let name = <$ty as Collector>::NAME;
                    if self.$name.enabled() && !disabled.iter().any(|d| d == name) {
                        let actor = CollectorActor::<$ty>::new(self.$name.clone(), ctx.clone()).start();
                        running.push(actor.recipient());
                    }
                )*
                running
            }

            /// Every enabled collector twice, `gap` apart (rates need two readings); the
            /// second reading's samples, or its error, per collector.
            pub async fn collect_once(&self, env: &Env, gap: Duration) -> Vec<(&'static str, Result<Vec<Sample>, CollectError>)> {
                self.collect_rounds(env, 2, gap).await
            }

            /// Every enabled collector `rounds` times (at least once), `gap` apart, as one
            /// collector process would over that many intervals; the last round's samples, or
            /// its error, per collector. (`vigil once`, and bench/cycle.rs, which counts the
            /// instructions of a cycle.)
            pub async fn collect_rounds(&self, env: &Env, rounds: usize, gap: Duration) -> Vec<(&'static str, Result<Vec<Sample>, CollectError>)> {
                $(let mut $name = self.$name.enabled().then(|| <$ty as Collector>::new(&self.$name, env));)*
                for _ in 1..rounds {
                    $(if let Some(c) = $name.as_mut() { let _ = collect_guarded(c).await; })*
                    tokio::time::sleep(gap).await;
                }
                let mut out = Vec::new();
                $(if let Some(c) = $name.as_mut() {
                    out.push((<$ty as Collector>::NAME, collect_guarded(c).await));
                })*
                out
            }
        }

        #[cfg(test)]
        #[test]
        fn table_names_are_collector_names() {
            assert_eq!(NAMES, &[$(stringify!($name)),*]);
        }

        #[cfg(test)]
        #[test]
        fn metric_names_are_declared_once() {
            let mut seen = std::collections::BTreeSet::new();
            for (collector, metrics) in METRICS {
                for m in *metrics {
                    assert!(seen.insert(m.name.to_string()), "{collector}: {} declared twice", m.name);
                    let exposed = m.exposition_name();
                    assert!(seen.insert(exposed.clone()), "{collector}: {exposed} ({}) is taken", m.name);
                }
            }
        }
    };
}

registry! {
    cpu: Cpu,
    disk: Disk,
    dns: Dns,
    fs: Fs,
    containers: Containers,
    load: Load,
    mem: Mem,
    net: Net,
    processes: Processes,
    time_drift: TimeDrift,
    pressure: Pressure,
    tcp: Tcp,
    conntrack: Conntrack,
    top_processes: TopProcesses,
}

/// A collector that exists only in this test, registered through the same macro arm as the
/// list: the one registry line is all it takes to get a config table (parsed, unknown keys
/// refused, validated with full key paths), a name, declared metrics and collection.
#[cfg(test)]
#[allow(dead_code)] // start() and interval() are generated for it too; the real list uses them
mod throwaway {
    use super::*;
    use crate::sample::Unit;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct UptimeConfig {
        pub enabled: bool,
        pub scale: f64,
    }

    impl Default for UptimeConfig {
        fn default() -> Self {
            Self { enabled: true, scale: 1.0 }
        }
    }

    impl CollectorConfig for UptimeConfig {
        fn enabled(&self) -> bool {
            self.enabled
        }

        fn validate(&self) -> Vec<(String, String)> {
            if self.scale > 0.0 {
                Vec::new()
            } else {
                vec![("scale".into(), "must be above 0".into())]
            }
        }
    }

    pub struct Uptime {
        scale: f64,
        env: Env,
    }

    impl Collector for Uptime {
        const NAME: &'static str = "uptime";
        const METRICS: &'static [Metric] =
            &[Metric::gauge("host_uptime", Unit::Milliseconds, "Time since the host booted.")];
        type Config = UptimeConfig;

        fn new(c: &UptimeConfig, env: &Env) -> Self {
            Self { scale: c.scale, env: env.clone() }
        }

        async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
            let path = self.env.path("/proc/uptime");
            let text = std::fs::read_to_string(&path)
                .map_err(|source| CollectError::Io { path: path.display().to_string(), source })?;
            let secs: f64 = text.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or_default();
            out.push(Sample::new("host_uptime", secs * 1000.0 * self.scale));
            Ok(())
        }
    }

    registry!(@items load: super::load::Load, uptime: Uptime);

    #[actix_rt::test]
    async fn one_registry_line_is_all_a_collector_needs() {
        assert_eq!(NAMES, ["load", "uptime"]);
        let c: CollectorsConfig =
            serde_json::from_value(serde_json::json!({"uptime": {"scale": 2.0}, "load": {"enabled": false}}))
                .unwrap();
        assert_eq!(c.uptime.scale, 2.0);
        assert_eq!(c.enabled(), [("load", false), ("uptime", true)]);
        let unknown = serde_json::from_value::<CollectorsConfig>(serde_json::json!({"uptime": {"bogus": 1}}));
        assert!(unknown.unwrap_err().to_string().contains("bogus"));
        let bad: CollectorsConfig =
            serde_json::from_value(serde_json::json!({"uptime": {"scale": 0}})).unwrap();
        assert_eq!(bad.validate()[0].path, "collectors.uptime.scale");
        let (_, metrics) = METRICS.iter().find(|(n, _)| *n == "uptime").unwrap();
        assert_eq!(metrics[0].exposition_name(), "vigil_host_uptime_seconds");
        let out = c.collect_once(&Env::default(), Duration::from_millis(1)).await;
        assert_eq!(out.len(), 1, "only the enabled collector ran");
        let (name, samples) = &out[0];
        assert_eq!(*name, "uptime");
        assert!(samples.as_ref().unwrap()[0].value > 0.0);
    }
}
