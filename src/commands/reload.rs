//! SIGHUP's configuration reload (CONTRACT §2), and what `vigil run` shares with it: making
//! a config's paths absolute, starting a sink, reading the status token.
//!
//! A reload reads the configuration from where the start-up lookup finds it now. An invalid
//! file is refused: every error is logged as `check-config` prints it (file:line:column),
//! `/status` `config.reload_error` says so, and the configuration in force stays. A valid one
//! is applied without restarting the supervisor:
//!
//! - `[collectors]`, and the upload URLs' host names (the dns collector's default names): a
//!   graceful collector restart, as for a check-in's new settings.
//! - `agent.tags`: added to every sample from the next collection on.
//! - `[[upload]]`: a sink whose name is new starts; one whose table changed (or whose host
//!   name or agent tags did) takes the new settings in place, keeping its spool and seq; one
//!   that is gone spools what it buffers and stops, its spool left in the data dir (a sink of
//!   that name added back later sends it).
//! - `[status]`: the listener is stopped and started on the new address and token; if the new
//!   one cannot start, the old one is started again and the reload error says why.
//! - Keys that cannot change while running keep their values and are logged as needing a
//!   restart: `agent.data_dir` (and `--data-dir`), `agent.log_file`, `agent.log_level`,
//!   `agent.log_format`, `[supervisor]`, `[checkin]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use vigil_actors::config::{Config, UploadConfig};
use vigil_actors::supervisor::{Reload, StatusFeed, Supervisor};
use vigil_actors::upload::{Reconfigure, SinkHandle, Uploader};

use crate::config;
use crate::endpoint::{ConfigInfo, Live};

/// Makes every file path of `cfg` absolute against `cwd` (the daemon works in `/`).
pub fn absolutize(cfg: &mut Config, cwd: &Path) {
    let files = cfg.upload.iter_mut().flat_map(|u| [&mut u.token_file, &mut u.ca_file]);
    for f in
        files.chain([&mut cfg.checkin.ca_file, &mut cfg.checkin.public_key_file, &mut cfg.status.token_file])
    {
        if !f.is_empty() {
            *f = cwd.join(Path::new(f)).to_string_lossy().into_owned();
        }
    }
}

/// `agent.hostname`, or the system's host name.
pub fn host_name(cfg: &Config) -> String {
    if cfg.agent.hostname.is_empty() {
        sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into())
    } else {
        cfg.agent.hostname.clone()
    }
}

/// The status endpoint's bearer token from `status.token_file` (`None` when unset).
pub fn status_token(token_file: &str) -> anyhow::Result<Option<String>> {
    if token_file.is_empty() {
        return Ok(None);
    }
    if let Some(w) = vigil_actors::config::secret_file_warning(token_file, "status.token_file") {
        tracing::warn!("{w}");
    }
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read status.token_file {token_file}"))?
        .trim()
        .to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "status.token_file {token_file} is empty: refusing to serve without a token"
    );
    Ok(Some(token))
}

/// The host names of the upload URLs, for the dns collector.
pub fn upload_hosts(cfg: &Config) -> Vec<String> {
    cfg.upload.iter().filter_map(|u| url_host(&u.url)).collect()
}

/// The host name of a URL (`ws://host:port/path` → `host`, `[::1]` → `::1`).
pub fn url_host(url: &str) -> Option<String> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Domain(d) if !d.is_empty() => Some(d.to_string()),
        url::Host::Domain(_) => None,
        url::Host::Ipv4(a) => Some(a.to_string()),
        url::Host::Ipv6(a) => Some(a.to_string()),
    }
}

/// What every sink is started with besides its own table.
#[derive(Clone)]
pub struct SinkContext {
    pub data_dir: PathBuf,
    pub agent_id: String,
    pub checkins: bool,
}

