//! The command line: config checking, exit codes, running with no config at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(kind);
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

fn check_config(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(vigil()).arg("check-config").arg("--config").arg(path).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn invalid_configs_exit_78_and_name_every_error_by_line_and_column() {
    for f in fixtures("invalid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expected.is_empty(), "{} has no `# expect:` lines", f.display());
        let (code, out) = check_config(&f);
        assert_eq!(code, Some(78), "{}: {out}", f.display());
        for e in expected {
            if let Some(n) = e.strip_suffix(" errors").or(e.strip_suffix(" error")) {
                let n: usize = n.parse().unwrap();
                let listed = out.lines().filter(|l| l.starts_with("  ")).count();
                assert_eq!(listed, n, "{}: error count in\n{out}", f.display());
            } else {
                assert!(out.contains(e), "{}: expected {e:?} in\n{out}", f.display());
            }
        }
        // `vigil run` refuses the same file with the same code, before starting anything.
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(vigil())
            .args(["run", "--config"])
            .arg(&f)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "run {}", f.display());
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{}:", f.display())));
    }
}

#[test]
fn valid_configs_and_the_shipped_one_pass() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vigil.toml");
    for f in fixtures("valid").into_iter().chain([shipped]) {
        let (code, out) = check_config(&f);
        assert_eq!(code, Some(0), "{}: {out}", f.display());
    }
}

#[test]
fn missing_config_file_is_a_config_error() {
    let (code, out) = check_config(Path::new("/nonexistent/vigil.toml"));
    assert_eq!(code, Some(78));
    assert!(out.contains("/nonexistent/vigil.toml"), "{out}");
}

