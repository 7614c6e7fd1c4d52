//! Collector modules (CONTRACT §9): signed collector executables, their verification, where
//! they are installed, and which one runs. Plain code, testable without actix or processes;
//! the [`crate::supervisor::checkin`] actor downloads, the [`crate::supervisor::Supervisor`] switches.
//!
//! # Trust
//!
//! A module is described by a [`Manifest`] `{version, url, sha256, signature}`. The signature
//! is Ed25519 (ring) over the bytes of [`signed_message`]:
//!
//! ```text
//! vigil-module\nVERSION\nSHA256
//! ```
//!
//! (SHA256 in lowercase hex, no trailing newline), made with the private key whose public half
//! is `checkin.public_key_file`. Binding the version into the signed text means a validly
//! signed old file cannot be replayed under a new version (nor the reverse). A file is
//! downloaded to a non-executable temporary file directly in `DATA_DIR/modules/`, hashed while
//! it streams in, checked against the manifest's sha256 and signature ([`verify`]), and only
//! then made executable and renamed to `DATA_DIR/modules/VERSION/collector` ([`install`]; the
//! directory is made then, not before). Nothing unverified is
//! ever at a path the supervisor executes.
//!
//! # Key files
//!
//! * private key: one line, the PKCS#8 v2 document of the Ed25519 key pair in lowercase hex
//!   (mode 0600; `vigil keygen`);
//! * public key: one line, the 32 raw public key bytes in lowercase hex (64 digits).
//!
//! # Which module runs ([`Modules`], `DATA_DIR/modules/state.json`)
//!
//! `current` (none = the built-in collector, the `vigil` executable itself), `previous` (what
//! a rollback returns to) and `bad` (versions rolled back; never tried again). A switch starts
//! a probation: if the new module crashes `crash_loop_crashes` times within
//! `crash_loop_window_secs` of the switch, [`Modules::on_crash`] rolls back to `previous`.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// The largest module accepted (bytes); a download that grows past it is abandoned.
pub const MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;
/// The executable's name inside `DATA_DIR/modules/VERSION/`.
pub const EXECUTABLE: &str = "collector";
/// Tells a module the version it was verified and installed as (its Hello reports it).
pub const VERSION_ENV: &str = "VIGIL_MODULE_VERSION";

/// Why a module (or a key) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("invalid module version {0:?}: 1-64 characters of letters, digits, '.', '_', '+' and '-', not starting with '.', not ending with '.partial' or '.tmp', not 'state.json'")]
    BadVersion(String),
    #[error("sha256 mismatch: the manifest says {expected}, the file has {actual}")]
    Sha256Mismatch { expected: String, actual: String },
    #[error("the signature does not verify with the configured public key")]
    BadSignature,
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("the module is larger than {MAX_MODULE_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Io(String),
}

/// What a check-in server says about a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: String,
    /// Where to download it: absolute, or a path relative to the check-in URL's origin.
    #[serde(default)]
    pub url: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Ed25519 signature over [`signed_message`], hex.
    pub signature: String,
}

/// The exact bytes a module signature covers.
pub fn signed_message(version: &str, sha256_hex: &str) -> Vec<u8> {
    format!("vigil-module\n{version}\n{sha256_hex}").into_bytes()
}

/// Names in `DATA_DIR/modules/` that are not module versions.
pub const STATE_FILE: &str = "state.json";

/// A version is a directory name: refuse anything that could leave `DATA_DIR/modules/` or
/// take the name of a file of its own there (`state.json`, temporary `.*`, `*.partial` and
/// `*.tmp` files).
pub fn check_version(v: &str) -> Result<(), ModuleError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v != STATE_FILE
        && !v.ends_with(".partial")
        && !v.ends_with(".tmp")
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ModuleError::BadVersion(v.to_string()))
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The bytes of hex text (surrounding white space ignored); `what` names it in the error.
pub fn from_hex(s: &str, what: &'static str) -> Result<Vec<u8>, ModuleError> {
    hex::decode(s.trim()).map_err(|e| ModuleError::Malformed { what, why: e.to_string() })
}

/// SHA-256 computed while bytes stream through.
pub struct Hasher(ring::digest::Context);

impl Default for Hasher {
    fn default() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes)
    }
    pub fn finish_hex(self) -> String {
        to_hex(self.0.finish().as_ref())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Hasher::default();
    h.update(bytes);
    h.finish_hex()
}

