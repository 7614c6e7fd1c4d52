//! SIGHUP reloads the configuration (CONTRACT §2), with the real `vigil run` and real
//! `vigil receive` peers: what changed is applied without restarting the supervisor, what
//! cannot change live keeps its value, and an invalid file changes nothing.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::upload::{wait_lines, Receiver};

const T: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cfg(supervisor: &str, listen: &str, collectors: &str, sinks: &[(&str, &str)]) -> String {
    let mut s =
        fast_config(supervisor).replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{listen}\""));
    s.push_str(&format!(
        "\n[collectors]\ninterval_secs = 0.3\n[collectors.time_drift]\nenabled = false\n{collectors}\n"
    ));
    for (name, url) in sinks {
        s.push_str(&format!("\n[[upload]]\nname = \"{name}\"\nurl = \"{url}\"\nflush_interval_secs = 0.3\n"));
    }
    s
}

fn sink<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["uploads"].as_array().unwrap().iter().find(|u| u["name"] == name)
}

fn collector_state(s: &Value, name: &str) -> String {
    let c = s["collectors"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    c["state"].as_str().unwrap().to_string()
}

#[test]
fn sighup_applies_collectors_sinks_and_the_listener_and_keeps_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ra = Receiver::start("127.0.0.1:0", &dir.path().join("a.jsonl"), &dir.path().join("a.log"));
    let rb = Receiver::start("127.0.0.1:0", &dir.path().join("b.jsonl"), &dir.path().join("b.log"));
    let rc = Receiver::start("127.0.0.1:0", &dir.path().join("c.jsonl"), &dir.path().join("c.log"));
    let url = |r: &Receiver| format!("ws://{}/v1/ingest", r.addr);
    let first = cfg("", "127.0.0.1:0", "", &[("a", &url(&ra)), ("gone", &url(&rc))]);
    let mut agent = Agent::start(&first, &[]);
    let s = agent.wait_running(1, T);
    let path = agent.dir.path().join("vigil.toml");
    assert_eq!(s["config"]["source"], path.display().to_string(), "{}", s["config"]);
    assert_eq!(s["config"]["reload_error"], Value::Null);
    let loaded_at = s["config"]["loaded_at"].as_str().unwrap().to_string();
    wait_lines(&ra, 3);
    let pid = agent.pid();

    // Sink `a` moves to receiver B (its spool and seq are kept), `gone` is removed, `c` is
    // added; `load` is disabled; the listener moves; a [supervisor] key changes.
    let port = free_port();
    let second = cfg(
        "heartbeat_timeout_secs = 7",
        &format!("127.0.0.1:{port}"),
        "[collectors.load]\nenabled = false",
        &[("a", &url(&rb)), ("c", &url(&rc))],
    );
    std::fs::write(&path, second).unwrap();
    let old_addr = agent.addr.clone();
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + T;
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(Instant::now() < deadline, "the listener never moved; log:\n{}", agent.log_tail());
        std::thread::sleep(Duration::from_millis(25));
    }
    agent.addr = format!("127.0.0.1:{port}");
    assert!(std::net::TcpStream::connect(&old_addr).is_err(), "the old listener is closed");
    let s = agent.wait_status(T, "the new collector settings in a new incarnation", |s| {
        s["collector"]["state"] == "running"
            && s["collector"]["incarnation"].as_u64() >= Some(2)
            && collector_state(s, "load") == "disabled"
    });
    assert_eq!(agent.pid(), pid);
    assert!(alive(pid), "the supervisor was not restarted");
    assert_eq!(s["pid"], pid, "{s}");
    assert_eq!(s["collector"]["last_exit"]["reason"], "stopped", "a graceful restart: {}", s["collector"]);
    assert_eq!(s["config"]["reload_error"], Value::Null, "{}", s["config"]);
    assert_ne!(s["config"]["loaded_at"].as_str().unwrap(), loaded_at);
    let names: Vec<&str> =
        s["uploads"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "c"], "{}", s["uploads"]);
    assert!(agent.data_dir().join("spool/gone").is_dir(), "a removed sink's spool stays");
    // `a` goes on where it was: B gets seqs above the last one A acknowledged, none missing.
    let b = wait_lines(&rb, 2);
    let a_last = ra.lines().iter().map(|l| l["seq"].as_u64().unwrap()).max().unwrap();
    let b_first = b.iter().map(|l| l["seq"].as_u64().unwrap()).min().unwrap();
    assert!(b_first >= 2 && b_first <= a_last + 1, "A had up to {a_last}, B starts at {b_first}");
    let all: std::collections::BTreeSet<u64> =
        ra.lines().iter().chain(rb.lines().iter()).map(|l| l["seq"].as_u64().unwrap()).collect();
    let max = *all.iter().max().unwrap();
    assert_eq!(all.len() as u64, max, "every seq of sink a arrived at A or B: {all:?}");
    // The added sink delivers; the new incarnation sends no load samples.
    agent.wait_status(T, "sink c delivering", |s| {
        sink(s, "c").is_some_and(|c| c["acked_seq"].as_u64() >= Some(1))
    });
    agent.wait_log("needs a restart", T);
    let restart_logged = agent.log_lines("needs a restart");
    assert!(
        restart_logged.iter().any(|l| l.contains("[supervisor]")),
        "the [supervisor] change is logged as needing a restart: {restart_logged:?}"
    );
}

#[test]
fn sighup_with_an_invalid_file_keeps_everything_and_logs_every_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("r.log"));
    let good = cfg("", "127.0.0.1:0", "", &[("main", &format!("ws://{}/v1/ingest", r.addr))]);
    let agent = Agent::start(&good, &[]);
    agent.wait_running(1, T);
    let path = agent.dir.path().join("vigil.toml");
    // Line 2: an unknown key; line 4: a string where a number belongs.
    std::fs::write(&path, "[agent]\nbogus_key = 1\n[collectors]\ninterval_secs = \"fast\"\n").unwrap();
    agent.signal(libc::SIGHUP);
    let s = agent.wait_status(T, "a reload error", |s| s["config"]["reload_error"].is_string());
    let err = s["config"]["reload_error"].as_str().unwrap();
    let p = path.display().to_string();
    assert!(err.contains(&format!("{p}:2:1")) && err.contains("bogus_key"), "{err}");
    assert!(err.contains(&format!("{p}:4:")) && err.contains("interval_secs"), "{err}");
    // The errors are logged before "Reload refused", and the log thread keeps their order.
    let log = agent.wait_log("Reload refused", T);
    assert!(log.contains(&format!("{p}:2:1")) && log.contains(&format!("{p}:4:")), "{log}");
    // Nothing changed: the same collector, the same sink, still delivering.
    assert_eq!(s["collector"]["incarnation"], 1);
    let before = s["uploads"][0]["acked_seq"].as_u64().unwrap();
    agent.wait_status(T, "the sink still delivering", |s| {
        s["uploads"][0]["acked_seq"].as_u64() > Some(before + 2)
    });
    // A good file again: applied, and the error is gone.
    std::fs::write(&path, &good).unwrap();
    agent.signal(libc::SIGHUP);
    let s = agent.wait_status(T, "the error cleared", |s| s["config"]["reload_error"].is_null());
    assert_eq!(s["collector"]["incarnation"], 1, "nothing changed, so no restart");
}
