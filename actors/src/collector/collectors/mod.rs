//! THE list of collectors. Adding one: its file in `collectors/`, one line in `registry!`
//! below, its block in `config/vigil.toml` (see docs/adding-a-collector.md). Everything else
//! (the `[collectors]` config table, validation, starting actors, `vigil once`) is generated
//! from this list.

use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::collector::{
    collect_guarded, CollectError, Collector, CollectorActor, CollectorConfig, CollectorContext, Env, Sample,
    StopCollector,
};
use crate::validate::ConfigProblem;

macro_rules! registry {
    ($($name:ident: $ty:ident),* $(,)?) => {
        $(pub mod $name;)*

        /// `[collectors]`: the interval, and one table per collector.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct CollectorsConfig {
            /// Seconds between two collections.
            pub interval_secs: f64,
            $(pub $name: <$name::$ty as Collector>::Config,)*
        }

        impl Default for CollectorsConfig {
            fn default() -> Self {
                Self { interval_secs: 10.0, $($name: Default::default(),)* }
            }
        }

        /// Every collector's name, in list order.
        pub const NAMES: &[&str] = &[$(<$name::$ty as Collector>::NAME),*];

        impl CollectorsConfig {
            pub fn interval(&self) -> Duration {
                crate::validate::secs(self.interval_secs)
            }

            /// Each collector's name and whether its table enables it.
            pub fn enabled(&self) -> Vec<(&'static str, bool)> {
                vec![$((<$name::$ty as Collector>::NAME, self.$name.enabled()),)*]
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
                    let name = <$name::$ty as Collector>::NAME;
                    if self.$name.enabled() && !disabled.iter().any(|d| d == name) {
                        let actor = CollectorActor::<$name::$ty>::new(self.$name.clone(), ctx.clone()).start();
                        running.push(actor.recipient());
                    }
                )*
                running
            }

            /// Every enabled collector twice, `gap` apart (rates need two readings); the
            /// second reading's samples, or its error, per collector.
            pub async fn collect_once(&self, env: &Env, gap: Duration) -> Vec<(&'static str, Result<Vec<Sample>, CollectError>)> {
                $(let mut $name = self.$name.enabled().then(|| <$name::$ty as Collector>::new(&self.$name, env));)*
                $(if let Some(c) = $name.as_mut() { let _ = collect_guarded(c).await; })*
                tokio::time::sleep(gap).await;
                let mut out = Vec::new();
                $(if let Some(c) = $name.as_mut() {
                    out.push((<$name::$ty as Collector>::NAME, collect_guarded(c).await));
                })*
                out
            }
        }

        #[cfg(test)]
        #[test]
        fn table_names_are_collector_names() {
            assert_eq!(NAMES, &[$(stringify!($name)),*]);
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
}