/// An Ed25519 public key (32 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, ModuleError> {
        let bytes = from_hex(text, "public key")?;
        if bytes.len() != 32 {
            return Err(ModuleError::Malformed {
                what: "public key",
                why: format!("{} bytes, an Ed25519 public key has 32", bytes.len()),
            });
        }
        Ok(PublicKey(bytes))
    }

    pub fn read(path: &Path) -> Result<PublicKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PublicKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

/// Checks a manifest against the sha256 of the file actually received: version syntax, the
/// hash, then the signature over version and hash.
pub fn verify(m: &Manifest, actual_sha256: &str, key: &PublicKey) -> Result<(), ModuleError> {
    check_version(&m.version)?;
    let expected = m.sha256.trim().to_ascii_lowercase();
    if expected != actual_sha256 {
        return Err(ModuleError::Sha256Mismatch { expected, actual: actual_sha256.to_string() });
    }
    let sig = from_hex(&m.signature, "signature")?;
    UnparsedPublicKey::new(&ED25519, &key.0)
        .verify(&signed_message(&m.version, &expected), &sig)
        .map_err(|_| ModuleError::BadSignature)
}

/// A new key pair: (private key file text, public key file text).
pub fn generate_key() -> Result<(String, String), ModuleError> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| ModuleError::Malformed { what: "key", why: "cannot generate".into() })?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|e| ModuleError::Malformed { what: "key", why: e.to_string() })?;
    Ok((format!("{}\n", to_hex(doc.as_ref())), format!("{}\n", to_hex(pair.public_key().as_ref()))))
}

/// Signs the module `file` (its bytes) as `version`: the manifest to publish.
pub fn sign(
    private_key_text: &str,
    version: &str,
    file: &[u8],
    url: String,
) -> Result<Manifest, ModuleError> {
    check_version(version)?;
    let doc = from_hex(private_key_text, "private key")?;
    let pair = Ed25519KeyPair::from_pkcs8(&doc)
        .map_err(|e| ModuleError::Malformed { what: "private key", why: e.to_string() })?;
    let sha256 = sha256_hex(file);
    let signature = to_hex(pair.sign(&signed_message(version, &sha256)).as_ref());
    Ok(Manifest { version: version.to_string(), url, sha256, signature })
}

/// `DATA_DIR/modules`.
pub fn modules_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("modules")
}

/// Where version `v` is installed.
pub fn executable(data_dir: &Path, v: &str) -> PathBuf {
    modules_dir(data_dir).join(v).join(EXECUTABLE)
}

/// A file being downloaded: not executable (mode 0600), hashed as it is written. It is a
/// temporary file directly in `DATA_DIR/modules/`; nothing of the version is created before
/// the file is verified.
pub struct Download {
    file: std::fs::File,
    path: PathBuf,
    version: String,
    hasher: Hasher,
    len: u64,
}

impl Download {
    /// Starts `DATA_DIR/modules/.download-RANDOM.partial` for module `version`.
    pub fn create(data_dir: &Path, version: &str) -> std::io::Result<Download> {
        check_version(version).map_err(std::io::Error::other)?;
        let dir = modules_dir(data_dir);
        std::fs::create_dir_all(&dir)?;
        // Downloads run one at a time: any other one is left over from a crash.
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".download-") && name.ends_with(".partial") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let path = dir.join(format!(".download-{:016x}.partial", rand::random::<u64>()));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        Ok(Download { file, path, version: version.to_string(), hasher: Hasher::default(), len: 0 })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ModuleError> {
        self.len += chunk.len() as u64;
        if self.len > MAX_MODULE_BYTES {
            return Err(ModuleError::TooLarge);
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).map_err(|e| ModuleError::Io(format!("{}: {e}", self.path.display())))
    }

