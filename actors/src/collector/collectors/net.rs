//! `net`: traffic, errors and drops of every network interface (CONTRACT §4: net_rcvd_byte,
//! net_sent_byte, net_rcvd_packet, net_sent_packet, net_total_error, net_total_drops, tagged
//! `{interface}`).
//!
//! # Source
//!
//! `/proc/net/dev` of the agent's network namespace, parsed by the procfs crate
//! (`InterfaceDeviceStatus`), on the live host and under a fixture root alike. sysinfo's
//! `Networks` has bytes, packets and errors but no drop counters, so procfs supplies every
//! field rather than mixing two sources read at different instants.
//!
//! # What the numbers mean
//!
//! All six are per second over the interval between two collections (measured, not the
//! configured interval): bytes and packets received and sent, `net_total_error` = receive +
//! transmit errors, `net_total_drops` = receive + transmit drops.
//!
//! The first collection only records counters. An interface with any counter that went down
//! (a wrap, or a reset when the interface was re-created under the same name) is skipped for
//! that interval and measured again from its new values. An interface that appears is
//! measured from its second reading on; one that vanishes is forgotten.
//!
//! # Which interfaces
//!
//! Every interface except those matched by `interfaces_exclude` (default `lo`). An entry
//! matches an interface of exactly that name, or, ending in `*`, every interface whose name
//! starts with what precedes the `*` (`veth*`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.net]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Collect per-interface traffic, error and drop rates.
    pub enabled: bool,
    /// Interfaces not reported: exact names, or a prefix followed by `*` (`"veth*"`).
    pub interfaces_exclude: Vec<String>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self { enabled: true, interfaces_exclude: vec!["lo".into()] }
    }
}

impl CollectorConfig for NetConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Vec<(String, String)> {
        self.interfaces_exclude
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let message = match p.as_str() {
                    "" => "an empty name matches no interface",
                    "*" => "\"*\" would exclude every interface (set enabled = false instead)",
                    _ => return None,
                };
                Some((format!("interfaces_exclude[{i}]"), message.to_string()))
            })
            .collect()
    }
}

/// The cumulative counters of one interface that the metrics are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_drops: u64,
    pub tx_drops: u64,
}

impl From<&procfs::net::DeviceStatus> for NetCounters {
    fn from(d: &procfs::net::DeviceStatus) -> Self {
        Self {
            rx_bytes: d.recv_bytes,
            tx_bytes: d.sent_bytes,
            rx_packets: d.recv_packets,
            tx_packets: d.sent_packets,
            rx_errors: d.recv_errs,
            tx_errors: d.sent_errs,
            rx_drops: d.recv_drop,
            tx_drops: d.sent_drop,
        }
    }
}

impl NetCounters {
    /// `self - before` field by field; `None` if any counter went down.
    fn since(&self, before: &NetCounters) -> Option<NetCounters> {
        Some(NetCounters {
            rx_bytes: self.rx_bytes.checked_sub(before.rx_bytes)?,
            tx_bytes: self.tx_bytes.checked_sub(before.tx_bytes)?,
            rx_packets: self.rx_packets.checked_sub(before.rx_packets)?,
            tx_packets: self.tx_packets.checked_sub(before.tx_packets)?,
            rx_errors: self.rx_errors.checked_sub(before.rx_errors)?,
            tx_errors: self.tx_errors.checked_sub(before.tx_errors)?,
            rx_drops: self.rx_drops.checked_sub(before.rx_drops)?,
            tx_drops: self.tx_drops.checked_sub(before.tx_drops)?,
        })
    }
}

/// Whether `interfaces_exclude` leaves `name` reported.
pub fn is_reported(name: &str, exclude: &[String]) -> bool {
    !exclude.iter().any(|e| match e.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == e,
    })
}

