//! Drives the real `vigil` binary: starts `vigil run` with a config in a temp dir, reads its
//! log and its status endpoint, sends it real signals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test: `$VIGIL_BIN` when set (e.g. the static build of
/// scripts/build-static), else the one cargo built for these tests.
pub fn vigil() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("VIGIL_BIN") {
        Ok(p) if !p.is_empty() => p,
        _ => env!("CARGO_BIN_EXE_vigil").to_string(),
    })
}

/// Fast supervision settings for tests; `overrides` are `key = value` lines for
/// `[supervisor]` that replace (or add to) the fast defaults.
pub fn fast_config(overrides: &str) -> String {
    let mut keys: Vec<(String, String)> = [
        ("heartbeat_interval_secs", "0.5"),
        ("heartbeat_timeout_secs", "2"),
        ("restart_initial_delay_ms", "100"),
        ("restart_max_delay_secs", "2"),
        ("stop_grace_secs", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in overrides.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line.split_once('=').expect("key = value");
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        match keys.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => keys.push((k, v)),
        }
    }
    let body: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    format!("[supervisor]\n{body}\n[status]\nlisten = \"127.0.0.1:0\"\n")
}

pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub addr: String,
    /// `--data-dir` (`dir/data` unless started with [`Agent::start_at`]).
    pub data: PathBuf,
}

