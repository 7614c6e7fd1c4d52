//! `tcp`: TCP connections by state, retransmits and listen-queue overflows (CONTRACT §4:
//! tcp_connections {state}, tcp_retransmits_sec, tcp_listen_overflows_sec).
//!
//! # Source
//!
//! Of the agent's network namespace (the host's, for an agent run as CONTRACT §1 says):
//!
//! - The sockets per state from the kernel's `sock_diag` netlink dump ([`sock_diag`]), IPv4
//!   and IPv6 counted together. Where that cannot be used (a kernel without `tcp_diag`, or a
//!   fixture root in tests) `/proc/net/tcp` and `/proc/net/tcp6` are read instead, parsed by
//!   the procfs crate (`TcpNetEntries`), one text line per socket. Both files are optional (a
//!   kernel without IPv6 has no `tcp6`); a host with neither is an error. The first netlink
//!   failure is logged once at warn and the text files are used from then on.
//! - `/proc/net/snmp` (procfs `Snmp`): `Tcp: RetransSegs`, segments retransmitted.
//! - `/proc/net/netstat`: `TcpExt: ListenOverflows`, connections dropped because a listen
//!   queue was full. procfs does not parse this file; it has the same layout as `snmp` (per
//!   section, a line of names and a line of values), read by [`section_counter`].
//!
//! # What the numbers mean
//!
//! `tcp_connections` is one sample per state in [`STATES`] every collection, zeros included.
//! The kernel's `NEW_SYN_RECV` (a request socket, which `/proc/net/tcp` shows as SYN_RECV) is
//! counted as `syn_recv`. The two rates are per second over the measured interval; the first
//! collection, and a counter that went down, give none.
//!
//! # Cost
//!
//! Both sources make the kernel walk its whole TCP hash table, about 2.5 ms here whatever the
//! number of sockets (its size follows the host's memory); the netlink dump walks it once and
//! costs little per socket beyond that, the text tables about 10 µs per socket, so a host with 100,000 connections makes the fallback
//! read about 15 MB per collection. Disable the collector there if the fallback is in use
//! (`[collectors.tcp] enabled = false`) or raise `collectors.interval_secs`.

use std::time::Instant;

use procfs::net::TcpState;
use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

pub mod sock_diag;

/// `[collectors.tcp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Collect TCP connection states, retransmits and listen overflows.
    pub enabled: bool,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl CollectorConfig for TcpConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

/// The `state` tag values, in the order the samples are emitted.
pub const STATES: [&str; 11] = [
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
];

/// Index into [`STATES`].
pub fn state_index(s: &TcpState) -> usize {
    match s {
        TcpState::Established => 0,
        TcpState::SynSent => 1,
        TcpState::SynRecv | TcpState::NewSynRecv => 2,
        TcpState::FinWait1 => 3,
        TcpState::FinWait2 => 4,
        TcpState::TimeWait => 5,
        TcpState::Close => 6,
        TcpState::CloseWait => 7,
        TcpState::LastAck => 8,
        TcpState::Listen => 9,
        TcpState::Closing => 10,
    }
}

/// The counter `field` of `section` in a file laid out like `/proc/net/netstat`: for each
/// section a line `Section: Name1 Name2 …` followed by `Section: 1 2 …`.
pub fn section_counter(text: &str, section: &str, field: &str) -> Option<u64> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let at = names.split_whitespace().position(|n| n == field);
        if let Some(at) = at {
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

/// The two counters the rates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub retransmits: u64,
    pub listen_overflows: u64,
}

/// Per-second rates between two readings `secs` apart; a counter that went down gives none.
pub fn rates(prev: Counters, cur: Counters, secs: f64, out: &mut Vec<Sample>) {
    if secs <= 0.0 {
        return;
    }
    if let Some(d) = cur.retransmits.checked_sub(prev.retransmits) {
        out.push(Sample::new("tcp_retransmits_sec", d as f64 / secs));
    }
    if let Some(d) = cur.listen_overflows.checked_sub(prev.listen_overflows) {
        out.push(Sample::new("tcp_listen_overflows_sec", d as f64 / secs));
    }
}

pub struct Tcp {
    env: Env,
    last: Option<(Counters, Instant)>,
    /// How the sockets are counted: through netlink while that works on the live host.
    source: Source,
}

enum Source {
    /// Not opened yet (the first collection opens it).
    Untried,
    Netlink(sock_diag::SockDiag),
    /// `/proc/net/tcp{,6}`: a fixture root, or netlink failed once.
    Text,
}

