//! The status endpoint's listeners and access control.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use crate::harness::*;

#[test]
fn non_loopback_listener_requires_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = fast_config("").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"0.0.0.0:0\"\ntoken_file = \"{}\"", token.display()),
    );
    let agent = Agent::start(&cfg, &[]);
    // Refused requests carry nothing of the agent's state; allowed ones carry it all.
    for (path, token) in [
        ("/", None),
        ("/", Some("wrong")),
        ("/status", None),
        ("/healthz", Some("wrong")),
        ("/metrics", None),
        ("/metrics", Some("wrong")),
        ("/crashes", None),
        ("/crashes/20200101T000000.000Z-1", Some("wrong")),
        ("/crashes/20200101T000000.000Z-1/stderr", None),
    ] {
        let (code, body) = http_get(&agent.addr, path, token);
        assert_eq!(code, 401, "{path} {token:?}");
        assert!(!body.contains("collector") && !body.contains("vigil_"), "{path} leaked: {body}");
    }
    let (code, body) = http_get(&agent.addr, "/status", Some("s3cret-token"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pid"].as_u64(), Some(agent.child.id() as u64), "{v:#}");
    assert!(v["collector"]["state"].is_string(), "{v:#}");
    let (code, body) = http_get(&agent.addr, "/metrics", Some("s3cret-token"));
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE vigil_collector_restarts_total counter"), "{body}");
    let (code, body) = http_get(&agent.addr, "/crashes", Some("s3cret-token"));
    assert_eq!(code, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap().is_array(), "{body}");
    assert!(
        agent.log_lines("readable by group or others").is_empty(),
        "a 0600 token file is not warned about"
    );
}

#[test]
fn a_token_file_others_can_read_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = fast_config("").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\ntoken_file = \"{}\"", token.display()),
    );
    let agent = Agent::start(&cfg, &[]);
    let warned = agent.log_lines("readable by group or others");
    assert_eq!(warned.len(), 1, "{}", agent.log_tail());
    assert!(
        warned[0].contains("WARN") && warned[0].contains("mode 644") && warned[0].contains("chmod 600"),
        "{warned:?}"
    );
    // Still served, with the token.
    let (code, body) = http_get(&agent.addr, "/status", Some("s3cret-token"));
    assert_eq!(code, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["collector"].is_object(), "{body}");
}

#[test]
fn an_empty_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "  \n").unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, format!("[status]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"{}\"\n", token.display()))
        .unwrap();
    let out = std::process::Command::new(vigil())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
}

#[test]
fn files_and_the_unix_socket_are_private_from_the_start_and_a_file_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("status.sock");
    let cfg = fast_config("")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"unix:{}\"", sock.display()))
        + "[[upload]]\nname = \"main\"\nurl = \"ws://127.0.0.1:9/v1/ingest\"\nflush_interval_secs = 0.2\n";
    let cfg_path = dir.path().join("vigil.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    // Under umask 000 every file would be created open to all; the socket must never be.
    let old_umask = unsafe { libc::umask(0) };
    let mut child = Reaped::spawn(
        std::process::Command::new(vigil())
            .args(["run", "--config"])
            .arg(&cfg_path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("VIGIL_FAULT", "segv@0.5x1")
            .stderr(std::process::Stdio::null()),
    );
    unsafe { libc::umask(old_umask) };
    // Watch the path as it appears: whenever it exists, it is a socket of mode 0600.
    let t0 = std::time::Instant::now();
    let mut looks = 0u64;
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(meta) = std::fs::symlink_metadata(&sock) {
            looks += 1;
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "reachable by others at look {looks}");
            if looks > 1000 {
                break;
            }
        }
    }
    assert!(looks > 1000, "socket never appeared");
    let data = dir.path().join("data");
    let crashes = data.join("crashes");
    let t0 = std::time::Instant::now();
    while std::fs::read_dir(&crashes).map_or(true, |d| {
        d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count() < 2
    }) {
        assert!(t0.elapsed() < Duration::from_secs(15), "no crash report");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&crashes), 0o700, "crash dir");
    for e in std::fs::read_dir(&crashes).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{} (a stderr tail can hold secrets)", e.path().display());
    }
    assert_eq!(mode(&data.join("agent_id")), 0o600);
    let spool = data.join("spool/main");
    assert_eq!(mode(&spool), 0o700);
    let t0 = std::time::Instant::now();
    while !std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "seg"))
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "no segment");
        std::thread::sleep(Duration::from_millis(50));
    }
    for e in std::fs::read_dir(&spool).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".vigil-bind"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(child.stop(libc::SIGTERM, Duration::from_secs(15)).code(), Some(0));

    // A regular file at the socket path is an error, and survives.
    let _ = std::fs::remove_file(&sock);
    std::fs::write(&sock, "precious").unwrap();
    let out = std::process::Command::new(vigil())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
}
