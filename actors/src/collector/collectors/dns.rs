//! `dns`: how long each nameserver takes to resolve each name, and whether it could
//! (CONTRACT §4: `dns` in ms and `dns_success` 0/1, tags {name, server}).
//!
//! Every collection asks every nameserver for every name, all queries at once, each bounded
//! by `timeout_ms`, so one collection takes about `timeout_ms` at worst whatever the list
//! sizes. Resolution is hickory's pure-Rust stub resolver speaking UDP to the one nameserver
//! under test: never libc (`getaddrinfo` would consult nsswitch, /etc/hosts and caches,
//! and block the thread).
//!
//! Each query really goes to the wire: a fresh resolver per query (so no answer cache
//! survives), no /etc/hosts, no search domains (the name is queried as given, fully
//! qualified), and no retry, so the time measured is one round trip of A (then AAAA if A
//! yields nothing) lookups.
//!
//! A name that does not resolve (NXDOMAIN, no address, SERVFAIL, REFUSED or no answer
//! within `timeout_ms`) yields `dns_success 0` and no `dns` sample: the elapsed time of a
//! failure is mostly the timeout or a negative answer, and mixing it into the latency series
//! would make a failing server look fast (or slow) for the wrong reason.
//!
//! Names default to the host names of the upload URLs; nameservers default to the
//! `nameserver` lines of `/etc/resolv.conf` (read at every collection, so a DHCP change is
//! followed), port 53.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, TokioResolver};
use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// `[collectors.dns]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Measure name resolution.
    pub enabled: bool,
    /// Host names to resolve; empty = the host names of the upload URLs.
    pub names: Vec<String>,
    /// Nameservers to ask, each `IP:port`; empty = the `nameserver` lines of
    /// /etc/resolv.conf, port 53.
    pub nameservers: Vec<String>,
    /// How long one lookup may take before it counts as failed, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self { enabled: true, names: Vec::new(), nameservers: Vec::new(), timeout_ms: 2000 }
    }
}

impl CollectorConfig for DnsConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for name in &self.names {
            if name.parse::<IpAddr>().is_ok() {
                out.push(("names".into(), format!("{name:?} is an IP address, not a host name")));
            } else if let Err(e) = Name::from_utf8(name) {
                out.push(("names".into(), format!("{name:?} is not a valid host name: {e}")));
            }
        }
        for ns in &self.nameservers {
            if ns.parse::<SocketAddr>().is_err() {
                out.push((
                    "nameservers".into(),
                    format!("{ns:?} is not IP:port (e.g. \"192.0.2.53:53\" or \"[2001:db8::53]:53\")"),
                ));
            }
        }
        if self.timeout_ms == 0 {
            out.push(("timeout_ms".into(), "must be greater than 0".into()));
        }
        out
    }
}

pub struct Dns {
    env: Env,
    names: Vec<String>,
    /// `None`: read /etc/resolv.conf at every collection.
    nameservers: Option<Vec<SocketAddr>>,
    timeout: Duration,
}

impl Collector for Dns {
    const NAME: &'static str = "dns";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("dns", Unit::Milliseconds, "Time the last resolution of the name took at the server.").exposed_as("vigil_dns_resolution_seconds"),
        Metric::gauge("dns_success", Unit::None, "Whether the last resolution of the name at the server succeeded (1) or not (0)."),
    ];
    type Config = DnsConfig;

    fn new(config: &DnsConfig, env: &Env) -> Self {
        let names = if config.names.is_empty() {
            // An upload URL with an IP address needs no resolution, so there is nothing to measure.
            env.upload_hosts.iter().filter(|h| h.parse::<IpAddr>().is_err()).cloned().collect()
        } else {
            config.names.clone()
        };
        // validate() has refused anything that does not parse.
        let nameservers = (!config.nameservers.is_empty())
            .then(|| config.nameservers.iter().filter_map(|s| s.parse().ok()).collect());
        Self { env: env.clone(), names, nameservers, timeout: Duration::from_millis(config.timeout_ms) }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        if self.names.is_empty() {
            return Ok(());
        }
        let servers = match &self.nameservers {
            Some(s) => s.clone(),
            None => system_nameservers(&self.env)?,
        };
        let mut pairs = Vec::new();
        let mut lookups = Vec::new();
        for name in &self.names {
            for &server in &servers {
                pairs.push((name, server));
                lookups.push(resolve_time(name, server, self.timeout));
            }
        }
        let results = futures_util::future::join_all(lookups).await;
        for ((name, server), result) in pairs.into_iter().zip(results) {
            let server = server.to_string();
            match result {
                Ok(took) => {
                    out.push(
                        Sample::new("dns", took.as_secs_f64() * 1000.0)
                            .tag("name", name)
                            .tag("server", &server),
                    );
                    out.push(Sample::new("dns_success", 1.0).tag("name", name).tag("server", server));
                }
                Err(why) => {
                    tracing::debug!(name = %name, server = %server, error = %why, "DNS lookup failed.");
                    out.push(Sample::new("dns_success", 0.0).tag("name", name).tag("server", server));
                }
            }
        }
        Ok(())
    }
}

