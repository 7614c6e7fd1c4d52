//! [`Checkin`]: the supervisor's check-ins (CONTRACT §9, docs/checkins.md).
//!
//! Every `checkin.interval_secs` (minus up to 10 % jitter, [`crate::backoff`]) it asks the Supervisor for its state
//! ([`GetCheckinInfo`]), POSTs it as JSON to `checkin.url`, and acts on the answer:
//!
//! * `settings`: the `[collectors]` table (same schema), laid over the config file's; checked
//!   like the config file, then handed to the Supervisor ([`ApplyCollectors`]), which applies
//!   them by a graceful collector restart if they differ from the ones in force. Invalid
//!   settings are not applied; the rejection is logged and reported.
//! * `token`: a new upload token, stored in `DATA_DIR/upload.token` (mode 0600, written to a
//!   temporary file and renamed) and announced to the sinks ([`TokenChanged`]), which use it
//!   from then on, in place of their `token_file`.
//! * `module`: a [`Manifest`]; a version not running, not marked bad and not already rejected
//!   is downloaded (streamed, at most [`MAX_MODULE_BYTES`], within [`DOWNLOAD_TIMEOUT`]),
//!   verified, installed ([`crate::supervisor::module::Download`]) and handed to the Supervisor
//!   ([`ModuleEvent::Installed`]).
//!
//! The actor runs on an Arbiter (thread) of its own: downloads, hashing and file writes never
//! delay supervision, and nothing here can stop collection. A failed check-in backs off: the
//! n-th consecutive failure waits `interval · 2^n` (capped at the larger of the interval and
//! [`MAX_BACKOFF`]), with the same jitter.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::CheckinConfig;
use crate::config::CollectorsConfig;
use crate::supervisor::module::{self, Change, Installed, Manifest, PublicKey, MAX_MODULE_BYTES};
use crate::supervisor::{
    ApplyCollectors, CheckinInfo, CheckinReport, CheckinStatus, GetCheckinInfo, ModuleEvent, RecordChange,
    Supervisor,
};
use crate::upload::token::{check_token, store_token, stored_token, TokenChanged, TOKEN_FILE};

/// A check-in exchange (the request, the answer's headers and its body) may take this long
/// in total.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A module download may take this long in total.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Failed check-ins are retried at least this often (unless the interval is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(1800);
/// The largest check-in answer accepted.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// The JSON body POSTed to `checkin.url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub agent_id: String,
    pub host: String,
    /// The supervisor's (vigil's) version.
    pub version: String,
    pub module: RequestModule,
    pub collector: RequestCollector,
    /// The outcome of the last change a check-in brought.
    pub last_change: Option<Change>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestModule {
    pub version: String,
    pub builtin: bool,
    /// `active`, `verifying`, `rejected` or `rolled_back` (as in `/status`).
    pub state: String,
    pub bad: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestCollector {
    pub state: String,
    pub restarts: u64,
    pub incarnation: u64,
}

/// The answer; every part optional (absent: nothing changes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    #[serde(default)]
    pub settings: Option<Settings>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub module: Option<Manifest>,
}

/// Remote settings: for now the `[collectors]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub collectors: Option<serde_json::Value>,
}

/// Lays `over` onto `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The collector settings `s` make of the config file's `base`, checked; or why not.
pub fn settings_to_collectors(base: &CollectorsConfig, s: &Settings) -> Result<CollectorsConfig, String> {
    let Some(over) = &s.collectors else { return Ok(base.clone()) };
    if !over.is_object() {
        return Err("settings.collectors must be an object (the [collectors] table)".into());
    }
    let mut v = serde_json::to_value(base).map_err(|e| e.to_string())?;
    merge(&mut v, over);
    let c: CollectorsConfig = serde_json::from_value(v).map_err(|e| format!("settings.collectors: {e}"))?;
    let mut problems: Vec<String> = Vec::new();
    if !(c.interval_secs.is_finite() && c.interval_secs > 0.0 && c.interval_secs <= 1e7) {
        problems.push(format!("collectors.interval_secs: must be above 0, got {}", c.interval_secs));
    }
    problems.extend(c.validate().into_iter().map(|p| format!("{}: {}", p.path, p.message)));
    if problems.is_empty() {
        Ok(c)
    } else {
        Err(problems.join("; "))
    }
}