impl Tcp {
    /// Sockets per state over IPv4 and IPv6.
    pub fn connections(&mut self) -> Result<[u64; STATES.len()], CollectError> {
        if matches!(self.source, Source::Untried) {
            self.source = if self.env.root == std::path::Path::new("/") {
                match sock_diag::SockDiag::open() {
                    Ok(d) => Source::Netlink(d),
                    Err(e) => {
                        tracing::warn!("tcp: no sock_diag netlink socket ({e}); reading /proc/net/tcp instead.");
                        Source::Text
                    }
                }
            } else {
                Source::Text
            };
        }
        if let Source::Netlink(d) = &mut self.source {
            match d.count_all() {
                Ok(by_state) => return Ok(by_state),
                Err(e) => {
                    tracing::warn!("tcp: sock_diag dump failed ({e}); reading /proc/net/tcp from now on.");
                    self.source = Source::Text;
                }
            }
        }
        self.text_connections()
    }

    /// Sockets per state from the text tables `tcp` and `tcp6`.
    pub fn text_connections(&self) -> Result<[u64; STATES.len()], CollectError> {
        use procfs::FromReadSI;
        let mut by_state = [0u64; STATES.len()];
        let mut found = 0;
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let path = self.env.path(file);
            match procfs::net::TcpNetEntries::from_file(&path, procfs::current_system_info()) {
                Ok(entries) => {
                    found += 1;
                    for e in entries.0 {
                        by_state[state_index(&e.state)] += 1;
                    }
                }
                Err(procfs::ProcError::NotFound(_)) => {}
                Err(e) => return Err(CollectError::Proc(format!("{}: {e}", path.display()))),
            }
        }
        if found == 0 {
            return Err(CollectError::Proc(format!(
                "neither {} nor tcp6 exists",
                self.env.path("/proc/net/tcp").display()
            )));
        }
        Ok(by_state)
    }

    /// Whether the last collection counted through netlink (for tests and the bench).
    pub fn uses_netlink(&self) -> bool {
        matches!(self.source, Source::Netlink(_))
    }

    pub fn counters(&self) -> Result<Counters, CollectError> {
        use procfs::FromRead;
        let snmp = procfs::net::Snmp::from_file(self.env.path("/proc/net/snmp"))?;
        let path = self.env.path("/proc/net/netstat");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| CollectError::Io { path: path.display().to_string(), source })?;
        let listen_overflows = section_counter(&text, "TcpExt", "ListenOverflows")
            .ok_or_else(|| CollectError::Proc(format!("{}: no TcpExt ListenOverflows", path.display())))?;
        Ok(Counters { retransmits: snmp.tcp_retrans_segs, listen_overflows })
    }
}

