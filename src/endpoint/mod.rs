//! The supervisor's local HTTP endpoint (CONTRACT §5): `/status`, `/healthz`, `/metrics`
//! (rendered by [`crate::endpoint::metrics`]), and the crash reports: `/crashes`, `/crashes/{id}` and
//! `/crashes/{id}/stderr` (read by [`crate::commands::crashes`]).
//!
//! It runs on actix-web worker threads (more than one, so one slow request cannot hold up
//! the others) and never sends the Supervisor or a sink a message: it reads what they
//! publish ([`StatusFeed`], [`SinkHandle::status`]), so no client, however many or however
//! slow, can delay supervision, and no answer waits on the supervision thread.

pub mod metrics;
pub mod page;

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use actix_web::{http::header, web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;
use vigil_actors::config::ListenAddr;
use vigil_actors::supervisor::{StatusFeed, StatusSnapshot};
use vigil_actors::upload::SinkHandle;

/// Worker threads of the endpoint.
pub const WORKERS: usize = 2;

/// `/status` `config` (CONTRACT §2): where the configuration in force came from, when it
/// was loaded, and why the last reload was refused (null when it was not).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigInfo {
    pub source: String,
    pub loaded_at: String,
    pub reload_error: Option<String>,
}

/// What a configuration reload changes under a running endpoint: the sinks, the stale
/// window of `/metrics`, and [`ConfigInfo`]. Locked only to copy out or swap in.
pub struct Live {
    pub sinks: std::sync::RwLock<Vec<SinkHandle>>,
    pub config: std::sync::RwLock<ConfigInfo>,
    /// `/metrics` leaves out series whose latest value is older than this (ms).
    pub stale_after_ms: std::sync::atomic::AtomicU64,
}

impl Live {
    pub fn new(sinks: Vec<SinkHandle>, config: ConfigInfo, stale_after: std::time::Duration) -> Live {
        Live {
            sinks: std::sync::RwLock::new(sinks),
            config: std::sync::RwLock::new(config),
            stale_after_ms: (stale_after.as_millis() as u64).into(),
        }
    }

    pub fn stale_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.stale_after_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn set_stale_after(&self, d: std::time::Duration) {
        self.stale_after_ms.store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn sinks(&self) -> Vec<SinkHandle> {
        self.sinks.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn config(&self) -> ConfigInfo {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_sinks(&self, sinks: Vec<SinkHandle>) {
        *self.sinks.write().unwrap_or_else(|p| p.into_inner()) = sinks;
    }

    pub fn set_config(&self, info: ConfigInfo) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = info;
    }
}

struct AppState {
    /// What the Supervisor publishes.
    feed: StatusFeed,
    /// The upload sinks (their `/status` `uploads` entries) and the config's origin.
    live: std::sync::Arc<Live>,
    /// Bearer token every request must carry, when configured.
    token: Option<String>,
    /// `DATA_DIR/crashes`, served by `/crashes`; also shown in `/status` as `crash_dir`.
    crash_dir: PathBuf,
}

/// Binds the listener and starts serving; returns the server handle (to stop it) and a
/// description of where it listens. `Ok(None)` when disabled.
pub fn start(
    listen: &ListenAddr,
    token: Option<String>,
    crash_dir: PathBuf,
    feed: StatusFeed,
    live: std::sync::Arc<Live>,
) -> anyhow::Result<Option<(actix_web::dev::ServerHandle, String)>> {
    let state = web::Data::new(AppState { feed, live, token, crash_dir });
    let server = HttpServer::new(move || {
        // Runs once on each worker thread, as it starts.
        lower_priority();
        App::new()
            .app_data(state.clone())
            .route("/", web::get().to(index))
            .route("/status", web::get().to(status))
            .route("/healthz", web::get().to(healthz))
            .route("/metrics", web::get().to(metrics))
            .route("/crashes", web::get().to(crashes))
            .route("/crashes/{id}", web::get().to(crash))
            .route("/crashes/{id}/stderr", web::get().to(crash_stderr))
            .default_service(web::to(not_found))
    })
    .workers(WORKERS)
    .disable_signals()
    .shutdown_timeout(1);
    let (server, addr) = match listen {
        ListenAddr::Disabled => return Ok(None),
        ListenAddr::Tcp(a) => {
            let s = server.bind(a).with_context(|| format!("cannot listen on {a} (status.listen)"))?;
            let bound = s.addrs().first().map(|a| a.to_string()).unwrap_or_else(|| a.to_string());
            (s, bound)
        }
        ListenAddr::Unix(path) => {
            // Remove a stale socket from an earlier run, but never anything else.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                anyhow::ensure!(
                    meta.file_type().is_socket(),
                    "status.listen unix:{} exists and is not a socket; refusing to replace it",
                    path.display()
                );
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
            let listener = bind_private_socket(path)
                .with_context(|| format!("cannot listen on unix:{} (status.listen)", path.display()))?;
            let s = server
                .listen_uds(listener)
                .with_context(|| format!("cannot listen on unix:{} (status.listen)", path.display()))?;
            (s, format!("unix:{}", path.display()))
        }
    };
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "Status endpoint stopped with an error.");
        }
    });
    Ok(Some((handle, addr)))
}

