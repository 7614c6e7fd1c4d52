//! `time_drift`: how far the local clock is from each configured SNTP server (CONTRACT §4:
//! `time_drift` in ms, LOCAL minus SERVER, and `time_drift_success` 0/1, tags {server}).
//!
//! One SNTP exchange (RFC 4330) per server per collection, all servers at once: a version 4
//! client request carrying our clock (T1) as its transmit timestamp; the server answers with
//! when it received it (T2) and when it sent the reply (T3); we note when the reply arrived
//! (T4). The server's clock minus ours is `((T2 - T1) + (T3 - T4)) / 2` (network delay
//! cancels out when it is symmetric), so the drift we report is its negation: positive means
//! the local clock is ahead.
//!
//! A reply counts only if it answers our request (mode 4, originate = our T1) from a
//! synchronised server (leap indicator not 3, stratum 1..15, non-zero transmit time);
//! anything else, or no reply within `timeout_ms`, gives `time_drift_success 0` and no
//! `time_drift` sample.
//!
//! Host names are resolved with hickory, not libc: /etc/hosts first, then the nameservers
//! and search list of /etc/resolv.conf (both under the env root, read at every collection).
//! IP literals are used as they are.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::Name;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.time_drift]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeDriftConfig {
    /// Measure the local clock's drift against SNTP servers.
    pub enabled: bool,
    /// SNTP servers, each `host:port` (`[IPv6]:port` for an IPv6 literal).
    pub servers: Vec<String>,
    /// How long name resolution, and then the SNTP exchange, may each take, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for TimeDriftConfig {
    fn default() -> Self {
        Self { enabled: true, servers: vec!["pool.ntp.org:123".into()], timeout_ms: 2000 }
    }
}

impl CollectorConfig for TimeDriftConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in &self.servers {
            if let Err(e) = parse_server(s) {
                out.push(("servers".into(), format!("{s:?}: {e}")));
            }
        }
        if self.timeout_ms == 0 {
            out.push(("timeout_ms".into(), "must be greater than 0".into()));
        }
        out
    }
}

/// Where a configured server is.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

/// `IP:port`, `[IPv6]:port` or `host:port`.
pub fn parse_server(s: &str) -> Result<Target, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Target::Addr(addr));
    }
    let (host, port) = s.rsplit_once(':').ok_or("expected host:port (e.g. \"pool.ntp.org:123\")")?;
    let port: u16 = port.parse().map_err(|_| format!("{port:?} is not a port number"))?;
    if port == 0 {
        return Err("port 0 is not a server port".into());
    }
    if host.is_empty() || host.contains(':') || host.contains('[') {
        return Err("expected host:port, with an IPv6 address in brackets ([2001:db8::1]:123)".into());
    }
    Name::from_utf8(host).map_err(|e| format!("{host:?} is not a valid host name: {e}"))?;
    Ok(Target::Host { host: host.to_string(), port })
}

pub struct TimeDrift {
    env: Env,
    /// (the configured string, which is also the `server` tag; where it points)
    servers: Vec<(String, Target)>,
    timeout: Duration,
}