impl SinkContext {
    /// A sink, its spool opened (disk I/O: off the supervision thread once it runs). A spool
    /// that cannot be opened is tried again at every flush: it never stops the agent
    /// (CONTRACT §10).
    pub fn make(
        &self,
        u: UploadConfig,
        host: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Uploader {
        Uploader::new(u, &self.data_dir, self.agent_id.clone(), host.to_string())
            .with_agent_tags(tags.clone())
            .with_checkin_token(self.checkins)
            .with_crash_reports(vigil_actors::supervisor::crash_report::upload_source(
                self.data_dir.join("crashes"),
            ))
    }

    /// Makes one sink and starts it on a thread of its own: its spool's fsyncs and its
    /// connection can stall it, never the supervision thread.
    pub fn start(
        &self,
        u: UploadConfig,
        host: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> SinkHandle {
        self.make(u, host, tags).start_on_own_thread()
    }
}

/// Runs `f` (file I/O) on the blocking pool: a reload runs on the supervision thread, which
/// nothing may stall, not even a config file on a frozen disk.
async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    actix_rt::task::spawn_blocking(f).await.map_err(|e| anyhow::anyhow!("reload task failed: {e}"))
}

/// The running agent as a reload sees it.
pub struct Running {
    pub cli_config: Option<PathBuf>,
    pub cli_data_dir: Option<PathBuf>,
    pub cli_log_file: bool,
    pub cwd: PathBuf,
    /// The configuration in force (paths absolute, restart-only keys as at start).
    pub current: Config,
    pub data_dir: PathBuf,
    pub host: String,
    pub sink_ctx: SinkContext,
    pub sinks: Vec<(UploadConfig, SinkHandle)>,
    pub supervisor: actix::Addr<Supervisor>,
    pub live: Arc<Live>,
    pub feed: StatusFeed,
    pub server: Option<actix_web::dev::ServerHandle>,
    pub status_token: Option<String>,
}

impl Running {
    /// SIGHUP: reads the configuration again and applies what changed (module doc).
    pub async fn reload(&mut self) {
        let source = config::lookup(self.cli_config.as_deref());
        tracing::info!(config = %source, "SIGHUP received; reloading the configuration.");
        let from = source.clone();
        let loaded = match off_thread(move || config::load(&from)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "Reload failed; the configuration in force stays.");
                return;
            }
        };
        let mut new = match loaded {
            Ok(c) => c,
            Err(e) => {
                let text = e.to_string();
                for line in text.lines() {
                    tracing::error!("{}", line.trim());
                }
                tracing::error!("Reload refused; the configuration in force stays.");
                let mut info = self.live.config();
                info.reload_error = Some(text);
                self.live.set_config(info);
                return;
            }
        };
        absolutize(&mut new, &self.cwd);
        let mut errors = Vec::new();
        self.keep_restart_only(&mut new);
        if new.status != self.current.status {
            if let Err(e) = self.restart_status(&new).await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "The new [status] cannot be used; the listener stays as it was."
                );
                errors.push(format!("status: {e:#}"));
                new.status = self.current.status.clone();
            }
        }
        if !new.upload.is_empty() && self.sink_ctx.agent_id.is_empty() {
            let dir = self.data_dir.clone();
            let id = off_thread(move || {
                vigil_actors::upload::protocol::agent_id(&dir).map_err(anyhow::Error::from)
            })
            .await
            .and_then(|r| r);
            match id {
                Ok(id) => self.sink_ctx.agent_id = id,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read or create agent_id; the sinks stay as they were.");
                    errors.push(format!(
                        "upload: cannot read or create {}/agent_id: {e}",
                        self.data_dir.display()
                    ));
                    new.upload = self.current.upload.clone();
                }
            }
        }
        self.apply_sinks(&new).await;
        self.live.set_stale_after(new.collectors.stale_after());
        self.supervisor.do_send(Reload {
            collectors: Box::new(new.collectors.clone()),
            tags: new.agent.tags.clone(),
            upload_hosts: upload_hosts(&new),
            sinks: self.sinks.iter().map(|(_, h)| h.clone()).collect(),
        });
        self.current = new;
        let reload_error = (!errors.is_empty()).then(|| errors.join("; "));
        self.live.set_config(ConfigInfo { source: source.to_string(), loaded_at: now(), reload_error });
        tracing::info!(config = %source, sinks = self.sinks.len(), "Configuration reloaded.");
    }

    /// Keys that cannot change while running keep their values in `new`; each one that
    /// changed in the file is logged as needing a restart.
    fn keep_restart_only(&self, new: &mut Config) {
        let cur = &self.current;
        let mut changed = Vec::new();
        if self.cli_data_dir.is_none() && self.cwd.join(config::data_dir(None, new)) != self.data_dir {
            changed.push("agent.data_dir");
        }
        if !self.cli_log_file && new.agent.log_file != cur.agent.log_file {
            changed.push("agent.log_file");
        }
        if new.agent.log_level != cur.agent.log_level {
            changed.push("agent.log_level");
        }
        if new.agent.log_format != cur.agent.log_format {
            changed.push("agent.log_format");
        }
        if new.supervisor != cur.supervisor {
            changed.push("[supervisor]");
        }
        if new.checkin != cur.checkin {
            changed.push("[checkin]");
        }
        for key in changed {
            tracing::warn!(key, "Changed in the configuration file, but it needs a restart: the running value stays until then.");
        }
        new.agent.data_dir = cur.agent.data_dir.clone();
        new.agent.log_file = cur.agent.log_file.clone();
        new.agent.log_level = cur.agent.log_level;
        new.agent.log_format = cur.agent.log_format;
        new.supervisor = cur.supervisor.clone();
        new.checkin = cur.checkin.clone();
    }

    /// Starts, reconfigures and retires sinks by name.
    async fn apply_sinks(&mut self, new: &Config) {
        let host = host_name(new);
        let tags_changed = new.agent.tags != self.current.agent.tags;
        let mut old = std::mem::take(&mut self.sinks);
        for u in &new.upload {
            match old.iter().position(|(c, _)| c.name == u.name) {
                Some(at) => {
                    let (was, handle) = old.remove(at);
                    if was != *u || host != self.host || tags_changed {
                        handle.reconfigure(Reconfigure {
                            cfg: u.clone(),
                            host: host.clone(),
                            agent_tags: new.agent.tags.clone(),
                        });
                    }
                    self.sinks.push((u.clone(), handle));
                }
                None => {
                    tracing::info!(sink = %u.name, kind = ?u.kind, url = %u.url, "Sink added by the reload.");
                    let (ctx, cfg, h, tags) =
                        (self.sink_ctx.clone(), u.clone(), host.clone(), new.agent.tags.clone());
                    match off_thread(move || ctx.make(cfg, &h, &tags)).await {
                        Ok(up) => self.sinks.push((u.clone(), up.start_on_own_thread())),
                        Err(e) => {
                            tracing::error!(sink = %u.name, error = format!("{e:#}"), "Cannot start the added sink.")
                        }
                    }
                }
            }
        }
        for (_, gone) in old {
            gone.retire();
        }
        self.host = host;
        self.live.set_sinks(self.sinks.iter().map(|(_, h)| h.clone()).collect());
    }

    /// Replaces the status listener with one for `new.status`; when that fails, the old one
    /// is started again and the error returned.
    async fn restart_status(&mut self, new: &Config) -> anyhow::Result<()> {
        let listen = new.status.listen_addr().map_err(anyhow::Error::msg)?;
        let file = new.status.token_file.clone();
        let token = off_thread(move || status_token(&file)).await??;
        if let Some(old) = self.server.take() {
            old.stop(true).await;
        }
        match crate::endpoint::start(
            &listen,
            token.clone(),
            self.data_dir.join("crashes"),
            self.feed.clone(),
            self.live.clone(),
        ) {
            Ok(server) => {
                if let Some((_, addr)) = &server {
                    tracing::info!(addr = %addr, "Status endpoint listening (reloaded).");
                } else {
                    tracing::info!("Status endpoint disabled by the reload.");
                }
                self.server = server.map(|(h, _)| h);
                self.status_token = token;
                Ok(())
            }
            Err(e) => {
                let old = self.current.status.listen_addr().map_err(anyhow::Error::msg)?;
                match crate::endpoint::start(&old, self.status_token.clone(), self.data_dir.join("crashes"), self.feed.clone(), self.live.clone()) {
                    Ok(server) => self.server = server.map(|(h, _)| h),
                    Err(again) => tracing::error!(error = format!("{again:#}"), "The old status listener cannot be started again either; there is no status endpoint until the next reload."),
                }
                Err(e)
            }
        }
    }
}

/// Now, RFC 3339 with milliseconds (`/status` `config.loaded_at`).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