/// A short id of some bytes (settings, a token) for reports: 16 hex digits of their sha256.
fn short_id(bytes: &[u8]) -> String {
    module::sha256_hex(bytes)[..16].to_string()
}

/// Where to fetch a module: the manifest's absolute URL, a path on the check-in server, or
/// by default `/v1/modules/VERSION` there.
pub fn module_url(checkin_url: &str, m: &Manifest) -> Result<String, String> {
    if m.url.starts_with("http://") || m.url.starts_with("https://") {
        return Ok(m.url.clone());
    }
    let path = if m.url.is_empty() { format!("/v1/modules/{}", m.version) } else { m.url.clone() };
    if !path.starts_with('/') {
        return Err(format!("module url {:?} is neither absolute nor a path", m.url));
    }
    let base = url::Url::parse(checkin_url).map_err(|e| format!("checkin.url: {e}"))?;
    base.join(&path).map(String::from).map_err(|e| format!("module url {path:?}: {e}"))
}

/// Everything the check-in actor needs.
pub struct CheckinSettings {
    pub config: CheckinConfig,
    pub public_key: PublicKey,
    pub data_dir: PathBuf,
    pub agent_id: String,
    pub host: String,
    pub version: String,
    /// The config file's `[collectors]`: remote settings are laid over it.
    pub base_collectors: CollectorsConfig,
    pub supervisor: Addr<Supervisor>,
    pub sinks: Vec<Recipient<TokenChanged>>,
    /// The `token_file` of the first `vigil` sink that has one: the check-ins' bearer token
    /// until a check-in has delivered one.
    pub upload_token_file: Option<PathBuf>,
}

/// The bearer token of a check-in: the stored (rotated) upload token, else the content of
/// `upload_token_file`; one that cannot be a header is not sent (logged).
fn checkin_token(s: &CheckinSettings) -> Option<String> {
    if let Some(t) = stored_token(&s.data_dir) {
        return Some(t);
    }
    let f = s.upload_token_file.as_ref()?;
    let t = match std::fs::read_to_string(f) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            tracing::warn!(file = %f.display(), error = %e, "Cannot read the upload token for the check-in.");
            return None;
        }
    };
    match check_token(&t) {
        Ok(()) => Some(t),
        Err(e) => {
            tracing::warn!(file = %f.display(), error = %e, "The upload token file holds no usable token; checking in without one.");
            None
        }
    }
}

pub struct Checkin {
    s: std::rc::Rc<CheckinSettings>,
    status: CheckinStatus,
    /// Modules that failed verification: version → the manifest (offered again unchanged,
    /// it is not downloaded again).
    rejected: HashMap<String, Manifest>,
    /// The id of the last settings that were invalid (reported once, not every check-in).
    rejected_settings: Option<String>,
    /// The id of the last invalid token (reported once).
    rejected_token: Option<String>,
    client: Option<awc::Client>,
    downloader: Option<awc::Client>,
}

/// What one check-in did, for the actor's bookkeeping.
#[derive(Default)]
struct Outcome {
    error: Option<String>,
    rejected_module: Option<Manifest>,
    rejected_settings: Option<String>,
    rejected_token: Option<String>,
}

impl Checkin {
    pub fn new(s: CheckinSettings) -> Self {
        let status = CheckinStatus { url: s.config.url.clone(), ..CheckinStatus::default() };
        Self {
            s: std::rc::Rc::new(s),
            status,
            rejected: HashMap::new(),
            rejected_settings: None,
            rejected_token: None,
            client: None,
            downloader: None,
        }
    }