impl Collector for TimeDrift {
    const NAME: &'static str = "time_drift";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("time_drift", Unit::Milliseconds, "Local clock minus the SNTP server's clock."),
        Metric::gauge("time_drift_success", Unit::None, "Whether the last query of the SNTP server succeeded (1) or not (0)."),
    ];
    type Config = TimeDriftConfig;

    fn new(config: &TimeDriftConfig, env: &Env) -> Self {
        // validate() has refused anything that does not parse.
        let servers =
            config.servers.iter().filter_map(|s| Some((s.clone(), parse_server(s).ok()?))).collect();
        Self { env: env.clone(), servers, timeout: Duration::from_millis(config.timeout_ms) }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let needs_names = self.servers.iter().any(|(_, t)| matches!(t, Target::Host { .. }));
        let resolver = needs_names.then(|| crate::resolver::system_resolver(&self.env.root, self.timeout));
        let probes = self.servers.iter().map(|(_, target)| async {
            let addr = match target {
                Target::Addr(a) => *a,
                Target::Host { host, port } => {
                    crate::resolver::resolve(resolver.as_ref().unwrap(), host, *port, self.timeout).await?
                }
            };
            sntp_drift_ms(addr, self.timeout).await
        });
        let results = futures_util::future::join_all(probes).await;
        for ((server, _), result) in self.servers.iter().zip(results) {
            match result {
                Ok(drift_ms) => {
                    out.push(Sample::new("time_drift", drift_ms).tag("server", server));
                    out.push(Sample::new("time_drift_success", 1.0).tag("server", server));
                }
                Err(why) => {
                    tracing::debug!(server = %server, error = %why, "SNTP query failed.");
                    out.push(Sample::new("time_drift_success", 0.0).tag("server", server));
                }
            }
        }
        Ok(())
    }
}

/// One SNTP exchange with `server`: local clock minus server clock, in milliseconds.
pub async fn sntp_drift_ms(server: SocketAddr, timeout: Duration) -> Result<f64, String> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let exchange = async {
        let socket = UdpSocket::bind(local).await?;
        // Connected: the kernel drops datagrams from anyone but the server.
        socket.connect(server).await?;
        let t1 = NtpTimestamp::now();
        socket.send(&request(t1)).await?;
        // Room for a reply with extension fields or a MAC, which we ignore.
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).await?;
        let t4 = NtpTimestamp::now();
        Ok::<_, std::io::Error>((t1, buf[..n].to_vec(), t4))
    };
    let (t1, reply, t4) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(format!("no reply from {server} within {} ms", timeout.as_millis())),
        Ok(Err(e)) => return Err(format!("{server}: {e}")),
        Ok(Ok(x)) => x,
    };
    let (t2, t3) = parse_reply(&reply, t1).map_err(|e| format!("{server}: {e}"))?;
    let offset = clock_offset_secs(t1, t2, t3, t4);
    tracing::debug!(
        server = %server,
        offset_ms = offset * 1000.0,
        delay_ms = round_trip_delay_secs(t1, t2, t3, t4) * 1000.0,
        server_unix_ms = (t3.to_unix_nanos() / 1_000_000) as i64,
        "SNTP reply."
    );
    Ok(-offset * 1000.0)
}