impl Collector for Tcp {
    const NAME: &'static str = "tcp";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("tcp_connections", Unit::None, "TCP sockets in the state, IPv4 and IPv6."),
        Metric::gauge("tcp_retransmits_sec", Unit::PerSecond, "TCP segments retransmitted per second."),
        Metric::gauge(
            "tcp_listen_overflows_sec",
            Unit::PerSecond,
            "Connections dropped per second because a listen queue was full.",
        ),
    ];
    type Config = TcpConfig;

    fn new(_: &TcpConfig, env: &Env) -> Self {
        Self { env: env.clone(), last: None, source: Source::Untried }
    }

    /// The connection counts go out before the counters are read, so a missing netstat
    /// still lets them through (the collection is reported as failed).
    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let at = Instant::now();
        for (state, n) in STATES.iter().zip(self.connections()?) {
            out.push(Sample::new("tcp_connections", n as f64).tag("state", *state));
        }
        let cur = self.counters()?;
        if let Some((prev, then)) = self.last.replace((cur, at)) {
            rates(prev, cur, at.duration_since(then).as_secs_f64(), out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use crate::collector::testutil::{fixture, value};

    fn state(s: &[Sample], state: &str) -> f64 {
        s.iter()
            .find(|x| x.name == "tcp_connections" && x.tags.get("state").map(String::as_str) == Some(state))
            .unwrap_or_else(|| panic!("tcp_connections{{state={state}}} missing: {s:?}"))
            .value
    }

    #[actix_rt::test]
    async fn fixture_counts_and_rates() {
        // tcp-1/tcp-2: IPv4 2 listen, 3 established, 1 time_wait, 1 close_wait; IPv6 1
        // listen, 2 established, 1 syn_sent. RetransSegs 1000 → 1500, ListenOverflows 10 → 40.
        let mut c = Tcp::new(&TcpConfig::default(), &fixture("tcp-1"));
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(state(&s, "established"), 5.0);
        assert_eq!(state(&s, "listen"), 3.0);
        assert_eq!(state(&s, "time_wait"), 1.0);
        assert_eq!(state(&s, "close_wait"), 1.0);
        assert_eq!(state(&s, "syn_sent"), 1.0);
        assert_eq!(state(&s, "closing"), 0.0, "zeros are sent too");
        assert_eq!(s.len(), STATES.len(), "first collection: no rates");
        let first = c.counters().unwrap();
        assert_eq!(first, Counters { retransmits: 1000, listen_overflows: 10 });
        let second = Tcp::new(&TcpConfig::default(), &fixture("tcp-2")).counters().unwrap();
        let mut out = Vec::new();
        rates(first, second, 10.0, &mut out);
        assert_eq!(value(&out, "tcp_retransmits_sec"), 50.0);
        assert_eq!(value(&out, "tcp_listen_overflows_sec"), 3.0);
        let mut back = Vec::new();
        rates(second, first, 10.0, &mut back);
        assert!(back.is_empty(), "counters that went down give no rate: {back:?}");
    }

    #[test]
    fn netstat_sections() {
        let text = "TcpExt: A B ListenOverflows\nTcpExt: 1 2 3\nIpExt: ListenOverflows\nIpExt: 9\n";
        assert_eq!(section_counter(text, "TcpExt", "ListenOverflows"), Some(3));
        assert_eq!(section_counter(text, "IpExt", "ListenOverflows"), Some(9));
        assert_eq!(section_counter(text, "TcpExt", "Nope"), None);
        assert_eq!(section_counter("TcpExt: A\n", "TcpExt", "A"), None, "no value line");
    }

    #[actix_rt::test]
    async fn missing_tables_are_an_error() {
        let mut c = Tcp::new(&TcpConfig::default(), &fixture("proc-basic"));
        assert!(collect_guarded(&mut c).await.is_err());
    }

    /// The live tests count the same host's sockets: one at a time.
    pub(super) static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Real sockets made here: a listener with 4 accepted connections (8 established
    /// sockets, both ends on loopback) on IPv4 and one on IPv6.
    #[actix_rt::test]
    #[allow(clippy::await_holding_lock)] // a test lock, on the test's one thread
    async fn live_host_counts_real_connections() {
        let _one = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = Tcp::new(&TcpConfig::default(), &Env::default());
        let before = collect_guarded(&mut c).await.unwrap();
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let mut keep = Vec::new();
        for l in [&l4, &l6] {
            for _ in 0..4 {
                keep.push(std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap());
                keep.push(l.accept().unwrap().0);
            }
        }
        let after = collect_guarded(&mut c).await.unwrap();
        // Other processes' sockets come and go; ours are 16 established and 2 listening.
        assert!(
            state(&after, "established") >= state(&before, "established") + 16.0 - 4.0,
            "{before:?} → {after:?}"
        );
        assert!(state(&after, "listen") >= state(&before, "listen") + 2.0 - 1.0);
        assert!(value(&after, "tcp_retransmits_sec") >= 0.0);
        assert!(value(&after, "tcp_listen_overflows_sec") >= 0.0);
        assert!(c.uses_netlink(), "the live host is counted through sock_diag");
        drop(keep);
    }

    /// The netlink dump sees what the text tables see, time-wait and IPv6 sockets included.
    #[test]
    fn netlink_and_text_tables_agree() {
        use std::io::Read;
        let _one = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = Tcp::new(&TcpConfig::default(), &Env::default());
        let tw_before = c.connections().unwrap()[5];
        let l6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let mut keep = Vec::new();
        for _ in 0..3 {
            // The side that closes first ends in TIME_WAIT (for 60 s).
            let client = std::net::TcpStream::connect(l6.local_addr().unwrap()).unwrap();
            let mut server = l6.accept().unwrap().0;
            drop(client);
            let _ = server.read(&mut [0u8; 1]);
            drop(server);
            keep.push(std::net::TcpStream::connect(l6.local_addr().unwrap()).unwrap());
            keep.push(l6.accept().unwrap().0);
        }
        let netlink = c.connections().unwrap();
        let text = c.text_connections().unwrap();
        assert!(c.uses_netlink());
        assert!(netlink[5] >= tw_before + 3, "3 more time_wait: {tw_before} → {netlink:?}");
        assert!(netlink[0] >= 6 && netlink[9] >= 1, "{netlink:?}");
        for (i, state) in STATES.iter().enumerate() {
            // Other processes' sockets may come and go between the two readings.
            assert!(netlink[i].abs_diff(text[i]) <= 4, "{state}: netlink {netlink:?} vs text {text:?}");
        }
    }
}