    /// Verifies what was written against `m`; on success the file becomes executable (0755)
    /// and is renamed to its final path, which is returned. On failure it is deleted.
    pub fn install(self, m: &Manifest, key: &PublicKey) -> Result<PathBuf, String> {
        let Download { file, path, version, hasher, .. } = self;
        let result = (|| {
            if m.version != version {
                return Err(format!("downloaded as version {version:?}, the manifest says {:?}", m.version));
            }
            verify(m, &hasher.finish_hex(), key).map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            drop(file);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            // Verified: only now does the version get its directory.
            let modules = path.parent().unwrap_or(Path::new("."));
            let dir = modules.join(&version);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let dest = dir.join(EXECUTABLE);
            std::fs::rename(&path, &dest).map_err(|e| e.to_string())?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(dest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// Gives up: the partial file is removed.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An installed module: its version and the sha256 it was verified with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub version: String,
    pub sha256: String,
}

/// `DATA_DIR/modules/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateFile {
    /// None: the built-in collector.
    pub current: Option<Installed>,
    pub previous: Option<Installed>,
    pub bad: BTreeSet<String>,
}

/// `collector.module` in `/status`: what runs, and the last module event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModuleStatus {
    /// The module the collector runs (the vigil version for the built-in one).
    pub version: String,
    pub builtin: bool,
    /// `active`, `verifying` (a new one is being downloaded and checked), `rejected` (a new
    /// one failed verification and was not run) or `rolled_back` (a new one crash-looped).
    pub state: &'static str,
    /// The version `verifying`, `rejected` or `rolled_back` is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The version the running collector's Hello reported.
    pub reported_version: Option<String>,
    pub previous: Option<String>,
    pub bad: Vec<String>,
}

impl ModuleStatus {
    /// The built-in collector of vigil `version`, with nothing else to report.
    pub fn builtin(version: &str) -> ModuleStatus {
        ModuleStatus {
            version: version.to_string(),
            builtin: true,
            state: "active",
            candidate: None,
            error: None,
            reported_version: None,
            previous: None,
            bad: Vec::new(),
        }
    }
}

/// What happened to the last change a check-in brought (reported at the next check-in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `settings`, `token` or `module`.
    pub kind: String,
    /// Settings: a hash of them; token: a hash prefix (never the token); module: its version.
    pub id: String,
    /// `applied`, `rejected` or `rolled_back`.
    pub outcome: String,
    pub error: Option<String>,
    /// RFC 3339.
    pub at: String,
}

impl Change {
    pub fn new(kind: &str, id: &str, outcome: &str, error: Option<String>) -> Change {
        Change {
            kind: kind.into(),
            id: id.into(),
            outcome: outcome.into(),
            error,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// A rollback decided by [`Modules::on_crash`].
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub bad: String,
    /// None: back to the built-in collector.
    pub to: Option<String>,
    pub crashes: u32,
}

/// Writes `state.json` atomically (temporary file, fsync, rename, directory fsync).
fn save_state(dir: &Path, bytes: &[u8]) {
    if let Err(e) = crate::supervisor::disk::write_atomically(&dir.join(STATE_FILE), bytes) {
        tracing::error!(dir = %dir.display(), error = %e, "Cannot save the module state; it will not survive a restart.");
    }
}

/// Which module runs, the probation of a new one, and the status shown for it.
#[derive(Debug)]
pub struct Modules {
    data_dir: PathBuf,
    builtin_version: String,
    state: StateFile,
    /// Set by a switch: when, and the crashes counted since.
    probation: Option<(Instant, u32)>,
    status_state: &'static str,
    candidate: Option<String>,
    error: Option<String>,
    reported: Option<String>,
    /// Where `state.json` is written (off the supervision thread); synchronous without one.
    disk: Option<crate::supervisor::disk::Disk>,
}

impl Modules {
    /// Writes the state on `disk`'s thread from now on.
    pub fn with_disk(mut self, disk: crate::supervisor::disk::Disk) -> Self {
        self.disk = Some(disk);
        self
    }

    /// Loads `state.json` (a missing or unreadable one means the built-in collector). An
    /// installed current module whose file no longer has its verified sha256 is not run:
    /// the previous one (or the built-in collector) is used instead.
    pub fn load(data_dir: &Path, builtin_version: &str) -> Modules {
        let path = modules_dir(data_dir).join(STATE_FILE);
        let state: StateFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(file = %path.display(), error = %e, "Unreadable module state; running the built-in collector.");
                StateFile::default()
            }),
            Err(_) => StateFile::default(),
        };
        let mut m = Modules {
            data_dir: data_dir.to_path_buf(),
            builtin_version: builtin_version.to_string(),
            state,
            probation: None,
            status_state: "active",
            candidate: None,
            error: None,
            reported: None,
            disk: None,
        };
        for _ in 0..2 {
            let Some(cur) = m.state.current.clone() else { break };
            let ok = check_version(&cur.version).is_ok()
                && std::fs::read(executable(data_dir, &cur.version))
                    .is_ok_and(|b| sha256_hex(&b) == cur.sha256);
            if ok {
                break;
            }
            tracing::error!(module = %cur.version, "The installed module is missing or changed since it was verified; not running it.");
            m.state.current = m.state.previous.take();
            m.status_state = "rejected";
            m.candidate = Some(cur.version.clone());
            m.error = Some("installed file missing or changed since verification".into());
        }
        m
    }