/// The per-second rates of every interface present in both readings, `elapsed` apart.
/// Interfaces with a counter that went down are skipped; nothing is emitted for a zero
/// interval.
pub fn rates(
    prev: &BTreeMap<String, NetCounters>,
    cur: &BTreeMap<String, NetCounters>,
    elapsed: Duration,
    out: &mut Vec<Sample>,
) {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return;
    }
    for (interface, now) in cur {
        let Some(before) = prev.get(interface) else { continue };
        let Some(d) = now.since(before) else {
            tracing::debug!(interface = %interface, "Interface counters went down (wrap or reset); skipping this interval.");
            continue;
        };
        let per_sec = |n: u64| n as f64 / secs;
        for (name, value) in [
            ("net_rcvd_byte", per_sec(d.rx_bytes)),
            ("net_sent_byte", per_sec(d.tx_bytes)),
            ("net_rcvd_packet", per_sec(d.rx_packets)),
            ("net_sent_packet", per_sec(d.tx_packets)),
            ("net_total_error", (d.rx_errors as f64 + d.tx_errors as f64) / secs),
            ("net_total_drops", (d.rx_drops as f64 + d.tx_drops as f64) / secs),
        ] {
            out.push(Sample::new(name, value).tag("interface", interface));
        }
    }
}

/// One reading of every reported interface, and when it was taken.
struct Reading {
    at: Instant,
    interfaces: BTreeMap<String, NetCounters>,
}

pub struct Net {
    env: Env,
    exclude: Vec<String>,
    prev: Option<Reading>,
}

impl Net {
    /// The counters of every reported interface; `None` when the host has no
    /// `/proc/net/dev` (a kernel without networking).
    fn read(&self) -> Result<Option<BTreeMap<String, NetCounters>>, CollectError> {
        use procfs::FromRead;
        let status = match procfs::net::InterfaceDeviceStatus::from_file(self.env.path("/proc/net/dev")) {
            Ok(s) => s,
            Err(procfs::ProcError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(
            status
                .0
                .iter()
                .filter(|(name, _)| is_reported(name, &self.exclude))
                .map(|(name, d)| (name.clone(), NetCounters::from(d)))
                .collect(),
        ))
    }

    /// Emits the rates since the previous reading (if any) and keeps this one as the next
    /// baseline; interfaces absent from it are thereby forgotten.
    fn advance(&mut self, interfaces: BTreeMap<String, NetCounters>, at: Instant, out: &mut Vec<Sample>) {
        if let Some(prev) = &self.prev {
            rates(&prev.interfaces, &interfaces, at.saturating_duration_since(prev.at), out);
        }
        self.prev = Some(Reading { at, interfaces });
    }
}

impl Collector for Net {
    const NAME: &'static str = "net";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("net_rcvd_byte", Unit::PerSecond, "Bytes received per second over the last interval.").exposed_as("vigil_net_rcvd_bytes_per_second"),
        Metric::gauge("net_sent_byte", Unit::PerSecond, "Bytes sent per second over the last interval.").exposed_as("vigil_net_sent_bytes_per_second"),
        Metric::gauge("net_rcvd_packet", Unit::PerSecond, "Packets received per second over the last interval.").exposed_as("vigil_net_rcvd_packets_per_second"),
        Metric::gauge("net_sent_packet", Unit::PerSecond, "Packets sent per second over the last interval.").exposed_as("vigil_net_sent_packets_per_second"),
        Metric::gauge("net_total_error", Unit::PerSecond, "Receive and transmit errors per second over the last interval.").exposed_as("vigil_net_errors_per_second"),
        Metric::gauge("net_total_drops", Unit::PerSecond, "Received and transmitted packets dropped per second over the last interval.").exposed_as("vigil_net_drops_per_second"),
    ];
    type Config = NetConfig;