    fn next_delay(&self) -> Duration {
        crate::backoff::jittered(backoff(self.s.config.interval(), self.status.consecutive_failures))
    }

    fn clients(&mut self) -> Result<(awc::Client, awc::Client), String> {
        if self.client.is_none() {
            let tls = if self.s.config.url.starts_with("https://") {
                Some(crate::upload::tls::client_config(&self.s.config.ca_file)?)
            } else {
                None
            };
            self.client = Some(crate::resolver::http_client(REQUEST_TIMEOUT, tls.clone()));
            self.downloader = Some(crate::resolver::http_client(REQUEST_TIMEOUT, tls));
        }
        Ok((self.client.clone().unwrap(), self.downloader.clone().unwrap()))
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.status.last_attempt_at = Some(now_rfc3339());
        let clients = self.clients();
        let s = self.s.clone();
        let rejected = self.rejected.clone();
        let rejected_settings = self.rejected_settings.clone();
        let rejected_token = self.rejected_token.clone();
        let fut = async move {
            match clients {
                Ok((client, downloader)) => {
                    check_in(
                        &s,
                        &client,
                        &downloader,
                        &rejected,
                        rejected_settings.as_deref(),
                        rejected_token.as_deref(),
                    )
                    .await
                }
                Err(e) => Outcome { error: Some(e), ..Outcome::default() },
            }
        };
        ctx.spawn(fut.into_actor(self).map(|out, this, ctx| {
            if let Some(m) = out.rejected_module {
                this.rejected.insert(m.version.clone(), m);
            }
            if out.rejected_settings.is_some() {
                this.rejected_settings = out.rejected_settings;
            }
            if out.rejected_token.is_some() {
                this.rejected_token = out.rejected_token;
            }
            match out.error {
                None => {
                    this.status.consecutive_failures = 0;
                    this.status.last_error = None;
                    this.status.last_ok_at = this.status.last_attempt_at.clone();
                }
                Some(e) => {
                    this.status.consecutive_failures += 1;
                    this.status.last_error = Some(e);
                }
            }
            let delay = this.next_delay();
            if let Some(e) = &this.status.last_error {
                tracing::warn!(url = %this.s.config.url, error = %e, failures = this.status.consecutive_failures, retry_in_ms = delay.as_millis() as u64, "Check-in failed.");
            }
            this.s.supervisor.do_send(CheckinReport(this.status.clone()));
            ctx.run_later(delay, |this, ctx| this.tick(ctx));
        }));
    }
}

/// Starts the check-in actor on an Arbiter (thread) of its own.
pub fn start(settings: CheckinSettings) -> Addr<Checkin> {
    let arbiter = Arbiter::new();
    Checkin::start_in_arbiter(&arbiter.handle(), move |_| Checkin::new(settings))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Actor for Checkin {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(url = %self.s.config.url, interval_secs = self.s.config.interval_secs, "Check-ins enabled.");
        // The first one soon, but not in lockstep with a fleet that restarted together.
        let first = self.s.config.interval().min(Duration::from_secs(5)).mul_f64(rand::random::<f64>());
        ctx.run_later(first, |this, ctx| this.tick(ctx));
    }
}

fn request(s: &CheckinSettings, info: &CheckinInfo) -> Request {
    Request {
        agent_id: s.agent_id.clone(),
        host: s.host.clone(),
        version: s.version.clone(),
        module: RequestModule {
            version: info.module.version.clone(),
            builtin: info.module.builtin,
            state: info.module.state.to_string(),
            bad: info.module.bad.clone(),
        },
        collector: RequestCollector {
            state: info.state.as_str().to_string(),
            restarts: info.restarts,
            incarnation: info.incarnation,
        },
        last_change: info.last_change.clone(),
    }
}