/// Binds a unix socket at `path` that no other user can reach, not even for an instant: it is
/// bound inside a fresh directory of mode 0700 next to `path`, set to 0600, and only then
/// renamed into place (umask would be process-wide and race other threads).
fn bind_private_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let private = parent.join(format!(".vigil-bind-{}-{:08x}", std::process::id(), rand_u32()));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let result = (|| {
        let tmp = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(7)
}

/// Niceness of the endpoint's worker threads: under a flood of local clients the CPU goes to
/// the supervision thread (heartbeats, restarts) first, and to answering clients second.
pub const WORKER_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`WORKER_NICE`] (on Linux, niceness is per
/// thread). A failure only costs the preference, so it is logged and ignored.
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; `who` is this thread's id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, WORKER_NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "Cannot lower the status endpoint worker's priority.");
    }
}

/// Constant-time comparison of the presented bearer token.
fn authorized(req: &HttpRequest, state: &AppState) -> bool {
    let Some(want) = &state.token else { return true };
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    crate::auth::token_matches(got, want)
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .json(serde_json::json!({ "error": "missing or wrong bearer token" }))
}

/// The Supervisor's last published status (`None` only before its first publication).
fn snapshot(state: &AppState) -> Option<StatusSnapshot> {
    state.feed.status()
}

/// The answer before the Supervisor's first publication.
fn starting() -> HttpResponse {
    HttpResponse::ServiceUnavailable().content_type("text/plain").body("supervisor starting\n")
}

async fn status(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized();
    }
    let Some(mut snap) = snapshot(&state) else { return starting() };
    for sink in &state.live.sinks() {
        snap.uploads.push(serde_json::to_value(sink.status()).unwrap_or_default());
    }
    let mut body = serde_json::to_value(snap).unwrap_or_default();
    body["crash_dir"] = serde_json::Value::from(state.crash_dir.to_string_lossy());
    body["config"] = serde_json::to_value(state.live.config()).unwrap_or_default();
    HttpResponse::Ok().json(body)
}

/// `/`: the status page ([`page`]).
async fn index(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized();
    }
    let Some(snap) = snapshot(&state) else { return starting() };
    let sinks: Vec<_> = state.live.sinks().iter().map(SinkHandle::status).collect();
    let deaths = state.feed.deaths();
    // The newest report, read on the blocking pool and waited for a bounded time: a frozen or
    // slow disk costs the page that section, never the answer.
    let dir = state.crash_dir.clone();
    let read = tokio::time::timeout(page::DISK_WITHIN, web::block(move || newest_report(&dir))).await;
    let (latest, disk_error) = match read {
        Ok(Ok(latest)) => (latest, None),
        Ok(Err(e)) => (None, Some(format!("cannot read the crash reports: {e}"))),
        Err(_) => (
            None,
            Some(format!(
                "the crash directory did not answer within {} ms (a frozen or slow disk)",
                page::DISK_WITHIN.as_millis()
            )),
        ),
    };
    let body = page::render(&page::Page {
        status: &snap,
        sinks: &sinks,
        deaths: &deaths,
        latest: latest.as_ref(),
        disk_error: disk_error.as_deref(),
        now_ms: chrono::Utc::now().timestamp_millis(),
    });
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, page::CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// The newest crash report in `dir` with its stderr tail; `None` when there is none.
fn newest_report(dir: &Path) -> Option<page::LatestCrash> {
    let id = vigil_actors::supervisor::crash_report::list_ids(dir).ok()?.pop()?;
    match crate::reports::show(dir, &id) {
        Ok(shown) => Some(page::LatestCrash { report: shown.entry.typed(), id, stderr: shown.stderr }),
        Err(_) => Some(page::LatestCrash { id, report: None, stderr: Vec::new() }),
    }
}