impl Agent {
    /// Starts `vigil run` with `config` and extra environment; waits for the status endpoint.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Agent {
        Agent::start_in(tempfile::tempdir().expect("temp dir"), config, env)
    }

    /// Starts `vigil run` again on the same data dir (after the previous one ended).
    pub fn restart(self, config: &str) -> Agent {
        self.restart_with(config, &[])
    }

    /// Like [`Agent::restart`], with extra environment.
    pub fn restart_with(mut self, config: &str, env: &[(&str, &str)]) -> Agent {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let _ = std::fs::remove_file(dir.path().join("vigil.log"));
        Agent::start_in(dir, config, env)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Agent {
        let data = dir.path().join("data");
        let log = dir.path().join("vigil.log");
        Agent::start_at(dir, &data, &log, config, env)
    }

    /// Starts `vigil run` with its data dir and log file where the test says (e.g. on a file
    /// system it will freeze).
    pub fn start_at(
        dir: tempfile::TempDir,
        data: &Path,
        log: &Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let cfg = dir.path().join("vigil.toml");
        std::fs::write(&cfg, config).unwrap();
        let (data, log) = (data.to_path_buf(), log.to_path_buf());
        let mut cmd = Command::new(vigil());
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .arg("--log-file")
            .arg(&log)
            .env_remove("VIGIL_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn vigil run");
        let mut agent = Agent { child, dir, log, addr: String::new(), data };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = agent.log_text().lines().find_map(|l| {
                l.contains("Status endpoint listening")
                    .then(|| l.split("addr=").nth(1).map(|a| a.trim().to_string()))?
            }) {
                agent.addr = addr;
                break;
            }
            if let Ok(Some(st)) = agent.child.try_wait() {
                let mut err = String::new();
                agent.child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("vigil run exited early ({st}): {err}\nlog:\n{}", agent.log_text());
            }
            assert!(Instant::now() < deadline, "status endpoint never came up; log:\n{}", agent.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    pub fn crash_dir(&self) -> PathBuf {
        self.data_dir().join("crashes")
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path, None)
    }

    pub fn status(&self) -> Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    /// Polls `/status` until `pred` holds; panics with the log after `timeout`.
    pub fn wait_status(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {s:#}\nlog:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until a collector incarnation `n` (or later) is running.
    pub fn wait_running(&self, incarnation: u64, timeout: Duration) -> Value {
        self.wait_status(timeout, &format!("incarnation {incarnation} running"), |s| {
            s["collector"]["state"] == "running"
                && s["collector"]["incarnation"].as_u64() >= Some(incarnation)
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGTERM, then the exit status (panics after `timeout`).
    pub fn stop(mut self, timeout: Duration) -> (ExitStatus, Agent) {
        self.signal(libc::SIGTERM);
        let st = self.wait_exit(timeout);
        (st, self)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "vigil did not exit; log:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every crash report is on disk: they are written on the supervisor's disk
    /// thread, a moment after `/status` names them (`collector.pending_crash_reports`).
    pub fn wait_reports_on_disk(&self) {
        self.wait_status(Duration::from_secs(15), "crash reports on disk", |s| {
            s["collector"]["pending_crash_reports"] == 0
        });
    }

    /// The log once it holds `needle`: lines reach the file through vigil's log thread, so
    /// they may come a moment after what `/status` already shows.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines of the log containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains(needle)).map(String::from).collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET (the tests must not depend on the code they test).
pub fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let r = http_request(addr, "GET", path, bearer);
    (r.code, r.body)
}

/// An HTTP answer: status code, header lines and body.
pub struct HttpResponse {
    pub code: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A minimal HTTP/1.1 request without a body; the server must close or size its answer.
pub fn http_request(addr: &str, method: &str, path: &str, bearer: Option<&str>) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    HttpResponse { code, head: head.to_string(), body: body.to_string() }
}

/// A real Prometheus (Debian package) on a free loopback port with its own storage dir.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
    /// The certificate to trust when it serves HTTPS.
    ca: Option<PathBuf>,
}

impl Prometheus {
    /// Starts Prometheus with `config` as its prometheus.yml and extra `flags`; waits until
    /// it is ready.
    pub fn start(config: &str, flags: &[&str]) -> Prometheus {
        Prometheus::start_tls(config, flags, None)
    }

    /// Like [`Prometheus::start`]; with `tls = Some((cert, key))` it serves HTTPS only
    /// (through its `--web.config.file`).
    pub fn start_tls(config: &str, flags: &[&str], tls: Option<(&Path, &Path)>) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Prometheus::start_at(&format!("127.0.0.1:{port}"), config, flags, tls)
    }

    /// Like [`Prometheus::start_tls`], listening on `addr` (to replace one that was stopped,
    /// at the same address).
    pub fn start_at(addr: &str, config: &str, flags: &[&str], tls: Option<(&Path, &Path)>) -> Prometheus {
        let exe = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("prometheus is not installed: run scripts/test (it installs the Debian package)");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let addr = addr.to_string();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut web = vec![];
        if let Some((cert, key)) = tls {
            let web_cfg = dir.path().join("web.yml");
            let yml = format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                cert.display(),
                key.display()
            );
            std::fs::write(&web_cfg, yml).unwrap();
            web.push(format!("--web.config.file={}", web_cfg.display()));
        }
        let child = Command::new(exe)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .args(web)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut p = Prometheus { child, addr, dir, ca: tls.map(|(c, _)| c.to_path_buf()) };
        let t0 = Instant::now();
        while TcpStream::connect(&p.addr).is_err() || p.get("/-/ready").0 != 200 {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited ({st}):\n{}", p.log());
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "prometheus never became ready:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// An instant query through the HTTP API (the expression is URL-encoded here).
    pub fn query(&self, q: &str) -> Value {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = self.get(&format!("/api/v1/query?query={encoded}"));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A GET over HTTP, or HTTPS when it serves TLS.
    pub fn get(&self, path: &str) -> (u16, String) {
        match &self.ca {
            None => http_get(&self.addr, path, None),
            Some(ca) => crate::tls::https_get(&self.addr, path, ca),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Children of `ppid` that are zombies.
pub fn zombie_children(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] == "Z" && f[1].parse::<i32>().ok() == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

/// Open file descriptors of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Timestamp at the start of a log line.
pub fn line_time(line: &str) -> chrono::DateTime<chrono::Utc> {
    let ts = line.split_whitespace().next().unwrap_or("");
    chrono::DateTime::parse_from_rfc3339(ts)
        .unwrap_or_else(|e| panic!("no timestamp in {line:?}: {e}"))
        .to_utc()
}

pub fn crash_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A child process that is killed and reaped when this goes out of scope, so a test that
/// fails half-way never leaves it running.
pub struct Reaped(pub Child);

impl Reaped {
    pub fn spawn(cmd: &mut Command) -> Reaped {
        Reaped(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends `sig` and waits (at most `within`) for the exit.
    pub fn stop(&mut self, sig: i32, within: Duration) -> ExitStatus {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid(), sig) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "pid {} did not exit within {within:?}", self.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