/// `vigil run` with no file at all: the built-in defaults, status on 127.0.0.1:9779. The
/// default port is fixed, and an installed `/etc/vigil/vigil.toml` would be read: so vigil
/// runs in a network namespace of its own (its own loopback, port 9779 always free) and a
/// mount namespace where `/etc/vigil` is an empty directory, and the test talks to it from a
/// thread that joins that network namespace.
#[test]
fn run_with_no_config_file_uses_built_in_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let empty = dir.path().join("empty-etc-vigil");
    std::fs::create_dir(&empty).unwrap();
    let script = format!(
        "ip link set lo up && if [ -d /etc/vigil ]; then mount --bind {} /etc/vigil; fi && exec \"$0\" \"$@\"",
        empty.display()
    );
    let mut child = Reaped::spawn(
        Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(vigil())
            .arg("run")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--log-file")
            .arg(&log)
            .env_remove("VIGIL_CONFIG")
            .env_remove("VIGIL_FAULT")
            .stdin(Stdio::null()),
    );
    let pid = child.pid();
    let get = move |path: &'static str| {
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
            // SAFETY: setns on this thread only (network namespaces are per thread), with an
            // fd we own.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
                panic!("setns: {}", std::io::Error::last_os_error());
            }
            let mut s = std::net::TcpStream::connect("127.0.0.1:9779").ok()?;
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
            let mut r = String::new();
            s.read_to_string(&mut r).ok()?;
            Some(r)
        })
        .join()
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let health = loop {
        match get("/healthz") {
            Some(r) if r.starts_with("HTTP/1.1 200") => break r,
            _ if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!(
                "built-in defaults do not serve /healthz on 127.0.0.1:9779: {other:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    };
    assert_eq!(health.split_once("\r\n\r\n").map(|(_, b)| b.trim_end()), Some("ok"), "{health}");
    let status = get("/status").expect("/status");
    let body = status.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(v["collector"]["state"], "running", "{v:#}");
    assert!(v["collectors"].as_array().unwrap().len() >= 5, "the default collectors run: {v:#}");
    assert_eq!(v["uploads"].as_array().unwrap().len(), 0, "no sink by default: {v:#}");
    let st = child.stop(libc::SIGTERM, Duration::from_secs(15));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(st.code(), Some(0), "{text}");
    assert!(text.contains("config=built-in defaults"), "{text}");
}

#[test]
fn collector_refuses_a_terminal() {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two fds.
    let rc = unsafe {
        libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: `slave` is a fresh fd we own.
    let tty = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(slave) };
    let out = Command::new(vigil()).arg("collector").stdin(tty).output().unwrap();
    unsafe { libc::close(master) };
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin is a terminal"));
}

#[test]
fn version_flag() {
    let out = Command::new(vigil()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("vigil "));
}

#[test]
fn once_prints_every_enabled_collector_as_json_and_as_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, "[agent]\ntags = { dc = \"t1\" }\n").unwrap();
    let out = Command::new(vigil()).args(["once", "--json", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let arr: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let arr = arr.as_array().unwrap();
    let load = arr.iter().find(|s| s["name"] == "load_1").expect("load_1 sample");
    assert!(load["value"].as_f64().unwrap() >= 0.0);
    assert_eq!(load["tags"]["dc"], "t1", "agent tags are added");
    for s in arr {
        assert!(s["name"].is_string() && s["tags"].is_object() && s["value"].is_number(), "{s}");
    }
    // Every sample a collector emits is one its own file declares (`Collector::METRICS`),
    // so `/metrics` names and converts it.
    let declared: std::collections::BTreeSet<&str> = vigil_actors::collector::collectors::METRICS
        .iter()
        .flat_map(|(_, m)| m.iter().map(|m| m.name))
        .collect();
    for s in arr {
        let name = s["name"].as_str().unwrap();
        assert!(declared.contains(name), "{name} is emitted but no collector declares it");
    }
    let out = Command::new(vigil()).args(["once", "--config"]).arg(&cfg).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().starts_with("COLLECTOR"), "{table}");
    assert!(table.lines().any(|l| l.contains("load_15")), "{table}");
}

/// `check-config` looks into each sink's spool in the configured data dir: damage is a
/// warning (exit 0, the configuration is fine), and looking changes nothing.
#[test]
fn check_config_warns_about_a_damaged_spool_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A real spool: a sink whose receiver is down spools its batches.
    let cfg = format!(
        "{}\n[agent]\ndata_dir = \"{}\"\n[collectors]\ninterval_secs = 0.2\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"main\"\nurl = \"ws://127.0.0.1:9/v1/ingest\"\nflush_interval_secs = 0.2\n",
        fast_config(""),
        data.display()
    );
    let agent =
        Agent::start_at(tempfile::tempdir().unwrap(), &data, &dir.path().join("vigil.log"), &cfg, &[]);
    agent.wait_status(Duration::from_secs(30), "a backlog", |s| {
        s["uploads"][0]["spooled_batches"].as_u64() >= Some(5)
    });
    let (st, _) = agent.stop(Duration::from_secs(20));
    assert!(st.success());
    let file = dir.path().join("vigil.toml");
    std::fs::write(&file, &cfg).unwrap();
    let (code, out) = check_config(&file);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "an intact spool: {out}");
    // Damage: a flipped byte in a record, a torn tail, a directory named like a segment.
    let spool = data.join("spool/main");
    let seg = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[30] ^= 0xff;
    bytes.extend_from_slice(b"VSR1\x10\x00");
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::create_dir(spool.join("99999.seg")).unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        v.sort();
        v
    };
    let before = listing(&spool);
    let (code, out) = check_config(&file);
    assert_eq!(code, Some(0), "damage in the spool is not a config error: {out}");
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: sink `main`")).collect();
    assert!(warnings.iter().any(|w| w.contains(&name) && w.contains("1 damaged record")), "{out}");
    assert!(warnings.iter().any(|w| w.contains(&name) && w.contains("torn tail of 6 bytes")), "{out}");
    assert!(warnings.iter().any(|w| w.contains("99999.seg") && w.contains("not a regular file")), "{out}");
    assert_eq!(listing(&spool), before, "check-config changes nothing");
    assert!(out.contains(": ok"), "{out}");
}
