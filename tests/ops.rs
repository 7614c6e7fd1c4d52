//! Operating vigil: `--daemon` and `--pidfile`, SIGHUP and `log_format`, systemd's
//! notification protocol and the shipped unit.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(15);

/// A daemon started by a test: killed (SIGKILL) if the test ends without stopping it.
struct Daemon {
    pid: i32,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn pidfile(&self) -> PathBuf {
        self.dir.path().join("run/vigil.pid")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("vigil.log")
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
    /// The status endpoint's address, from the log.
    fn addr(&self) -> String {
        self.log_text()
            .lines()
            .find_map(|l| l.contains("Status endpoint listening").then(|| l.split("addr=").nth(1))?)
            .unwrap_or_else(|| panic!("no status address in the log:\n{}", self.log_text()))
            .trim()
            .to_string()
    }
    /// SIGTERM, then waits until the process is gone.
    fn stop(&self) {
        // SAFETY: signalling the daemon this test started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + T;
        while alive(self.pid) {
            assert!(Instant::now() < deadline, "daemon did not stop; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.pid > 0 && alive(self.pid) {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// `vigil run --daemon --pidfile DIR/run/vigil.pid` with `config` (and `extra` arguments)
/// in `dir`; returns what the launching process printed and how it exited.
fn run_daemon(dir: &Path, config: &str, extra: &[&str]) -> Output {
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::write(dir.join("vigil.toml"), config).unwrap();
    // Relative paths on purpose: the daemon works in / and must have resolved them.
    Command::new(vigil())
        .current_dir(dir)
        .args(["run", "--daemon", "--pidfile", "run/vigil.pid", "--config", "vigil.toml"])
        .args(["--data-dir", "data"])
        .args(extra)
        .env_remove("VIGIL_FAULT")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run vigil --daemon")
}

fn start_daemon(config: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let out = run_daemon(dir.path(), config, &["--log-file", "vigil.log"]);
    let took = t0.elapsed();
    let mut d = Daemon { pid: 0, dir };
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    assert!(took < Duration::from_secs(10), "the launcher returns once the daemon is up: {took:?}");
    let text = std::fs::read_to_string(d.pidfile()).expect("the pidfile exists when the launcher returns");
    assert!(text.ends_with('\n'), "{text:?}");
    d.pid = text.trim().parse().unwrap_or_else(|_| panic!("pidfile holds a pid: {text:?}"));
    d
}

/// Fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, …
fn stat_fields(pid: i32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')').unwrap().1.split_whitespace().map(String::from).collect()
}

#[test]
fn daemon_detaches_serves_and_removes_its_pidfile_on_sigterm() {
    let d = start_daemon(&fast_config(""));
    assert!(alive(d.pid), "the pid in the pidfile is alive");
    let f = stat_fields(d.pid);
    assert_eq!(f[3], d.pid.to_string(), "a session leader (sid == pid): {f:?}");
    assert_eq!(std::fs::read_link(format!("/proc/{}/fd/0", d.pid)).unwrap(), Path::new("/dev/null"));
    assert_eq!(std::fs::read_link(format!("/proc/{}/fd/2", d.pid)).unwrap(), Path::new("/dev/null"));
    assert_eq!(std::fs::read_link(format!("/proc/{}/cwd", d.pid)).unwrap(), Path::new("/"));

    // It serves /status, and the relative --data-dir was resolved before chdir /.
    let addr = d.addr();
    let deadline = Instant::now() + T;
    let status = loop {
        let (code, body) = http_get(&addr, "/status", None);
        assert_eq!(code, 200, "{body}");
        let s: Value = serde_json::from_str(&body).unwrap();
        if s["collector"]["state"] == "running" {
            break s;
        }
        assert!(Instant::now() < deadline, "collector never ran: {s:#}\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(25));
    };
    assert_eq!(status["pid"].as_i64(), Some(d.pid as i64));
    assert!(d.dir.path().join("data").is_dir(), "data dir relative to where vigil was started");

    // A second agent with the same pidfile refuses, and leaves the first one alone.
    let out = run_daemon(d.dir.path(), &fast_config(""), &["--log-file", "second.log"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already running") && err.contains(&d.pid.to_string()), "{err}");
    assert_eq!(std::fs::read_to_string(d.pidfile()).unwrap().trim(), d.pid.to_string());
    assert!(alive(d.pid));

    d.stop();
    assert!(!d.pidfile().exists(), "pidfile removed on a clean stop");
    assert!(d.log_text().contains("Supervisor stopped."), "{}", d.log_text());
}

#[test]
fn daemon_replaces_a_stale_pidfile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    std::fs::write(dir.path().join("run/vigil.pid"), format!("{dead}\n")).unwrap();
    let out = run_daemon(dir.path(), &fast_config(""), &["--log-file", "vigil.log"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let pid = std::fs::read_to_string(dir.path().join("run/vigil.pid")).unwrap().trim().parse().unwrap();
    let d = Daemon { pid, dir };
    assert_ne!(d.pid as u32, dead);
    let warn = d.log_text().lines().find(|l| l.contains("stale pidfile")).map(String::from);
    let warn = warn.unwrap_or_else(|| panic!("a log line about the stale pidfile:\n{}", d.log_text()));
    assert!(warn.contains(&format!("old={dead}")), "{warn}");
    d.stop();
}

#[test]
fn daemon_start_failure_is_reported_by_the_launcher() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config("").replace("127.0.0.1:0", &addr.to_string());
    let out = run_daemon(dir.path(), &config, &["--log-file", "vigil.log"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen") && err.contains(&addr.to_string()), "{err}");
    assert!(!dir.path().join("run/vigil.pid").exists(), "no pidfile for an agent that did not start");
}

#[test]
fn daemon_refuses_bad_configs_and_a_missing_log_file_on_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_daemon(dir.path(), &fast_config(""), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("--daemon needs agent.log_file or --log-file"), "{err}");
    let out = run_daemon(dir.path(), "[agent]\nlog_format = \"xml\"\n", &["--log-file", "vigil.log"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("vigil.toml:2:1: `agent.log_format`"), "{err}");
    assert!(!dir.path().join("run/vigil.pid").exists());
}

#[test]
fn pidfile_in_the_foreground() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("vigil.pid");
    std::fs::write(dir.path().join("vigil.toml"), fast_config("")).unwrap();
    let mut child = Reaped::spawn(
        Command::new(vigil())
            .args(["run", "--config"])
            .arg(dir.path().join("vigil.toml"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--log-file")
            .arg(dir.path().join("vigil.log"))
            .arg("--pidfile")
            .arg(&pidfile)
            .env_remove("VIGIL_FAULT")
            .stdin(Stdio::null()),
    );
    let deadline = Instant::now() + T;
    while std::fs::read_to_string(&pidfile).map(|t| t.trim().to_string()).ok()
        != Some(child.pid().to_string())
    {
        assert!(Instant::now() < deadline, "the foreground agent writes its pid");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(child.stop(libc::SIGTERM, T).code(), Some(0));
    assert!(!pidfile.exists());
}

#[test]
fn sighup_reopens_the_log_file() {
    let agent = Agent::start(&fast_config(""), &[]);
    agent.wait_running(1, T);
    let rotated = agent.dir.path().join("vigil.log.1");
    std::fs::rename(&agent.log, &rotated).unwrap();
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + T;
    while !agent.log_text().contains("Log file reopened") {
        assert!(Instant::now() < deadline, "no new log file after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("Status endpoint listening"), "the old lines stay in the rotated file");
    assert!(old.lines().last().unwrap().contains("reopening the log file"), "{old}");
    // Everything from now on, the collector's output included, goes to the new file.
    let (st, agent) = agent.stop(T);
    assert_eq!(st.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), old, "the rotated file stopped growing");
    let new = agent.log_text();
    assert!(new.contains("Supervisor stopped."), "{new}");
    assert!(new.lines().any(|l| l.contains("collector") && l.contains("Stdin closed")), "{new}");
}

#[test]
fn json_log_lines_parse_and_keep_the_collector_output() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, format!("[agent]\nlog_format = \"json\"\n{}", fast_config(""))).unwrap();
    let log = dir.path().join("vigil.log");
    let mut child = Reaped::spawn(
        Command::new(vigil())
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--log-file")
            .arg(&log)
            .env("VIGIL_FAULT", "panic@0.3x1")
            .stdin(Stdio::null()),
    );
    let lines = || -> Vec<Value> {
        // Complete lines only: the last one may still be being written.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text[..text.rfind('\n').map_or(0, |i| i + 1)]
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let deadline = Instant::now() + T;
    // The second incarnation runs after the first one panicked.
    while !lines().iter().any(|l| l["message"] == "Collector is running." && l["fields"]["incarnation"] == 2)
    {
        assert!(Instant::now() < deadline, "no second incarnation: {:#?}", lines());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(child.stop(libc::SIGTERM, T).code(), Some(0));
    let lines = lines();
    for l in &lines {
        for k in ["timestamp", "level", "target", "message"] {
            assert!(l[k].is_string(), "{k} in {l}");
        }
        assert!(l["fields"].is_object(), "{l}");
    }
    let listening = lines.iter().find(|l| l["message"] == "Status endpoint listening.").unwrap();
    assert!(listening["fields"]["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(listening["level"], "INFO");
    let panic = lines.iter().find(|l| l["message"].as_str().unwrap().contains("injected panic"));
    let panic = panic.unwrap_or_else(|| panic!("the collector's panic message is logged: {lines:#?}"));
    assert_eq!(panic["target"], "collector");
    assert_eq!(panic["fields"]["stream"], "stderr");
    let crash =
        lines.iter().find(|l| l["level"] == "ERROR" && l["fields"]["code"] == 101).expect("crash line");
    assert!(crash["fields"]["report"].is_string(), "{crash}");
}

/// Datagrams received on a notification socket, with when they arrived.
fn receive(sock: &UnixDatagram, until: impl Fn(&[(Instant, String)]) -> bool) -> Vec<(Instant, String)> {
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 4096];
    while !until(&got) {
        assert!(Instant::now() < deadline, "timed out; received: {got:#?}");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    got
}

#[test]
fn sd_notify_ready_after_the_first_heartbeat_ack_and_watchdog_from_the_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    // The first collector hangs (its first heartbeat may or may not be answered before the
    // fault fires) and is killed after heartbeat_timeout_secs; the second one runs. The
    // watchdog must be fed all along: it watches the supervisor, not the collector.
    let agent = Agent::start(
        &fast_config(""),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
            ("VIGIL_FAULT", "hang@0x1"),
        ],
    );
    let got = receive(&sock, |g| g.iter().any(|(_, m)| m.contains("READY=1")));
    let s = agent.status();
    let ready = &got.iter().find(|(_, m)| m.contains("READY=1")).unwrap().1;
    assert_eq!(s["collector"]["state"], "running", "READY=1 once a collector answered: {s:#}");
    assert!(s["collector"]["heartbeat"]["last_ack_ms_ago"].is_u64(), "an ack was seen: {s:#}");
    assert!(ready.contains(&format!("MAINPID={}", agent.pid())), "{ready}");
    assert!(ready.contains("STATUS=Collector running"), "{ready}");

    // Through the hang, the kill and the restart: pings keep coming, the restart shows in
    // STATUS, and READY=1 is not sent again.
    let second = |m: &String| m.contains("incarnation 2)");
    let seen = got.iter().any(|(_, m)| second(m));
    let later = receive(&sock, |g| seen || g.iter().any(|(_, m)| second(m)));
    let all: Vec<&(Instant, String)> = got.iter().chain(&later).collect();
    assert_eq!(all.iter().filter(|(_, m)| m.contains("READY=1")).count(), 1, "{all:#?}");
    assert!(all.iter().any(|(_, m)| m.starts_with("STATUS=Collector backoff")), "{all:#?}");
    let pings: Vec<Instant> = all.iter().filter(|(_, m)| m == "WATCHDOG=1").map(|(t, _)| *t).collect();
    assert!(pings.len() >= 5, "the watchdog is fed while the collector hangs: {all:#?}");
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g < Duration::from_secs(1)), "a ping every ~200 ms: {gaps:?}");

    // The collector does not inherit the notification variables.
    let s = agent.wait_running(2, T);
    let cpid = s["collector"]["pid"].as_i64().unwrap();
    let env = std::fs::read(format!("/proc/{cpid}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(!env.contains("NOTIFY_SOCKET=") && !env.contains("WATCHDOG_USEC="), "{env}");

    agent.signal(libc::SIGTERM);
    receive(&sock, |g| g.iter().any(|(_, m)| m.starts_with("STOPPING=1")));
    let (st, _agent) = agent.stop(T);
    assert_eq!(st.code(), Some(0));
}

#[test]
fn no_notify_socket_no_notifications() {
    // The default path: nothing set, nothing sent, and the agent runs as always.
    let agent = Agent::start(&fast_config(""), &[]);
    agent.wait_running(1, T);
    assert!(agent.log_lines("notify").is_empty(), "{}", agent.log_tail());
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vigil.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/vigil run --config /etc/vigil/vigil.toml --data-dir /var/lib/vigil",
        "User=vigil",
        "AmbientCapabilities=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH",
        "CapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH",
        "WatchdogSec=30",
        "Restart=on-failure",
        "KillMode=mixed",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in config/vigil.service");
    }
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "systemd-analyze is not installed: run scripts/test (it installs the Debian package systemd)",
        );
    // verify also checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vigil.service");
    std::fs::write(&copy, unit.replace("/usr/bin/vigil", vigil())).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&copy).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{said}");
    // It exits 0 on unknown keys and bad values, warning only: a warning is a failure here.
    let warnings: Vec<&str> = said.lines().filter(|l| l.contains("vigil.service")).collect();
    assert!(warnings.is_empty(), "systemd-analyze verify warns:\n{said}");
}

/// deploy/kubernetes/vigil.yaml is valid for a current Kubernetes (PyPI kubernetes-validate,
/// strict: no unknown fields), its ConfigMap holds a config `vigil check-config` accepts, and
/// the DaemonSet keeps what the agent relies on (host PID and network, loopback status,
/// read-only host mounts, exactly the two capabilities docs/operations.md names).
#[test]
fn the_kubernetes_daemonset_validates_and_its_config_is_accepted() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/vigil.yaml");
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.34.0", manifest])
        .output()
        .expect("run kubernetes-validate (scripts/test installs it from PyPI)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate failed:\n{said}");
    for kind in ["namespace/vigil", "serviceaccount/vigil", "configmap/vigil-config", "daemonset/vigil"] {
        assert!(said.contains(&format!("passed for resource {kind}")), "{kind} not validated:\n{said}");
    }
    let text = std::fs::read_to_string(manifest).unwrap();
    // The ConfigMap's vigil.toml: the block under `vigil.toml: |`, indented 4 spaces.
    let block: String = text
        .lines()
        .skip_while(|l| l.trim() != "vigil.toml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    assert!(block.contains("listen = \"127.0.0.1:9779\""), "{block}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, &block).unwrap();
    let out =
        std::process::Command::new(vigil()).arg("check-config").arg("--config").arg(&cfg).output().unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's config is refused:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needed in [
        "hostPID: true",
        "hostNetwork: true",
        "add: [\"SYS_PTRACE\", \"DAC_READ_SEARCH\"]",
        "drop: [\"ALL\"]",
        "path: /healthz",
        "readOnlyRootFilesystem: true",
        "path: /var/lib/vigil",
    ] {
        assert!(text.contains(needed), "the DaemonSet lost `{needed}`");
    }
}