/// Seconds from 1900-01-01 (NTP's epoch) to 1970-01-01 (Unix's).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// An NTP timestamp as on the wire: 32 bits of seconds since 1900-01-01 (counted modulo
/// 2^32, so era 1 began 2036-02-07T06:28:16Z) and 32 bits of fraction (units of 2^-32 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    pub fn now() -> Self {
        Self::from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    /// From time since the Unix epoch; the seconds wrap into the current era.
    pub fn from_unix(since_epoch: Duration) -> Self {
        let secs = (since_epoch.as_secs() + NTP_UNIX_OFFSET_SECS) as u32;
        // Rounded down: less than one 2^-32 unit (0.23 ns) lost, so to_unix_nanos's rounding
        // gets the exact nanosecond back.
        let frac = (u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000;
        Self((u64::from(secs) << 32) | frac)
    }

    pub fn secs(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn frac(self) -> u32 {
        self.0 as u32
    }

    /// Nanoseconds since the Unix epoch (negative before 1970). The era is RFC 4330 §3's rule:
    /// seconds with the top bit set are 1968-2036 (era 0), without it 2036-2104 (era 1).
    pub fn to_unix_nanos(self) -> i128 {
        let era_start: i128 = if self.secs() & 0x8000_0000 != 0 { 0 } else { 1 << 32 };
        let secs = era_start + i128::from(self.secs()) - i128::from(NTP_UNIX_OFFSET_SECS);
        let nanos = (u64::from(self.frac()) * 1_000_000_000 + (1 << 31)) >> 32;
        secs * 1_000_000_000 + i128::from(nanos)
    }

    /// `self - earlier` in seconds. Correct across an era boundary, for any two timestamps
    /// less than 68 years apart (the wrapping difference of 64-bit fixed-point values).
    pub fn secs_since(self, earlier: Self) -> f64 {
        self.0.wrapping_sub(earlier.0) as i64 as f64 / 4_294_967_296.0
    }
}

/// The server's clock minus ours, in seconds (RFC 4330 §5): T1 our transmit, T2 server
/// receive, T3 server transmit, T4 our receive.
pub fn clock_offset_secs(t1: NtpTimestamp, t2: NtpTimestamp, t3: NtpTimestamp, t4: NtpTimestamp) -> f64 {
    (t2.secs_since(t1) + t3.secs_since(t4)) / 2.0
}

/// Network round trip, without the server's processing time, in seconds.
pub fn round_trip_delay_secs(t1: NtpTimestamp, t2: NtpTimestamp, t3: NtpTimestamp, t4: NtpTimestamp) -> f64 {
    t4.secs_since(t1) - t3.secs_since(t2)
}

/// The size of an NTP header without extensions.
pub const PACKET_LEN: usize = 48;
/// Byte 0 of a request: leap indicator 0, version 4, mode 3 (client).
const CLIENT_V4: u8 = (4 << 3) | 3;
const MODE_SERVER: u8 = 4;

/// A client request whose transmit timestamp is `t1` (the server echoes it as originate).
pub fn request(t1: NtpTimestamp) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = CLIENT_V4;
    p[40..48].copy_from_slice(&t1.0.to_be_bytes());
    p
}

fn timestamp_at(p: &[u8], at: usize) -> NtpTimestamp {
    NtpTimestamp(u64::from_be_bytes(p[at..at + 8].try_into().expect("8 bytes")))
}