    fn new(config: &NetConfig, env: &Env) -> Self {
        Self { env: env.clone(), exclude: config.interfaces_exclude.clone(), prev: None }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let at = Instant::now();
        match self.read()? {
            Some(interfaces) => self.advance(interfaces, at, out),
            None => tracing::debug!("No /proc/net/dev on this host; no net samples."),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;

    const METRICS: [&str; 6] = [
        "net_rcvd_byte",
        "net_sent_byte",
        "net_rcvd_packet",
        "net_sent_packet",
        "net_total_error",
        "net_total_drops",
    ];

    fn fixture(n: u32) -> Env {
        Env {
            root: format!("{}/../tests/fixtures/net-{n}", env!("CARGO_MANIFEST_DIR")).into(),
            ..Env::default()
        }
    }

    fn value(s: &[Sample], name: &str, interface: &str) -> f64 {
        s.iter()
            .find(|x| x.name == name && x.tags.get("interface").map(String::as_str) == Some(interface))
            .unwrap_or_else(|| panic!("{name}{{interface={interface}}} missing: {s:?}"))
            .value
    }

    fn interfaces(s: &[Sample]) -> Vec<String> {
        let mut d: Vec<String> = s.iter().map(|x| x.tags["interface"].clone()).collect();
        d.dedup();
        d
    }

    fn read_with(env: &Env, config: &NetConfig) -> BTreeMap<String, NetCounters> {
        Net::new(config, env).read().unwrap().unwrap()
    }

    fn read(env: &Env) -> BTreeMap<String, NetCounters> {
        read_with(env, &NetConfig::default())
    }

    #[test]
    fn fixture_parses_and_excludes_lo() {
        let r1 = read(&fixture(1));
        let names: Vec<&String> = r1.keys().collect();
        assert_eq!(names, ["docker0", "eth0", "tun0", "veth1a2b", "wlan0"]);
        assert_eq!(
            r1["eth0"],
            NetCounters {
                rx_bytes: 1_000_000,
                tx_bytes: 400_000,
                rx_packets: 5000,
                tx_packets: 3000,
                rx_errors: 3,
                tx_errors: 1,
                rx_drops: 10,
                tx_drops: 0,
            }
        );
        let names2: Vec<String> = read(&fixture(2)).into_keys().collect();
        assert_eq!(names2, ["docker0", "eth0", "tun0", "veth9f8e", "wlan0"]);
    }

    #[test]
    fn fixture_rates_over_ten_seconds() {
        let mut out = Vec::new();
        rates(&read(&fixture(1)), &read(&fixture(2)), Duration::from_secs(10), &mut out);
        // eth0: +250000 B, +400 pkts in; +50000 B, +300 pkts out; errors +2 in +3 out;
        // drops +4 in +6 out.
        assert_eq!(value(&out, "net_rcvd_byte", "eth0"), 25_000.0);
        assert_eq!(value(&out, "net_sent_byte", "eth0"), 5_000.0);
        assert_eq!(value(&out, "net_rcvd_packet", "eth0"), 40.0);
        assert_eq!(value(&out, "net_sent_packet", "eth0"), 30.0);
        assert_eq!(value(&out, "net_total_error", "eth0"), 0.5);
        assert_eq!(value(&out, "net_total_drops", "eth0"), 1.0);
        // tun0: only transmit moved (+1234 B, +7 pkts, +1 drop).
        assert_eq!(value(&out, "net_rcvd_byte", "tun0"), 0.0);
        assert_eq!(value(&out, "net_sent_byte", "tun0"), 123.4);
        assert_eq!(value(&out, "net_sent_packet", "tun0"), 0.7);
        assert_eq!(value(&out, "net_total_drops", "tun0"), 0.1);
        // docker0 idle: zeros, not absent.
        for m in METRICS {
            assert_eq!(value(&out, m, "docker0"), 0.0, "{m}");
        }
        // wlan0's 32-bit rx_bytes wrapped, veth1a2b vanished, veth9f8e appeared, lo excluded.
        assert_eq!(interfaces(&out), ["docker0", "eth0", "tun0"]);
        assert_eq!(out.len(), 3 * METRICS.len());
    }

    #[test]
    fn exclude_names_and_prefixes() {
        let config =
            NetConfig { interfaces_exclude: vec!["lo".into(), "veth*".into()], ..NetConfig::default() };
        let names: Vec<String> = read_with(&fixture(1), &config).into_keys().collect();
        assert_eq!(names, ["docker0", "eth0", "tun0", "wlan0"]);
        let nothing = NetConfig { interfaces_exclude: vec![], ..NetConfig::default() };
        assert!(read_with(&fixture(1), &nothing).contains_key("lo"));
        let ex = vec!["eth".to_string()];
        assert!(is_reported("eth0", &ex), "without * a name is matched exactly");
        assert!(!is_reported("eth", &ex));
    }

    #[test]
    fn rate_scales_with_elapsed_time() {
        let prev = BTreeMap::from([("eth0".to_string(), NetCounters::default())]);
        let now =
            NetCounters { rx_bytes: 3000, tx_errors: 1, rx_drops: 2, tx_drops: 1, ..NetCounters::default() };
        let cur = BTreeMap::from([("eth0".to_string(), now)]);
        let mut out = Vec::new();
        rates(&prev, &cur, Duration::from_millis(1500), &mut out);
        assert_eq!(value(&out, "net_rcvd_byte", "eth0"), 2000.0);
        assert_eq!(value(&out, "net_total_drops", "eth0"), 2.0);
        assert_eq!(value(&out, "net_total_error", "eth0"), 1.0 / 1.5);
        out.clear();
        rates(&prev, &cur, Duration::ZERO, &mut out);
        assert!(out.is_empty(), "a zero interval yields no rate: {out:?}");
    }

    #[test]
    fn any_counter_going_down_skips_the_interface() {
        let base = NetCounters {
            rx_bytes: 10,
            tx_bytes: 10,
            rx_packets: 10,
            tx_packets: 10,
            rx_errors: 10,
            tx_errors: 10,
            rx_drops: 10,
            tx_drops: 10,
        };
        let up = NetCounters {
            rx_bytes: 20,
            tx_bytes: 20,
            rx_packets: 20,
            tx_packets: 20,
            rx_errors: 20,
            tx_errors: 20,
            rx_drops: 20,
            tx_drops: 20,
        };
        let prev = BTreeMap::from([("eth0".to_string(), base)]);
        let downs: [fn(&mut NetCounters); 8] = [
            |c| c.rx_bytes = 9,
            |c| c.tx_bytes = 9,
            |c| c.rx_packets = 9,
            |c| c.tx_packets = 9,
            // Even when the other direction's rise would hide it in the sum.
            |c| c.rx_errors = 9,
            |c| c.tx_errors = 9,
            |c| c.rx_drops = 9,
            |c| c.tx_drops = 9,
        ];
        for (i, down) in downs.iter().enumerate() {
            let mut now = up;
            down(&mut now);
            let mut out = Vec::new();
            rates(&prev, &BTreeMap::from([("eth0".to_string(), now)]), Duration::from_secs(1), &mut out);
            assert!(out.is_empty(), "field {i}: {out:?}");
        }
        let mut out = Vec::new();
        rates(&prev, &BTreeMap::from([("eth0".to_string(), up)]), Duration::from_secs(1), &mut out);
        assert_eq!(value(&out, "net_total_error", "eth0"), 20.0);
    }

    #[test]
    fn collector_state_across_readings() {
        let mut c = Net::new(&NetConfig::default(), &fixture(1));
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.advance(read(&fixture(1)), t0, &mut out);
        assert!(out.is_empty(), "first reading only records counters: {out:?}");
        c.advance(read(&fixture(2)), t0 + Duration::from_secs(10), &mut out);
        assert_eq!(value(&out, "net_rcvd_byte", "eth0"), 25_000.0);
        assert!(!c.prev.as_ref().unwrap().interfaces.contains_key("veth1a2b"), "vanished one is forgotten");
        // The second reading again, 2 s later: wlan0 (wrapped) and veth9f8e (new) now have a
        // baseline and report zeros.
        out.clear();
        c.advance(read(&fixture(2)), t0 + Duration::from_secs(12), &mut out);
        assert_eq!(interfaces(&out), ["docker0", "eth0", "tun0", "veth9f8e", "wlan0"]);
        assert!(out.iter().all(|s| s.value == 0.0), "{out:?}");
    }

    #[actix_rt::test]
    async fn first_collection_emits_nothing_and_missing_file_is_not_an_error() {
        let mut c = Net::new(&NetConfig::default(), &fixture(1));
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
        let env = Env { root: "/nonexistent/vigil-fixture".into(), ..Env::default() };
        let mut c = Net::new(&NetConfig::default(), &env);
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
    }

    #[test]
    fn suspicious_excludes_are_config_problems() {
        assert!(NetConfig::default().validate().is_empty());
        let c = NetConfig {
            interfaces_exclude: vec!["lo".into(), "".into(), "*".into()],
            ..NetConfig::default()
        };
        let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["interfaces_exclude[1]", "interfaces_exclude[2]"]);
    }

    #[actix_rt::test]
    async fn live_host() {
        let mut c = Net::new(&NetConfig::default(), &Env::default());
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = collect_guarded(&mut c).await.unwrap();
        // Every interface but lo, each with all six metrics (unless it was reset in between).
        let listed: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n != "lo").collect())
            .unwrap_or_default();
        let got = interfaces(&s);
        assert!(!got.iter().any(|i| i == "lo"), "{got:?}");
        for i in &listed {
            assert!(got.contains(i), "{i} (in /sys/class/net) not reported: {got:?}");
        }
        assert_eq!(s.len(), got.len() * METRICS.len());
        for x in &s {
            assert!(x.value.is_finite() && x.value >= 0.0, "{x:?}");
            assert!(x.value < 1e11, "implausible rate: {x:?}");
        }
    }
}