/// The check-in exchange: POSTs `body` to `url` and reads the answer, all of it (sending,
/// the response headers and the body) within `limit`. A server that stalls at any point
/// makes a failed check-in, never a stuck one.
async fn exchange(
    client: &awc::Client,
    url: &str,
    token: Option<&str>,
    body: &Request,
    limit: Duration,
) -> Result<Response, String> {
    let mut req = client.post(url).insert_header(("Content-Type", "application/json"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let exchange = async {
        let mut resp = req.send_json(body).await.map_err(|e| format!("POST {url}: {e}"))?;
        let status = resp.status();
        let bytes =
            resp.body().limit(MAX_RESPONSE_BYTES).await.map_err(|e| format!("reading the answer: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim()
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Response::default());
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not a check-in response: {e}"))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("POST {url}: no complete answer within {} s", limit.as_secs_f64())))
}

/// One check-in: POST, then settings, token and module in that order.
async fn check_in(
    s: &CheckinSettings,
    client: &awc::Client,
    downloader: &awc::Client,
    rejected: &HashMap<String, Manifest>,
    rejected_settings: Option<&str>,
    rejected_token: Option<&str>,
) -> Outcome {
    let mut out = Outcome::default();
    let info = match s.supervisor.send(GetCheckinInfo).await {
        Ok(i) => i,
        Err(e) => {
            out.error = Some(format!("supervisor: {e}"));
            return out;
        }
    };
    let body = request(s, &info);
    let token = checkin_token(s);
    let resp = exchange(client, &s.config.url, token.as_deref(), &body, REQUEST_TIMEOUT).await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    tracing::debug!(
        settings = resp.settings.is_some(),
        token = resp.token.is_some(),
        module = resp.module.is_some(),
        "Checked in."
    );

    if let Some(settings) = &resp.settings {
        let id = short_id(&serde_json::to_vec(settings).unwrap_or_default());
        match settings_to_collectors(&s.base_collectors, settings) {
            Ok(c) => s.supervisor.do_send(ApplyCollectors { collectors: Box::new(c), id }),
            Err(e) => {
                if rejected_settings != Some(id.as_str()) {
                    tracing::error!(settings = %id, error = %e, "Check-in settings are invalid; not applied.");
                    s.supervisor.do_send(RecordChange(Change::new("settings", &id, "rejected", Some(e))));
                }
                out.rejected_settings = Some(id);
            }
        }
    }

    if let Some(token) = resp.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        let id = short_id(token.as_bytes());
        if let Err(e) = check_token(token) {
            if rejected_token != Some(id.as_str()) {
                tracing::error!(token = %id, error = %e, "The check-in's upload token is invalid; not stored.");
                s.supervisor.do_send(RecordChange(Change::new("token", &id, "rejected", Some(e))));
            }
            out.rejected_token = Some(id);
        } else if stored_token(&s.data_dir).as_deref() != Some(token) {
            match store_token(&s.data_dir, token) {
                Ok(()) => {
                    tracing::info!(token = %id, "New upload token stored; the sinks use it from now on.");
                    for sink in &s.sinks {
                        sink.do_send(TokenChanged);
                    }
                    s.supervisor.do_send(RecordChange(Change::new("token", &id, "applied", None)));
                }
                Err(e) => {
                    let e = format!("cannot store {}: {e}", s.data_dir.join(TOKEN_FILE).display());
                    tracing::error!(token = %id, error = %e, "New upload token not stored.");
                    s.supervisor.do_send(RecordChange(Change::new("token", &id, "rejected", Some(e))));
                }
            }
        }
    }

    if let Some(m) = resp.module {
        let wanted = m.version != info.module.version
            && !info.module.bad.contains(&m.version)
            && rejected.get(&m.version) != Some(&m);
        if wanted {
            s.supervisor.do_send(ModuleEvent::Verifying { version: m.version.clone() });
            tracing::info!(module = %m.version, "New collector module offered; downloading and verifying it.");
            match fetch_module(s, downloader, &m).await {
                Ok(path) => {
                    tracing::info!(module = %m.version, path = %path.display(), "Collector module verified and installed.");
                    s.supervisor.do_send(ModuleEvent::Installed(Installed {
                        version: m.version.clone(),
                        sha256: m.sha256.trim().to_ascii_lowercase(),
                    }));
                }
                Err(Failure::Refused(error)) => {
                    s.supervisor.do_send(ModuleEvent::Rejected { version: m.version.clone(), error });
                    out.rejected_module = Some(m);
                }
                Err(Failure::Retry(error)) => {
                    // Not the module's fault: a failed check-in (backoff), tried again at the
                    // next one; not a rejection.
                    out.error = Some(format!("module {}: {error}", m.version));
                    s.supervisor.do_send(ModuleEvent::DownloadFailed { version: m.version.clone(), error });
                }
            }
        }
    }
    out
}

/// The wait before the next check-in, before jitter: the interval, doubled per failure in
/// a row, at most max(interval, [`MAX_BACKOFF`]).
fn backoff(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    crate::backoff::exponential(interval * 2, interval.max(MAX_BACKOFF), failures)
}

/// Why a module was not installed.
enum Failure {
    /// The manifest or the file is wrong (verification, size, version): this manifest is
    /// not tried again.
    Refused(String),
    /// The download failed (network, HTTP status, local files): tried again next time.
    Retry(String),
}

/// Downloads, verifies and installs the module of `m`; its executable's path.
async fn fetch_module(s: &CheckinSettings, client: &awc::Client, m: &Manifest) -> Result<PathBuf, Failure> {
    module::check_version(&m.version).map_err(|e| Failure::Refused(e.to_string()))?;
    let url = module_url(&s.config.url, m).map_err(Failure::Refused)?;
    let mut dl = module::Download::create(&s.data_dir, &m.version)
        .map_err(|e| Failure::Retry(format!("cannot create the download file: {e}")))?;
    let fetched = tokio::time::timeout(DOWNLOAD_TIMEOUT, async {
        let mut resp =
            client.get(url.as_str()).send().await.map_err(|e| Failure::Retry(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(Failure::Retry(format!("GET {url}: HTTP {}", resp.status())));
        }
        let announced: Option<u64> =
            resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if announced.is_some_and(|n| n > MAX_MODULE_BYTES) {
            return Err(Failure::Refused(module::ModuleError::TooLarge.to_string()));
        }
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| Failure::Retry(format!("GET {url}: {e}")))?;
            dl.write(&chunk).map_err(|e| match e {
                module::ModuleError::Io(e) => Failure::Retry(e),
                e => Failure::Refused(e.to_string()),
            })?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| {
        Err(Failure::Retry(format!("GET {url}: not done within {} s", DOWNLOAD_TIMEOUT.as_secs())))
    });
    match fetched {
        Ok(()) => dl.install(m, &s.public_key).map_err(Failure::Refused),
        Err(e) => {
            dl.abandon();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_doubling_up_to_the_cap() {
        let i = Duration::from_secs(300);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), Duration::from_secs(600));
        assert_eq!(backoff(i, 2), Duration::from_secs(1200));
        assert_eq!(backoff(i, 3), MAX_BACKOFF);
        assert_eq!(backoff(i, u32::MAX), MAX_BACKOFF);
        // An interval above the cap is never shortened by a failure.
        let long = Duration::from_secs(7200);
        assert_eq!(backoff(long, 5), long);
    }

    #[test]
    fn settings_lay_over_the_config_and_are_checked() {
        let base = CollectorsConfig::default();
        let s =
            Settings { collectors: Some(serde_json::json!({"interval_secs": 2, "cpu": {"enabled": false}})) };
        let c = settings_to_collectors(&base, &s).unwrap();
        assert_eq!(c.interval_secs, 2.0);
        assert!(!c.cpu.enabled);
        assert_eq!(c.mem, base.mem, "keys left out keep the config file's values");

        let bad = Settings { collectors: Some(serde_json::json!({"cpu": {"bogus": 1}})) };
        assert!(settings_to_collectors(&base, &bad).unwrap_err().contains("bogus"));
        let bad = Settings { collectors: Some(serde_json::json!({"interval_secs": -1})) };
        assert!(settings_to_collectors(&base, &bad).unwrap_err().contains("interval_secs"));
    }

    #[test]
    fn module_urls_are_resolved_against_the_checkin_server() {
        let m = |url: &str| Manifest {
            version: "2".into(),
            url: url.into(),
            sha256: String::new(),
            signature: String::new(),
        };
        let base = "http://10.0.0.1:9780/v1/checkin";
        assert_eq!(module_url(base, &m("")).unwrap(), "http://10.0.0.1:9780/v1/modules/2");
        assert_eq!(module_url(base, &m("/m/x")).unwrap(), "http://10.0.0.1:9780/m/x");
        assert_eq!(module_url(base, &m("https://cdn/x")).unwrap(), "https://cdn/x");
        assert!(module_url(base, &m("x")).is_err());
    }

    /// A server that accepts a request, sends `head`, then stalls (holding the connection).
    fn stalling_server(head: &'static str) -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = c.write_all(head.as_bytes());
                held.push(c);
            }
        });
        format!("http://{addr}/v1/checkin")
    }

    fn a_request() -> Request {
        Request {
            agent_id: "a".into(),
            host: "h".into(),
            version: "0".into(),
            module: RequestModule { version: "0".into(), builtin: true, state: "active".into(), bad: vec![] },
            collector: RequestCollector { state: "running".into(), restarts: 0, incarnation: 1 },
            last_change: None,
        }
    }

    #[actix_rt::test]
    async fn a_server_that_stalls_in_the_body_fails_the_checkin_in_time() {
        let url = stalling_server("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"tok");
        let client = awc::Client::default();
        let t0 = std::time::Instant::now();
        let limit = Duration::from_millis(300);
        let r =
            tokio::time::timeout(Duration::from_secs(20), exchange(&client, &url, None, &a_request(), limit))
                .await
                .expect("the exchange must end by itself, within its limit");
        let e = r.unwrap_err();
        assert!(e.contains("within"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    /// The check-in answer (what a check-in server, or anyone in its place, sends) is read
    /// without panicking whatever it is, and what it decodes to is checked without panicking:
    /// 100,000 valid, damaged and random answers.
    #[test]
    fn property_the_checkin_answer_is_read_totally() {
        use rand::{rngs::StdRng, RngExt, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0xC4EC);
        let base = CollectorsConfig::default();
        let values = [
            serde_json::json!(1),
            serde_json::json!(-1e308),
            serde_json::json!("x"),
            serde_json::json!(null),
            serde_json::json!({"enabled": false}),
            serde_json::json!([1, 2]),
            serde_json::json!(true),
        ];
        let keys = ["interval_secs", "cpu", "dns", "load", "bogus", "names", "enabled"];
        for _ in 0..100_000u32 {
            let mut collectors = serde_json::Map::new();
            for _ in 0..rng.random_range(0..4) {
                let k = keys[rng.random_range(0..keys.len())];
                collectors.insert(k.into(), values[rng.random_range(0..values.len())].clone());
            }
            let answer = serde_json::json!({
                "settings": {"collectors": collectors},
                "token": "t0k3n",
                "module": {"version": "1.2.3", "url": "/m/1.2.3", "sha256": "ab", "signature": "cd"}
            });
            let bytes = crate::mutate::mutate(&mut rng, &serde_json::to_vec(&answer).unwrap());
            if let Ok(r) = serde_json::from_slice::<Response>(&bytes) {
                if let Some(s) = &r.settings {
                    let _ = settings_to_collectors(&base, s);
                }
                if let Some(m) = &r.module {
                    let _ = module_url("http://127.0.0.1:9/v1/checkin", m);
                    let _ = crate::supervisor::module::check_version(&m.version);
                }
            }
        }
    }
}
