//! Name resolution without libc: hickory-resolver configured like the system resolver
//! (`/etc/hosts`, then `/etc/resolv.conf`), used by time_drift and by the upload sinks'
//! HTTP/WebSocket client (plugged into awc's connector), so nothing in vigil calls
//! getaddrinfo(3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Hosts, TokioResolver};

use std::path::Path;

/// A resolver that behaves like the system's, without libc: /etc/hosts, then the
/// nameservers and search list of /etc/resolv.conf. A missing or unusable resolv.conf
/// leaves only /etc/hosts (and the error, to explain a failed lookup).
pub struct SystemResolver {
    resolver: TokioResolver,
    resolv_conf_error: Option<String>,
}

/// `/etc/resolv.conf` under `root` (`/` on a live host, a fixture tree in tests), parsed by
/// hickory (nameservers, search list, options). The error names the file.
pub fn read_resolv_conf(root: &Path) -> Result<(ResolverConfig, ResolverOpts), String> {
    let path = root.join("etc/resolv.conf");
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    hickory_resolver::system_conf::parse_resolv_conf(text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A resolver for the host whose files are under `root` (`/` on a live host).
pub fn system_resolver(root: &Path, timeout: Duration) -> SystemResolver {
    let (config, mut opts, resolv_conf_error) = match read_resolv_conf(root) {
        Ok((c, o)) => (c, o, None),
        Err(e) => (ResolverConfig::from_parts(None, vec![], vec![]), ResolverOpts::default(), Some(e)),
    };
    opts.timeout = timeout;
    // Our own hosts file (under the env root) replaces hickory's read of the real one.
    opts.use_hosts_file = ResolveHosts::Never;
    let mut resolver = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    let mut hosts = Hosts::default();
    let path = root.join("etc/hosts");
    match std::fs::File::open(&path).and_then(|f| hosts.read_hosts_conf(f)) {
        Ok(()) => resolver.set_hosts(Arc::new(hosts)),
        Err(e) => tracing::debug!(path = %path.display(), error = %e, "No hosts file; using DNS only."),
    }
    SystemResolver { resolver, resolv_conf_error }
}

pub async fn resolve(
    r: &SystemResolver,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let failed = |why: String| match &r.resolv_conf_error {
        Some(e) => format!("resolving {host}: {why} ({e})"),
        None => format!("resolving {host}: {why}"),
    };
    match tokio::time::timeout(timeout, r.resolver.lookup_ip(host)).await {
        Err(_) => Err(failed(format!("no answer within {} ms", timeout.as_millis()))),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Ok(Ok(found)) => {
            found.iter().next().map(|ip| SocketAddr::new(ip, port)).ok_or_else(|| failed("no address".into()))
        }
    }
}

/// The resolver awc's connector uses for the upload sinks.
pub struct AwcResolver {
    inner: SystemResolver,
    timeout: Duration,
}

impl AwcResolver {
    pub fn new(timeout: Duration) -> Self {
        Self { inner: system_resolver(Path::new("/"), timeout), timeout }
    }
}

impl actix_tls::connect::Resolve for AwcResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> futures_util::future::LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn std::error::Error>>> {
        Box::pin(async move {
            let found = tokio::time::timeout(self.timeout, self.inner.resolver.lookup_ip(host))
                .await
                .map_err(|_| format!("resolving {host}: no answer within {} ms", self.timeout.as_millis()))?
                .map_err(|e| match &self.inner.resolv_conf_error {
                    Some(c) => format!("resolving {host}: {e} ({c})"),
                    None => format!("resolving {host}: {e}"),
                })?;
            Ok(found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
        })
    }
}

/// An awc client whose connections resolve names through [`AwcResolver`]; `tls` is used
/// for `https://` and `wss://` URLs.
pub fn http_client(timeout: Duration, tls: Option<Arc<rustls::ClientConfig>>) -> awc::Client {
    let tcp =
        actix_tls::connect::Connector::new(actix_tls::connect::Resolver::custom(AwcResolver::new(timeout)));
    let mut connector = awc::Connector::new().connector(tcp.service());
    if let Some(tls) = tls {
        connector = connector.rustls_0_23(tls);
    }
    awc::Client::builder().connector(connector).timeout(timeout).finish()
}