/// Resolves `name` (as a fully qualified name) by asking `server` alone, once; the time
/// it took, or why it failed.
pub async fn resolve_time(name: &str, server: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let mut fqdn = Name::from_utf8(name).map_err(|e| format!("invalid name: {e}"))?;
    fqdn.set_fqdn(true);
    let config = ResolverConfig::from_parts(None, vec![], vec![NameServerConfig::new(server, Protocol::Udp)]);
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    // hickory counts *retries*: 0 means exactly one query per record type.
    opts.attempts = 0;
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.try_tcp_on_error = false;
    let resolver = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    let started = Instant::now();
    // The per-query timeout bounds each of A and AAAA; this bounds the pair.
    match tokio::time::timeout(timeout, resolver.lookup_ip(fqdn)).await {
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(found)) if found.iter().next().is_none() => Err("no address in the answer".into()),
        Ok(Ok(_)) => Ok(started.elapsed()),
    }
}

/// The distinct nameserver addresses of /etc/resolv.conf (hickory lists each twice, for UDP
/// and TCP), in file order.
pub(crate) fn system_nameservers(env: &Env) -> Result<Vec<SocketAddr>, CollectError> {
    let (config, _) = crate::resolver::read_resolv_conf(&env.root).map_err(CollectError::Other)?;
    let mut out: Vec<SocketAddr> = Vec::new();
    for ns in config.name_servers() {
        if !out.contains(&ns.socket_addr) {
            out.push(ns.socket_addr);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use std::process::{Child, Command, Stdio};

    fn fixture(dir: &str) -> Env {
        Env {
            root: format!("{}/../tests/fixtures/{dir}", env!("CARGO_MANIFEST_DIR")).into(),
            ..Env::default()
        }
    }

    fn find<'a>(s: &'a [Sample], metric: &str, name: &str, server: &str) -> Option<&'a Sample> {
        s.iter().find(|x| x.name == metric && x.tags["name"] == name && x.tags["server"] == server)
    }

    /// A dnsmasq answering on 127.0.0.1:`port`: `known.vigil.test` is 10.1.2.3,
    /// `missing.vigil.test` is NXDOMAIN, anything else is refused (no upstream). Killed on drop.
    struct Dnsmasq {
        child: Child,
        addr: SocketAddr,
        _dir: tempfile::TempDir,
    }

    impl Dnsmasq {
        async fn start() -> Self {
            let exe = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or_else(|| {
                    panic!("dnsmasq is not installed: run scripts/test (it installs dnsmasq-base), or apt-get install dnsmasq-base")
                });
            let dir = tempfile::tempdir().unwrap();
            // A port the kernel just handed out (and took back) is free for dnsmasq to take.
            let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut cmd = Command::new(exe);
            cmd.args([
                "--no-daemon",
                "--port",
                &port.to_string(),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--address=/known.vigil.test/10.1.2.3",
                "--address=/missing.vigil.test/",
            ])
            .arg(format!("--pid-file={}", dir.path().join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                // As root dnsmasq would switch to the user "nobody", who may not exist here.
                cmd.arg("--user=root");
            }
            let child = cmd.spawn().expect("start dnsmasq");
            let me = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), _dir: dir };
            me.wait_ready().await;
            me
        }

        async fn wait_ready(&self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if resolve_time("known.vigil.test", self.addr, Duration::from_millis(200)).await.is_ok() {
                    return;
                }
                assert!(Instant::now() < deadline, "dnsmasq on {} never answered", self.addr);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    impl Drop for Dnsmasq {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn config(names: &[&str], nameservers: &[String], timeout_ms: u64) -> DnsConfig {
        DnsConfig {
            names: names.iter().map(|s| s.to_string()).collect(),
            nameservers: nameservers.to_vec(),
            timeout_ms,
            ..DnsConfig::default()
        }
    }

    #[actix_rt::test]
    async fn against_a_real_dnsmasq() {
        let dns = Dnsmasq::start().await;
        let server = dns.addr.to_string();
        let cfg = config(&["known.vigil.test", "missing.vigil.test"], std::slice::from_ref(&server), 1000);
        assert!(cfg.validate().is_empty());
        let mut c = Dns::new(&cfg, &Env::default());
        // Twice: the second collection must query again (no cache) and still succeed.
        for _ in 0..2 {
            let s = collect_guarded(&mut c).await.unwrap();
            assert_eq!(
                s.len(),
                3,
                "dns+dns_success for the known name, dns_success for the missing one: {s:?}"
            );
            assert_eq!(find(&s, "dns_success", "known.vigil.test", &server).unwrap().value, 1.0);
            let took = find(&s, "dns", "known.vigil.test", &server).unwrap().value;
            assert!(took > 0.0 && took < 1000.0, "resolution time {took} ms");
            assert_eq!(find(&s, "dns_success", "missing.vigil.test", &server).unwrap().value, 0.0);
            assert!(find(&s, "dns", "missing.vigil.test", &server).is_none(), "no time for a failure");
        }
        // Nothing is cached: with the server gone, the known name no longer resolves.
        drop(dns);
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(find(&s, "dns_success", "known.vigil.test", &server).unwrap().value, 0.0, "{s:?}");
        assert!(find(&s, "dns", "known.vigil.test", &server).is_none());
    }

    #[actix_rt::test]
    async fn nxdomain_is_a_failure_and_known_name_resolves() {
        let dns = Dnsmasq::start().await;
        let t = Duration::from_millis(1000);
        assert!(resolve_time("known.vigil.test", dns.addr, t).await.is_ok());
        let started = Instant::now();
        let err = resolve_time("missing.vigil.test", dns.addr, t).await.unwrap_err();
        // An NXDOMAIN is an answer, not a timeout: it comes back well before the timeout.
        assert!(started.elapsed() < Duration::from_millis(900), "{err} after {:?}", started.elapsed());
        // A name dnsmasq refuses (no upstream) is a failure too.
        assert!(resolve_time("elsewhere.vigil.test", dns.addr, t).await.is_err());
    }

    #[actix_rt::test]
    async fn names_default_to_upload_hosts() {
        let dns = Dnsmasq::start().await;
        let env = Env { upload_hosts: vec!["known.vigil.test".into(), "192.0.2.7".into()], ..Env::default() };
        let mut c = Dns::new(&config(&[], &[dns.addr.to_string()], 1000), &env);
        assert_eq!(c.names, ["known.vigil.test"], "IP literals need no resolution");
        let s = collect_guarded(&mut c).await.unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(find(&s, "dns_success", "known.vigil.test", &dns.addr.to_string()).unwrap().value, 1.0);
    }

    #[actix_rt::test]
    async fn silent_nameserver_fails_within_the_timeout() {
        // Bound but never read: queries go unanswered.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = silent.local_addr().unwrap().to_string();
        let mut c = Dns::new(
            &config(&["a.vigil.test", "b.vigil.test"], std::slice::from_ref(&server), 300),
            &Env::default(),
        );
        let started = Instant::now();
        let s = collect_guarded(&mut c).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(1500), "lookups run concurrently, each bounded: {took:?}");
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s.iter().all(|x| x.name == "dns_success" && x.value == 0.0), "{s:?}");
        assert!(find(&s, "dns_success", "b.vigil.test", &server).is_some());
    }

    #[actix_rt::test]
    async fn no_names_no_samples() {
        let mut c = Dns::new(&DnsConfig::default(), &fixture("does-not-exist"));
        assert!(collect_guarded(&mut c).await.unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn missing_resolv_conf_is_an_error() {
        let mut c = Dns::new(&config(&["known.vigil.test"], &[], 100), &fixture("does-not-exist"));
        let e = collect_guarded(&mut c).await.unwrap_err();
        assert!(e.to_string().contains("resolv.conf"), "{e}");
    }

    #[test]
    fn nameservers_from_resolv_conf() {
        let got = system_nameservers(&fixture("dns-resolv")).unwrap();
        let want: Vec<SocketAddr> =
            vec!["192.0.2.53:53".parse().unwrap(), "[2001:db8::53]:53".parse().unwrap()];
        assert_eq!(got, want);
        let c = Dns::new(&DnsConfig::default(), &fixture("dns-resolv"));
        assert!(c.nameservers.is_none(), "empty list = read resolv.conf at collection time");
    }

    #[test]
    fn validation() {
        assert!(DnsConfig::default().validate().is_empty());
        let bad = DnsConfig {
            names: vec!["ok.example".into(), "10.0.0.1".into()],
            nameservers: vec![
                "127.0.0.1:53".into(),
                "[::1]:5353".into(),
                "ns.example:53".into(),
                "127.0.0.1".into(),
            ],
            timeout_ms: 0,
            ..DnsConfig::default()
        };
        let keys: Vec<_> = bad.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["names", "nameservers", "nameservers", "timeout_ms"]);
    }
}