    /// Saves the state (on the disk thread when there is one; in order either way).
    fn save(&self) {
        let dir = modules_dir(&self.data_dir);
        let bytes = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        match &self.disk {
            Some(d) => d.run_job(move || save_state(&dir, &bytes)),
            None => save_state(&dir, &bytes),
        }
    }

    /// The version of the module that runs.
    pub fn current_version(&self) -> &str {
        self.state.current.as_ref().map_or(&self.builtin_version, |c| &c.version)
    }

    pub fn is_bad(&self, v: &str) -> bool {
        self.state.bad.contains(v)
    }

    /// The executable of the current module (None: the built-in collector) and the
    /// environment it gets.
    pub fn program(&self) -> Option<(PathBuf, (String, String))> {
        self.state
            .current
            .as_ref()
            .map(|c| (executable(&self.data_dir, &c.version), (VERSION_ENV.to_string(), c.version.clone())))
    }

    /// A check-in offered `version`; it is being downloaded and verified.
    pub fn verifying(&mut self, version: &str) {
        self.status_state = "verifying";
        self.candidate = Some(version.to_string());
        self.error = None;
    }

    /// Downloading `version` failed (not the module's fault): the current module stays
    /// `active`; `candidate` and `error` tell what failed until the next attempt.
    pub fn download_failed(&mut self, version: &str, why: &str) {
        self.status_state = "active";
        self.candidate = Some(version.to_string());
        self.error = Some(format!("download failed (retried at the next check-in): {why}"));
    }

    /// `version` failed verification; it was not run.
    pub fn rejected(&mut self, version: &str, why: &str) {
        self.status_state = "rejected";
        self.candidate = Some(version.to_string());
        self.error = Some(why.to_string());
    }

    /// Makes the verified, installed `m` current; starts its probation.
    pub fn switch(&mut self, m: Installed, now: Instant) {
        self.state.previous = self.state.current.take();
        self.state.current = Some(m);
        self.save();
        self.probation = Some((now, 0));
        self.status_state = "active";
        self.candidate = None;
        self.error = None;
        self.reported = None;
    }

    /// The running collector said Hello with `version`; true the first time after a switch.
    pub fn on_hello(&mut self, version: &str) -> bool {
        let first = self.reported.is_none();
        self.reported = Some(version.to_string());
        first && self.probation.is_some()
    }

    /// A crash of the collector at `now`: a module on probation that crashed
    /// `loop_crashes` times within `window` of its switch is rolled back (made not current,
    /// marked bad, the state saved).
    pub fn on_crash(&mut self, now: Instant, loop_crashes: u32, window: Duration) -> Option<Rollback> {
        let (since, crashes) = self.probation.as_mut()?;
        if now.duration_since(*since) > window {
            self.probation = None;
            return None;
        }
        *crashes += 1;
        if *crashes < loop_crashes.max(1) {
            return None;
        }
        let crashes = *crashes;
        self.probation = None;
        let bad = self.state.current.take()?;
        self.state.bad.insert(bad.version.clone());
        self.state.current = self.state.previous.take();
        self.save();
        self.status_state = "rolled_back";
        self.candidate = Some(bad.version.clone());
        self.error = Some(format!("crashed {crashes} times within crash_loop_window_secs of the switch"));
        self.reported = None;
        Some(Rollback {
            bad: bad.version,
            to: self.state.current.as_ref().map(|c| c.version.clone()),
            crashes,
        })
    }