/// Checks a reply to the request sent at `t1` (RFC 4330 §5); the server's receive (T2) and
/// transmit (T3) timestamps.
pub fn parse_reply(p: &[u8], t1: NtpTimestamp) -> Result<(NtpTimestamp, NtpTimestamp), String> {
    if p.len() < PACKET_LEN {
        return Err(format!("reply of {} bytes, expected at least {PACKET_LEN}", p.len()));
    }
    let (leap, mode, stratum) = (p[0] >> 6, p[0] & 0x7, p[1]);
    if mode != MODE_SERVER {
        return Err(format!("reply has mode {mode}, expected {MODE_SERVER} (server)"));
    }
    if timestamp_at(p, 24) != t1 {
        return Err("reply does not answer our request (originate timestamp differs)".into());
    }
    if leap == 3 {
        return Err("server clock is unsynchronised (leap indicator 3)".into());
    }
    if stratum == 0 {
        // A kiss-o'-death: the reference id is a four-letter code such as RATE or DENY.
        let code: String =
            p[12..16].iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect();
        return Err(format!("kiss-o'-death from server (stratum 0, code {code})"));
    }
    if stratum > 15 {
        return Err(format!("server is unsynchronised (stratum {stratum})"));
    }
    let (t2, t3) = (timestamp_at(p, 32), timestamp_at(p, 40));
    if t3.0 == 0 {
        return Err("reply has no transmit timestamp".into());
    }
    Ok((t2, t3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use std::time::Instant;

    const NS: i128 = 1_000_000_000;
    /// 2036-02-07T06:28:16Z: NTP seconds wrap to 0 here (era 1 begins).
    const ERA1_UNIX: u64 = (1 << 32) - NTP_UNIX_OFFSET_SECS;

    fn at(unix_secs: u64, nanos: u32) -> NtpTimestamp {
        NtpTimestamp::from_unix(Duration::new(unix_secs, nanos))
    }

    #[test]
    fn timestamp_known_values() {
        // The Unix epoch is 2208988800 s after NTP's.
        assert_eq!(at(0, 0).0, 2_208_988_800 << 32);
        // 2024-01-01T00:00:00Z = Unix 1704067200 = NTP 3913056000.
        let t = at(1_704_067_200, 500_000_000);
        assert_eq!(t.secs(), 3_913_056_000);
        assert_eq!(t.frac(), 0x8000_0000, "half a second");
        assert_eq!(t.to_unix_nanos(), 1_704_067_200 * NS + 500_000_000);
        // Fractions: 1 ns = 4.29 units (rounded down); just under a second.
        assert_eq!(at(0, 1).frac(), 4);
        assert_eq!(at(0, 999_999_999).frac(), 0xFFFF_FFFB);
        assert_eq!(at(0, 250_000_000).frac(), 0x4000_0000);
        // The wire form is big-endian seconds then fraction.
        assert_eq!(&request(t)[40..48], &[0xE9, 0x3C, 0x7F, 0x00, 0x80, 0, 0, 0]);
        assert_eq!(request(t)[0], 0x23, "LI 0, VN 4, mode 3");
    }

    #[test]
    fn timestamp_eras() {
        let wrap = at(ERA1_UNIX, 0);
        assert_eq!(wrap.0, 0, "era 1 starts at NTP seconds 0");
        assert_eq!(wrap.to_unix_nanos(), i128::from(ERA1_UNIX) * NS, "top bit clear = era 1");
        assert_eq!(at(ERA1_UNIX - 1, 0).secs(), u32::MAX, "the last second of era 0");
        assert_eq!(at(ERA1_UNIX - 1, 0).to_unix_nanos(), i128::from(ERA1_UNIX - 1) * NS);
        // Top bit set, seconds 2^31 = 1968-01-20T03:14:08Z, before the Unix epoch.
        assert_eq!(NtpTimestamp(0x8000_0000 << 32).to_unix_nanos(), -61_505_152 * NS);
        // Differences straddling the wrap.
        let before = at(ERA1_UNIX - 1, 750_000_000);
        let after = at(ERA1_UNIX + 1, 250_000_000);
        assert_eq!(after.secs_since(before), 1.5);
        assert_eq!(before.secs_since(after), -1.5);
    }

    #[test]
    fn fraction_round_trips_to_the_nanosecond() {
        for nanos in (0..1_000_000_000u32).step_by(999_983).chain([1, 2, 3, 499_999_999, 999_999_999]) {
            let t = at(1_700_000_000, nanos);
            assert_eq!(t.to_unix_nanos(), 1_700_000_000 * NS + i128::from(nanos), "{nanos} ns");
        }
    }

    #[test]
    fn offset_and_delay_arithmetic() {
        // Server 250 ms ahead, 50 ms each way, 10 ms inside the server.
        let base = 1_704_067_200;
        let t1 = at(base, 0);
        let t2 = at(base, 300_000_000); // sent at local 0 + 50 ms transit, server reads +250
        let t3 = at(base, 310_000_000);
        let t4 = at(base, 110_000_000); // left the server at local 60 ms, 50 ms back
        assert!((clock_offset_secs(t1, t2, t3, t4) - 0.25).abs() < 1e-9);
        assert!((round_trip_delay_secs(t1, t2, t3, t4) - 0.1).abs() < 1e-9);
        // Local ahead by 2 s, across the era wrap.
        let t1 = at(ERA1_UNIX, 0);
        let t2 = at(ERA1_UNIX - 2, 10_000_000);
        let t3 = t2;
        let t4 = at(ERA1_UNIX, 20_000_000);
        assert!((clock_offset_secs(t1, t2, t3, t4) + 2.0).abs() < 1e-9);
    }

    fn reply(
        li: u8,
        stratum: u8,
        originate: NtpTimestamp,
        rx: NtpTimestamp,
        tx: NtpTimestamp,
    ) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = (li << 6) | (4 << 3) | MODE_SERVER;
        p[1] = stratum;
        p[12..16].copy_from_slice(b"RATE");
        p[24..32].copy_from_slice(&originate.0.to_be_bytes());
        p[32..40].copy_from_slice(&rx.0.to_be_bytes());
        p[40..48].copy_from_slice(&tx.0.to_be_bytes());
        p
    }

    #[test]
    fn reply_validation() {
        let (t1, t2, t3) = (at(100, 0), at(100, 5), at(100, 6));
        assert_eq!(parse_reply(&reply(0, 2, t1, t2, t3), t1), Ok((t2, t3)));
        assert_eq!(parse_reply(&reply(1, 1, t1, t2, t3), t1), Ok((t2, t3)), "a leap second warning is fine");
        let err = |p: &[u8]| parse_reply(p, t1).unwrap_err();
        assert!(err(&reply(3, 2, t1, t2, t3)).contains("leap indicator 3"));
        assert!(err(&reply(0, 0, t1, t2, t3)).contains("code RATE"));
        assert!(err(&reply(0, 16, t1, t2, t3)).contains("stratum 16"));
        assert!(err(&reply(0, 2, at(99, 0), t2, t3)).contains("originate"));
        assert!(err(&reply(0, 2, t1, t2, NtpTimestamp(0))).contains("transmit"));
        assert!(err(&reply(0, 2, t1, t2, t3)[..47]).contains("47 bytes"));
        let mut client_mode = reply(0, 2, t1, t2, t3);
        client_mode[0] = CLIENT_V4;
        assert!(err(&client_mode).contains("mode 3"));
    }

    #[test]
    fn server_strings() {
        assert_eq!(parse_server("192.0.2.1:123"), Ok(Target::Addr("192.0.2.1:123".parse().unwrap())));
        assert_eq!(parse_server("[2001:db8::1]:123"), Ok(Target::Addr("[2001:db8::1]:123".parse().unwrap())));
        assert_eq!(
            parse_server("pool.ntp.org:123"),
            Ok(Target::Host { host: "pool.ntp.org".into(), port: 123 })
        );
        for bad in [
            "pool.ntp.org",
            "pool.ntp.org:",
            "pool.ntp.org:0",
            "pool.ntp.org:70000",
            ":123",
            "2001:db8::1:123",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
        assert!(TimeDriftConfig::default().validate().is_empty());
        let bad = TimeDriftConfig {
            servers: vec!["ntp:123".into(), "ntp".into()],
            timeout_ms: 0,
            ..Default::default()
        };
        let keys: Vec<_> = bad.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["servers", "timeout_ms"]);
    }

    /// How a test SNTP server behaves.
    #[derive(Clone, Copy)]
    enum Responder {
        /// Answers as a stratum 2 server whose clock is ours plus this many ms.
        Offset(i64),
        /// Answers with LI=3 and stratum 0.
        Unsynchronised,
        /// Reads requests and never answers.
        Silent,
    }

    /// Starts a responder on 127.0.0.1; its address.
    async fn responder(kind: Responder) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        actix_rt::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                assert_eq!(n, PACKET_LEN);
                assert_eq!(buf[0], CLIENT_V4);
                let server_now = |offset_ms: i64| {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                    let shifted = if offset_ms >= 0 {
                        now + Duration::from_millis(offset_ms as u64)
                    } else {
                        now - Duration::from_millis(offset_ms.unsigned_abs())
                    };
                    NtpTimestamp::from_unix(shifted)
                };
                let originate = timestamp_at(&buf, 40);
                let out = match kind {
                    Responder::Silent => continue,
                    Responder::Offset(ms) => {
                        let t2 = server_now(ms);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        reply(0, 2, originate, t2, server_now(ms))
                    }
                    Responder::Unsynchronised => reply(3, 0, originate, server_now(0), server_now(0)),
                };
                socket.send_to(&out, peer).await.unwrap();
            }
        });
        addr
    }

    fn collector(servers: &[String], timeout_ms: u64, env: &Env) -> TimeDrift {
        let cfg = TimeDriftConfig { servers: servers.to_vec(), timeout_ms, ..Default::default() };
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        TimeDrift::new(&cfg, env)
    }

    fn value(s: &[Sample], metric: &str, server: &str) -> Option<f64> {
        s.iter().find(|x| x.name == metric && x.tags["server"] == server).map(|x| x.value)
    }

    #[actix_rt::test]
    async fn server_ahead_means_negative_drift() {
        let ahead = responder(Responder::Offset(250)).await.to_string();
        let behind = responder(Responder::Offset(-1500)).await.to_string();
        let mut c = collector(&[ahead.clone(), behind.clone()], 1000, &Env::default());
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(value(&s, "time_drift_success", &ahead), Some(1.0));
        let drift = value(&s, "time_drift", &ahead).unwrap();
        assert!((drift + 250.0).abs() <= 20.0, "local minus a server 250 ms ahead: {drift}");
        assert_eq!(value(&s, "time_drift_success", &behind), Some(1.0));
        let drift = value(&s, "time_drift", &behind).unwrap();
        assert!((drift - 1500.0).abs() <= 20.0, "local minus a server 1.5 s behind: {drift}");
    }

    #[actix_rt::test]
    async fn silent_server_fails_after_the_timeout() {
        let silent = responder(Responder::Silent).await.to_string();
        let mut c = collector(std::slice::from_ref(&silent), 300, &Env::default());
        let started = Instant::now();
        let s = collect_guarded(&mut c).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1000), "{took:?}");
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(value(&s, "time_drift_success", &silent), Some(0.0));
    }

    #[actix_rt::test]
    async fn unsynchronised_server_fails() {
        let bad = responder(Responder::Unsynchronised).await.to_string();
        let mut c = collector(std::slice::from_ref(&bad), 1000, &Env::default());
        let started = Instant::now();
        let s = collect_guarded(&mut c).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(900), "it answered; no timeout");
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(value(&s, "time_drift_success", &bad), Some(0.0));
    }

    #[actix_rt::test]
    async fn host_names_resolve_through_the_hosts_file() {
        let port = responder(Responder::Offset(0)).await.port();
        // The fixture's hosts file maps ntp.vigil.test to 127.0.0.1; no libc involved.
        let env = Env {
            root: concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/time-drift-hosts").into(),
            ..Env::default()
        };
        let known = format!("ntp.vigil.test:{port}");
        let unknown = format!("nowhere.vigil.test:{port}");
        let mut c = collector(&[known.clone(), unknown.clone()], 500, &env);
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(value(&s, "time_drift_success", &known), Some(1.0), "{s:?}");
        assert!(value(&s, "time_drift", &known).unwrap().abs() <= 20.0);
        assert_eq!(value(&s, "time_drift_success", &unknown), Some(0.0), "{s:?}");
        assert_eq!(value(&s, "time_drift", &unknown), None);
    }

    #[actix_rt::test]
    async fn live_default_server() {
        // Without internet (CI sandboxes) this is a failure sample; with it, a plausible drift.
        let mut c = TimeDrift::new(&TimeDriftConfig::default(), &Env::default());
        let started = Instant::now();
        let s = collect_guarded(&mut c).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by two timeouts: {:?}",
            started.elapsed()
        );
        let ok = value(&s, "time_drift_success", "pool.ntp.org:123").expect("a success sample");
        if ok == 1.0 {
            let drift = value(&s, "time_drift", "pool.ntp.org:123").unwrap();
            assert!(drift.abs() < 3_600_000.0, "drift {drift} ms");
        } else {
            assert_eq!(ok, 0.0);
            assert_eq!(s.len(), 1);
        }
    }
}
