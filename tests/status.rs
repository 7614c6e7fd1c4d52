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
    assert_eq!(http_get(&agent.addr, "/status", None).0, 401);
    assert_eq!(http_get(&agent.addr, "/healthz", Some("wrong")).0, 401);
    assert_eq!(http_get(&agent.addr, "/status", Some("s3cret-token")).0, 200);
    assert_eq!(http_get(&agent.addr, "/metrics", None).0, 401);
    assert_eq!(http_get(&agent.addr, "/metrics", Some("wrong")).0, 401);
    assert_eq!(http_get(&agent.addr, "/metrics", Some("s3cret-token")).0, 200);
    assert_eq!(http_get(&agent.addr, "/crashes", None).0, 401);
    assert_eq!(http_get(&agent.addr, "/crashes/20200101T000000.000Z-1", Some("wrong")).0, 401);
    assert_eq!(http_get(&agent.addr, "/crashes/20200101T000000.000Z-1/stderr", None).0, 401);
    assert_eq!(http_get(&agent.addr, "/crashes", Some("s3cret-token")).0, 200);
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
    assert_eq!(http_get(&agent.addr, "/status", Some("s3cret-token")).0, 200);
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
fn unix_socket_listener_is_private_and_never_replaces_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("status.sock");
    let cfg =
        fast_config("").replace("listen = \"127.0.0.1:0\"", &format!("listen = \"unix:{}\"", sock.display()));
    let cfg_path = dir.path().join("vigil.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let mut child = std::process::Command::new(vigil())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !sock.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = std::fs::symlink_metadata(&sock).expect("socket created");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));

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
