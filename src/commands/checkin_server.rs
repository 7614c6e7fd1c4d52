//! `vigil receive --checkin-dir DIR`: the server side of check-ins (docs/checkins.md), served
//! from files so an operator (or a test) changes what agents get by editing DIR:
//!
//! | file | served as |
//! |---|---|
//! | `settings.json` | `settings` of every answer (`{"collectors": {...}}`) |
//! | `token` | `token` of every answer (trimmed) |
//! | `module.json` | `module`: a manifest made by `vigil sign-module` |
//! | `modules/VERSION` | `GET /v1/modules/VERSION` (the module file) |
//!
//! Files are read at every request. Every check-in request received is appended, as one JSON
//! line, to `DIR/checkins.jsonl`. With `--token-file`, a check-in needs `Authorization: Bearer`
//! with that token or the current `DIR/token` (401 otherwise: the token is never handed to
//! anyone who does not hold one).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

/// The check-in directory, and a lock so request lines never interleave.
pub struct CheckinDir {
    dir: PathBuf,
    log: Mutex<()>,
}

impl CheckinDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, log: Mutex::new(()) }
    }
}

/// Adds `POST /v1/checkin` and `GET /v1/modules/{version}`.
pub fn routes(cfg: &mut web::ServiceConfig, dir: web::Data<CheckinDir>) {
    cfg.app_data(dir)
        .app_data(web::PayloadConfig::new(1024 * 1024))
        .route("/v1/checkin", web::post().to(checkin))
        .route("/v1/modules/{version}", web::get().to(module_file));
}

fn read_optional(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn json_file(path: &Path) -> Result<Option<Value>, String> {
    read_optional(path)?
        .map(|t| serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display())))
        .transpose()
}

/// The answer built from the files of the directory.
fn answer(dir: &Path) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    if let Some(s) = json_file(&dir.join("settings.json"))? {
        out.insert("settings".into(), s);
    }
    if let Some(t) =
        read_optional(&dir.join("token"))?.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
    {
        out.insert("token".into(), Value::String(t));
    }
    if let Some(m) = json_file(&dir.join("module.json"))? {
        out.insert("module".into(), m);
    }
    Ok(Value::Object(out))
}

async fn checkin(
    req: actix_web::HttpRequest,
    body: web::Bytes,
    dir: web::Data<CheckinDir>,
    token: web::Data<crate::auth::Token>,
) -> HttpResponse {
    if !token.allows(&req) {
        tracing::warn!(peer = ?req.peer_addr(), "Check-in without the right bearer token refused.");
        return HttpResponse::Unauthorized().finish();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return HttpResponse::BadRequest().json(json!({ "error": format!("not JSON: {e}") })),
    };
    let line = json!({
        "received_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "request": request,
    });
    let logged = {
        let _guard = dir.log.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.dir.join("checkins.jsonl"))
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
    };
    if let Err(e) = logged {
        tracing::error!(error = %e, "Cannot record a check-in.");
    }
    tracing::info!(
        agent = request["agent_id"].as_str().unwrap_or(""),
        module = request["module"]["version"].as_str().unwrap_or(""),
        "Check-in."
    );
    match answer(&dir.dir) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => {
            tracing::error!(error = %e, "Cannot build the check-in answer.");
            HttpResponse::InternalServerError().json(json!({ "error": e }))
        }
    }
}

async fn module_file(version: web::Path<String>, dir: web::Data<CheckinDir>) -> HttpResponse {
    if vigil_actors::supervisor::module::check_version(&version).is_err() {
        return HttpResponse::BadRequest().finish();
    }
    match std::fs::read(dir.dir.join("modules").join(version.as_str())) {
        Ok(bytes) => HttpResponse::Ok().content_type("application/octet-stream").body(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HttpResponse::NotFound().finish(),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}
