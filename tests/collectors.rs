//! Collectors inside the real child: samples reach /status, crashes are attributed to the
//! collector in flight, a repeat offender is quarantined while the rest keep running.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

fn with_collectors(supervisor: &str, collectors: &str) -> String {
    format!("{}\n[collectors]\ninterval_secs = 0.3\n{collectors}\n", fast_config(supervisor))
}

fn entry<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {s:#}"))
}

#[test]
fn samples_reach_the_supervisor_and_status_counts_them() {
    let agent = Agent::start(&with_collectors("", ""), &[]);
    let s = agent.wait_status(T, "load samples", |s| entry(s, "load")["samples"].as_u64() >= Some(8));
    let load = entry(&s, "load");
    assert_eq!(load["state"], "ok");
    assert_eq!(load["errors"], 0);
    assert!(load["last_duration_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn every_registered_collector_runs_in_the_real_child_without_errors() {
    // time_drift gets an unreachable server quickly, so its collections fail fast (success 0).
    let agent = Agent::start(
        &with_collectors("", "[collectors.time_drift]\nservers = [\"127.0.0.1:9\"]\ntimeout_ms = 100\n"),
        &[],
    );
    let s = agent.wait_status(T, "three collections of each", |s| {
        s["collectors"].as_array().unwrap().iter().all(|c| c["collections"].as_u64() >= Some(3))
    });
    let names: Vec<&str> =
        s["collectors"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        vigil_actors::collector::collectors::NAMES,
        "every registered collector, in list order"
    );
    for c in s["collectors"].as_array().unwrap() {
        assert_eq!(c["state"], "ok", "{c:#}");
        assert_eq!(c["errors"], 0, "{c:#}");
    }
    // Collectors with something to measure on any Linux host produced samples.
    for name in ["cpu", "fs", "load", "mem", "processes", "time_drift", "tcp", "top_processes"] {
        assert!(entry(&s, name)["samples"].as_u64() > Some(0), "{name}: {s:#}");
    }
    assert_eq!(s["collector"]["incarnation"], 1);
}

#[test]
fn a_disabled_collector_is_shown_disabled_and_not_run() {
    let agent = Agent::start(&with_collectors("", "[collectors.load]\nenabled = false\n"), &[]);
    agent.wait_running(1, T);
    std::thread::sleep(Duration::from_millis(900));
    let s = agent.status();
    assert_eq!(entry(&s, "load")["state"], "disabled");
    assert_eq!(entry(&s, "load")["samples"], 0);
}

#[test]
fn a_panic_inside_a_collector_is_its_error_not_a_crash() {
    let agent = Agent::start(&with_collectors("", ""), &[("VIGIL_FAULT", "panic@collector:load")]);
    let s = agent.wait_status(T, "a load error", |s| entry(s, "load")["errors"].as_u64() >= Some(1));
    // `panicked at FILE:LINE:COL: MESSAGE` (CONTRACT §6).
    let err = entry(&s, "load")["last_error"].as_str().unwrap().to_string();
    assert!(err.starts_with("panicked at actors/src/collector/mod.rs:"), "{err}");
    assert!(err.ends_with(": VIGIL_FAULT=panic: injected panic inside a collector"), "{err}");
    // Its backtrace is logged once, through the function that panicked.
    assert_eq!(agent.log_lines("Backtrace (logged once per place)").len(), 1, "{}", agent.log_tail());
    assert!(!agent.log_lines("vigil_actors::collector::inject").is_empty(), "{}", agent.log_tail());
    // Later collections succeed; the process never restarted.
    let s = agent.wait_status(T, "load ok again", |s| entry(s, "load")["state"] == "ok");
    assert_eq!(s["collector"]["incarnation"], 1);
    assert_eq!(s["collector"]["restarts"], 0);
}

#[test]
fn a_crash_names_the_collector_in_flight_and_repeat_crashes_quarantine_it() {
    let cfg = with_collectors("quarantine_after_crashes = 2\nquarantine_secs = 3", "");
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "segv@collector:load")]);
    // Two crashes inside `load`, then a third incarnation with `load` quarantined.
    let s = agent.wait_status(T, "load quarantined", |s| entry(s, "load")["state"] == "quarantined");
    let e = &s["collector"]["last_exit"];
    assert_eq!(e["signal_name"], "SIGSEGV");
    assert_eq!(e["collector_in_flight"], "load", "{e:#}");
    let id = e["crash_report"].as_str().unwrap();
    agent.wait_reports_on_disk();
    let report: Value =
        serde_json::from_slice(&std::fs::read(agent.crash_dir().join(format!("{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(report["collector_in_flight"], "load");
    assert_eq!(entry(&s, "load")["crashes"], 2);
    assert!(entry(&s, "load")["quarantined_until"].is_string());
    assert!(agent.log_lines("quarantined").iter().any(|l| l.contains(" ERROR ") && l.contains("load")));
    // The quarantined child keeps running, and so do the other collectors.
    let s = agent.wait_running(3, T);
    let cpu_before = entry(&s, "cpu")["collections"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let s2 = agent.status();
    assert_eq!(s2["collector"]["incarnation"], s["collector"]["incarnation"], "no crash while quarantined");
    assert!(entry(&s2, "cpu")["collections"].as_u64().unwrap() >= cpu_before + 2, "others keep collecting");
    // After quarantine_secs the collector runs again (and, still faulty, crashes again).
    agent.wait_status(T, "load back and crashing", |s| entry(s, "load")["crashes"].as_u64() >= Some(3));
}

/// A real busy process shows in `/metrics` among the top processes, tagged with its pid and
/// name; once it exits its series stops and is gone after the stale window (30 s here), so
/// the series count follows the processes that exist.
#[test]
fn top_processes_shows_a_busy_process_and_forgets_it_after_it_exits() {
    let mut busy = Reaped::spawn(std::process::Command::new("sh").args(["-c", "while :; do :; done"]));
    let pid = busy.pid().to_string();
    let agent = Agent::start(&with_collectors("", "[collectors.top_processes]\ntop_n = 2\n"), &[]);
    let series = |metrics: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with("vigil_process_cpu_util_ratio{"))
            .map(str::to_string)
            .collect()
    };
    let deadline = std::time::Instant::now() + T;
    let line = loop {
        let (_, m) = agent.get("/metrics");
        if let Some(l) = series(&m).into_iter().find(|l| l.contains(&format!("pid=\"{pid}\""))) {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "the busy sh ({pid}) never showed: {m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(line.contains("name=\"sh\""), "{line}");
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 0.02, "a busy process has a share well above idle: {line}");
    let (_, m) = agent.get("/metrics");
    assert!(series(&m).len() <= 4, "at most 2 × top_n processes: {m}");
    busy.stop(libc::SIGKILL, Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = agent.get("/metrics");
        if !m.contains(&format!("pid=\"{pid}\"")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the exited process's series never expired");
        std::thread::sleep(Duration::from_millis(500));
    }
    let s = agent.status();
    assert_eq!(entry(&s, "top_processes")["errors"], 0);
}

/// Real connection-tracking state made here: in a network namespace of its own (unshare),
/// an nftables rule that matches on conntrack state makes the kernel track the 20 loopback
/// connections a helper holds open, and `vigil once`, run in that namespace, counts them.
#[test]
fn conntrack_counts_real_tracked_connections() {
    assert!(
        ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].iter().any(|p| std::path::Path::new(p).exists()),
        "nft is not installed: run scripts/test (it installs nftables)"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    let only: String = vigil_actors::collector::collectors::NAMES
        .iter()
        .filter(|n| **n != "conntrack")
        .map(|n| format!("[collectors.{n}]\nenabled = false\n"))
        .collect();
    std::fs::write(&cfg, only).unwrap();
    let script = r#"set -e
ip link set lo up
nft add table inet vigiltest
nft add chain inet vigiltest out '{ type filter hook output priority 0; }'
nft add rule inet vigiltest out ct state new counter accept
/usr/bin/python3 -c '
import socket, sys, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(64)
keep = []
for _ in range(20):
    keep.append(socket.create_connection(l.getsockname())); keep.append(l.accept()[0])
open(sys.argv[1], "w").write("ready")
time.sleep(60)
' "$READY" &
holder=$!
while [ ! -s "$READY" ]; do sleep 0.05; done
"$VIGIL" once --json --config "$CFG"
kill $holder
"#;
    let out = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .env("VIGIL", vigil())
        .env("CFG", &cfg)
        .env("READY", dir.path().join("ready"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let samples: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let value = |name: &str| {
        samples.as_array().unwrap().iter().find(|s| s["name"] == name).and_then(|s| s["value"].as_f64())
    };
    let entries = value("conntrack_entries").unwrap_or_else(|| panic!("no conntrack_entries: {stdout}"));
    assert!((20.0..100.0).contains(&entries), "20 tracked connections and little else: {entries}");
    let util = value("conntrack_util").unwrap();
    assert!(util > 0.0 && util < 100.0, "{util}");
}