    pub fn status(&self) -> ModuleStatus {
        ModuleStatus {
            version: self.current_version().to_string(),
            builtin: self.state.current.is_none(),
            state: self.status_state,
            candidate: self.candidate.clone(),
            error: self.error.clone(),
            reported_version: self.reported.clone(),
            previous: self.state.previous.as_ref().map(|p| p.version.clone()),
            bad: self.state.bad.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (String, PublicKey) {
        let (private, public) = generate_key().unwrap();
        (private, PublicKey::parse(&public).unwrap())
    }

    #[test]
    fn a_good_manifest_verifies() {
        let (k, pk) = keys();
        let m = sign(&k, "1.2.3", b"#!/bin/sh\n", "/v1/modules/1.2.3".into()).unwrap();
        assert_eq!(m.sha256, sha256_hex(b"#!/bin/sh\n"));
        assert_eq!(verify(&m, &sha256_hex(b"#!/bin/sh\n"), &pk), Ok(()));
    }

    #[test]
    fn a_file_that_does_not_match_the_sha256_is_refused() {
        let (k, pk) = keys();
        let m = sign(&k, "1.2.3", b"good", String::new()).unwrap();
        let e = verify(&m, &sha256_hex(b"evil"), &pk).unwrap_err();
        assert!(matches!(e, ModuleError::Sha256Mismatch { .. }), "{e}");
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let (k, pk) = keys();
        let mut m = sign(&k, "1.2.3", b"good", String::new()).unwrap();
        let mut sig = from_hex(&m.signature, "signature").unwrap();
        sig[10] ^= 1;
        m.signature = to_hex(&sig);
        assert_eq!(verify(&m, &sha256_hex(b"good"), &pk), Err(ModuleError::BadSignature));
        m.signature = "zz".into();
        assert!(matches!(verify(&m, &sha256_hex(b"good"), &pk), Err(ModuleError::Malformed { .. })));
    }

    #[test]
    fn a_signature_made_for_another_version_is_refused() {
        let (k, pk) = keys();
        let mut m = sign(&k, "1.0.0", b"old", String::new()).unwrap();
        m.version = "9.9.9".into();
        assert_eq!(verify(&m, &sha256_hex(b"old"), &pk), Err(ModuleError::BadSignature));
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let (k, _) = keys();
        let (_, other) = keys();
        let m = sign(&k, "1.2.3", b"good", String::new()).unwrap();
        assert_eq!(verify(&m, &sha256_hex(b"good"), &other), Err(ModuleError::BadSignature));
    }

    #[test]
    fn the_signed_text_is_exact() {
        assert_eq!(signed_message("2.0", "ab12"), b"vigil-module\n2.0\nab12");
    }

    #[test]
    fn versions_cannot_leave_the_modules_dir() {
        for v in
            ["", "..", "../x", "a/b", ".hidden", "a b", &"x".repeat(65), "state.json", "1.partial", "1.tmp"]
        {
            assert!(check_version(v).is_err(), "{v:?}");
        }
        for v in ["1", "1.2.3-rc.1+build_7"] {
            assert!(check_version(v).is_ok(), "{v:?}");
        }
    }

    #[test]
    fn keys_parse_back_and_bad_ones_are_named() {
        let (_, public) = generate_key().unwrap();
        assert_eq!(PublicKey::parse(&public).unwrap().to_hex(), public.trim());
        assert!(PublicKey::parse("abcd").unwrap_err().to_string().contains("32"));
    }

    #[test]
    fn install_makes_only_verified_files_executable() {
        let dir = tempfile::tempdir().unwrap();
        let (k, pk) = keys();
        let m = sign(&k, "2", b"module", String::new()).unwrap();
        let mut d = Download::create(dir.path(), "2").unwrap();
        d.write(b"tampered").unwrap();
        assert!(d.install(&m, &pk).is_err());
        assert!(!executable(dir.path(), "2").exists());
        assert!(!dir.path().join("modules/2").exists(), "no directory for an unverified version");
        assert_eq!(std::fs::read_dir(dir.path().join("modules")).unwrap().count(), 0, "partial removed");
        let d = Download::create(dir.path(), "2").unwrap();
        d.abandon();
        assert_eq!(std::fs::read_dir(dir.path().join("modules")).unwrap().count(), 0, "partial removed");

        let mut d = Download::create(dir.path(), "2").unwrap();
        d.write(b"module").unwrap();
        let path = d.install(&m, &pk).unwrap();
        assert_eq!(path, executable(dir.path(), "2"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_crash_loop_after_a_switch_rolls_back_and_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Modules::load(dir.path(), "0.1.0");
        assert_eq!(m.current_version(), "0.1.0");
        let t = Instant::now();
        m.switch(Installed { version: "2".into(), sha256: "x".into() }, t);
        assert_eq!(m.current_version(), "2");
        let w = Duration::from_secs(10);
        assert_eq!(m.on_crash(t + Duration::from_secs(1), 3, w), None);
        assert_eq!(m.on_crash(t + Duration::from_secs(2), 3, w), None);
        let rb = m.on_crash(t + Duration::from_secs(3), 3, w).unwrap();
        assert_eq!(rb, Rollback { bad: "2".into(), to: None, crashes: 3 });
        assert_eq!(m.current_version(), "0.1.0");
        assert_eq!(m.status().state, "rolled_back");
        assert!(m.is_bad("2"));
        let again = Modules::load(dir.path(), "0.1.0");
        assert!(again.is_bad("2"));
        assert!(again.program().is_none());
    }

    #[test]
    fn a_rollback_returns_to_the_previous_module() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Modules::load(dir.path(), "0.1.0");
        let t = Instant::now();
        m.switch(Installed { version: "2".into(), sha256: "a".into() }, t);
        m.switch(Installed { version: "3".into(), sha256: "b".into() }, t);
        assert_eq!(m.status().previous.as_deref(), Some("2"));
        let rb = m.on_crash(t, 1, Duration::from_secs(10)).unwrap();
        assert_eq!(rb.to.as_deref(), Some("2"));
        assert_eq!(m.current_version(), "2");
        assert_eq!(m.program().unwrap().0, executable(dir.path(), "2"));
        assert_eq!(m.status().bad, ["3"]);
    }

    #[test]
    fn crashes_after_the_window_do_not_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Modules::load(dir.path(), "0.1.0");
        let t = Instant::now();
        m.switch(Installed { version: "2".into(), sha256: "x".into() }, t);
        assert_eq!(m.on_crash(t + Duration::from_secs(11), 1, Duration::from_secs(10)), None);
        assert_eq!(m.on_crash(t + Duration::from_secs(12), 1, Duration::from_secs(10)), None);
        assert_eq!(m.current_version(), "2");
    }

    #[test]
    fn a_changed_installed_file_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Modules::load(dir.path(), "0.1.0");
        std::fs::create_dir_all(dir.path().join("modules/2")).unwrap();
        std::fs::write(executable(dir.path(), "2"), b"good").unwrap();
        m.switch(Installed { version: "2".into(), sha256: sha256_hex(b"good") }, Instant::now());
        assert_eq!(Modules::load(dir.path(), "0.1.0").current_version(), "2");
        std::fs::write(executable(dir.path(), "2"), b"evil").unwrap();
        let m = Modules::load(dir.path(), "0.1.0");
        assert_eq!(m.current_version(), "0.1.0");
        assert_eq!(m.status().state, "rejected");
    }

    /// A module manifest from a check-in is checked without panicking whatever its fields
    /// hold, and only a correct signature over the right version and hash passes: 100,000
    /// valid, damaged and random manifests.
    #[test]
    fn property_manifest_verification_is_total_and_strict() {
        use rand::{rngs::StdRng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0x3A41F);
        let (private, public) = generate_key().unwrap();
        let key = PublicKey::parse(&public).unwrap();
        let file = b"#!/bin/sh\nexit 0\n";
        let good = sign(&private, "1.2.3", file, "/m".into()).unwrap();
        let sha = sha256_hex(file);
        assert!(verify(&good, &sha, &key).is_ok());
        let json = serde_json::to_vec(&good).unwrap();
        for _ in 0..100_000u32 {
            let bytes = crate::mutate::mutate(&mut rng, &json);
            let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else { continue };
            let ok = verify(&m, &sha, &key).is_ok();
            if ok {
                assert_eq!(m.version, good.version, "a signature passed for another version");
                assert_eq!(
                    m.signature.trim().to_ascii_lowercase(),
                    good.signature,
                    "another signature passed"
                );
            }
            let _ = check_version(&m.version);
            let _ = from_hex(&m.signature, "signature");
            let _ = PublicKey::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