async fn healthz(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized();
    }
    match snapshot(&state).map(|s| s.health()) {
        Some(Ok(())) => HttpResponse::Ok().content_type("text/plain").body("ok\n"),
        Some(Err(why)) => {
            HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("{why}\n"))
        }
        None => starting(),
    }
}

async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized();
    }
    let Some(status) = snapshot(&state) else { return starting() };
    let latest = state.feed.latest();
    let sinks: Vec<_> = state.live.sinks().iter().map(SinkHandle::status).collect();
    let body = metrics::render(&metrics::Scrape {
        status: &status,
        sinks: &sinks,
        latest: &latest,
        now_ms: chrono::Utc::now().timestamp_millis(),
        stale_after: state.live.stale_after(),
        log_lines_dropped: crate::logging::lines_dropped(),
    });
    HttpResponse::Ok().content_type(metrics::CONTENT_TYPE).body(body)
}

/// `/crashes`: every report, newest first, as `crate::reports::Entry::to_json`.
async fn crashes(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized();
    }
    let dir = state.crash_dir.clone();
    match web::block(move || crate::reports::list(&dir)).await {
        Ok(Ok(entries)) => {
            HttpResponse::Ok().json(entries.iter().map(crate::reports::Entry::to_json).collect::<Vec<_>>())
        }
        Ok(Err(e)) => HttpResponse::InternalServerError().json(serde_json::json!({ "error": e.to_string() })),
        Err(e) => HttpResponse::InternalServerError().json(serde_json::json!({ "error": e.to_string() })),
    }
}

/// Reads one report off the worker thread; the error answer when that fails.
async fn load_report(state: &AppState, id: String) -> Result<crate::reports::Shown, HttpResponse> {
    use crate::reports::ShowError;
    let dir = state.crash_dir.clone();
    let shown = web::block({
        let id = id.clone();
        move || crate::reports::show(&dir, &id)
    })
    .await
    .map_err(|e| HttpResponse::InternalServerError().json(serde_json::json!({ "error": e.to_string() })))?;
    shown.map_err(|e| match e {
        ShowError::InvalidId => HttpResponse::BadRequest()
            .json(serde_json::json!({ "error": "not a crash report ID (letters, digits, '-' and '.')" })),
        ShowError::NotFound => {
            HttpResponse::NotFound().json(serde_json::json!({ "error": format!("no crash report `{id}`") }))
        }
        ShowError::Unreadable(why) => {
            HttpResponse::InternalServerError().json(serde_json::json!({ "error": why }))
        }
    })
}

/// `/crashes/{id}`: the report with its stderr tail as text.
async fn crash(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized();
    }
    match load_report(&state, id.into_inner()).await {
        Ok(shown) => HttpResponse::Ok().json(shown.to_json()),
        Err(answer) => answer,
    }
}

/// `/crashes/{id}/stderr`: the stderr tail, byte for byte.
async fn crash_stderr(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized();
    }
    match load_report(&state, id.into_inner()).await {
        Ok(shown) => HttpResponse::Ok().content_type("application/octet-stream").body(shown.stderr),
        Err(answer) => answer,
    }
}

async fn not_found(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return unauthorized();
    }
    HttpResponse::NotFound().json(serde_json::json!({ "error": format!("no such endpoint: {}", req.path()) }))
}
