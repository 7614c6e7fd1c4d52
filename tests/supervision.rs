//! The supervisor against a real collector dying in every way CONTRACT §8 can make it die.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(15);

/// Runs one fault in the first incarnation only, waits for the restart, and returns the
/// status (with `last_exit`) and the agent.
fn crash_once(fault: &str) -> (Value, Agent) {
    let agent = Agent::start(&fast_config(""), &[("VIGIL_FAULT", fault)]);
    let s = agent.wait_running(2, T);
    (s, agent)
}

/// The crash report named by `last_exit`, checked against it.
fn report(agent: &Agent, last_exit: &Value) -> (Value, Vec<u8>) {
    let id = last_exit["crash_report"].as_str().unwrap_or_else(|| panic!("no crash report in {last_exit:#}"));
    agent.wait_reports_on_disk();
    let json = std::fs::read(agent.crash_dir().join(format!("{id}.json"))).expect("ID.json");
    let json: Value = serde_json::from_slice(&json).unwrap();
    let stderr = std::fs::read(agent.crash_dir().join(format!("{id}.stderr"))).expect("ID.stderr");
    for k in ["reason", "code", "signal", "signal_name", "core_dumped", "uptime_ms", "at"] {
        assert_eq!(json[k], last_exit[k], "report field {k}");
    }
    assert_eq!(json["incarnation"], 1);
    assert!(json["pid"].as_u64().unwrap() > 0 && json["version"].is_string());
    (json, stderr)
}

/// The single ERROR line for this crash names how it died and the report.
fn assert_error_line(agent: &Agent, id: &str, how: &str) {
    let lines = agent.log_lines(" ERROR ");
    let hits: Vec<&String> = lines.iter().filter(|l| l.contains(id)).collect();
    assert_eq!(hits.len(), 1, "one ERROR line per crash naming report {id}: {lines:#?}");
    assert!(hits[0].contains(how), "ERROR line names {how}: {}", hits[0]);
}

#[test]
fn segv_is_reported_as_sigsegv_and_restarted() {
    let (s, agent) = crash_once("segv@0.3x1");
    let e = &s["collector"]["last_exit"];
    assert_eq!(e["reason"], "signaled");
    assert_eq!(e["signal"], 11);
    assert_eq!(e["signal_name"], "SIGSEGV");
    assert_eq!(e["code"], Value::Null);
    assert_eq!(s["collector"]["restarts"], 1);
    let (_, stderr) = report(&agent, e);
    assert!(String::from_utf8_lossy(&stderr).contains("Injecting fault"), "stderr tail kept");
    assert_error_line(&agent, e["crash_report"].as_str().unwrap(), "SIGSEGV");
}

#[test]
fn abort_is_reported_as_sigabrt() {
    let (s, agent) = crash_once("abort@0.2x1");
    let e = &s["collector"]["last_exit"];
    assert_eq!((e["reason"].as_str(), e["signal"].as_i64()), (Some("signaled"), Some(6)));
    assert_eq!(e["signal_name"], "SIGABRT");
    report(&agent, e);
    assert_error_line(&agent, e["crash_report"].as_str().unwrap(), "SIGABRT");
}

#[test]
fn panic_exits_101_with_its_message_in_the_report() {
    let (s, agent) = crash_once("panic@0.2x1");
    let e = &s["collector"]["last_exit"];
    assert_eq!((e["reason"].as_str(), e["code"].as_i64()), (Some("exited"), Some(101)));
    assert_eq!(e["signal"], Value::Null);
    let (json, stderr) = report(&agent, e);
    assert!(String::from_utf8_lossy(&stderr).contains("injected panic"), "panic message in ID.stderr");
    // The report names the panic and where it happened (CONTRACT §6).
    let p = &json["panic"];
    assert_eq!(p["message"], "VIGIL_FAULT=panic: injected panic", "{json:#}");
    let at = p["location"].as_str().unwrap_or_default();
    assert!(at.starts_with("actors/src/collector/fault.rs:") && at.matches(':').count() == 2, "{at}");
    assert_error_line(&agent, e["crash_report"].as_str().unwrap(), "code 101");
    // The panic message also reached the agent log, as collector output.
    assert!(agent.log_lines("injected panic").iter().any(|l| l.contains("collector")));
}

#[test]
fn exit_code_is_reported() {
    let (s, agent) = crash_once("exit:3@0.2x1");
    let e = &s["collector"]["last_exit"];
    assert_eq!((e["reason"].as_str(), e["code"].as_i64()), (Some("exited"), Some(3)));
    report(&agent, e);
    assert_error_line(&agent, e["crash_report"].as_str().unwrap(), "code 3");
}

#[test]
fn hang_is_killed_as_unresponsive_within_timeout_plus_interval_plus_one_second() {
    let (s, agent) = crash_once("hang@0.5x1");
    let e = &s["collector"]["last_exit"];
    assert_eq!(e["reason"], "unresponsive");
    assert_eq!(e["signal_name"], "SIGKILL");
    report(&agent, e);
    let warn = agent.log_lines(" WARN ");
    let warn = warn
        .iter()
        .find(|l| l.contains("unresponsive") && !l.contains("collector:"))
        .expect("WARN unresponsive");
    let hang_at = line_time(&agent.log_lines("Injecting fault")[0]);
    let crash_at = line_time(&agent.log_lines(e["crash_report"].as_str().unwrap())[0]);
    let bound = chrono::Duration::milliseconds(2000 + 500 + 1000);
    assert!(crash_at - hang_at <= bound, "killed {:?} after the hang began", crash_at - hang_at);
    assert!(line_time(warn) <= crash_at);
}

#[test]
fn close_stdout_is_detected_and_the_collector_replaced() {
    let (s, agent) = crash_once("close-stdout@0.3x1");
    let e = &s["collector"]["last_exit"];
    assert_eq!(e["reason"], "unresponsive");
    assert!(e["detail"].as_str().unwrap_or("").contains("stdout closed"), "{e:#}");
    assert_eq!(e["signal_name"], "SIGKILL");
    // Detected by the closed pipe, long before the 2 s heartbeat timeout would have fired.
    assert!(e["uptime_ms"].as_u64().unwrap() < 1800, "{e:#}");
    report(&agent, e);
}

#[test]
fn stdout_garbage_causes_no_restart() {
    let agent = Agent::start(&fast_config(""), &[("VIGIL_FAULT", "garbage@0.1")]);
    agent.wait_running(1, T);
    std::thread::sleep(Duration::from_secs(3));
    let s = agent.status();
    assert_eq!(s["collector"]["state"], "running");
    assert_eq!(s["collector"]["incarnation"], 1, "{s:#}");
    assert_eq!(s["collector"]["restarts"], 0);
    assert!(
        s["collector"]["heartbeat"]["last_ack_ms_ago"].as_u64().unwrap() < 1500,
        "heartbeats still answered"
    );
    assert!(agent.log_lines("stream=\"stdout\"").len() >= 2, "garbage logged as collector output");
    assert!(crash_files(&agent.crash_dir()).is_empty());
    // The damaged frames in it are counted, not only logged.
    let d = &s["collector"]["dropped_frames"];
    assert!(d["bad_checksum_frames"].as_u64() >= Some(1), "{s:#}");
    assert!(d["undecodable_frames"].as_u64() >= Some(1), "{s:#}");
    assert_eq!(d["oversized_frames"], 0, "{s:#}");
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vigil_collector_dropped_frames_total{reason=\"bad_checksum\"} ")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[test]
fn stderr_flood_keeps_exactly_the_last_mebibyte() {
    let (s, agent) = crash_once("stderr-flood:3000000@0.2x1");
    let e = &s["collector"]["last_exit"];
    assert_eq!(e["signal_name"], "SIGSEGV");
    let (json, stderr) = report(&agent, e);
    // The flood as the contract defines it: 64-byte numbered lines, cut at 3,000,000 bytes.
    let mut flood = Vec::with_capacity(3_000_064);
    let mut n = 0u64;
    while flood.len() < 3_000_000 {
        n += 1;
        flood.extend_from_slice(
            format!("vigil stderr flood line {n:012} ..........................\n").as_bytes(),
        );
    }
    flood.truncate(3_000_000);
    assert_eq!(stderr.len(), 1 << 20, "exactly stderr_tail_bytes kept");
    assert!(
        stderr == flood[flood.len() - (1 << 20)..],
        "the tail is the last 1 MiB, byte-exact and continuous"
    );
    assert_eq!(json["stderr_kept_bytes"], 1 << 20);
    assert!(json["stderr_total_bytes"].as_u64().unwrap() > 3_000_000);
    // Every flood line reached the log too, once, or (the log queue is bounded so that
    // logging never blocks the supervisor) was counted as dropped.
    let logged = agent.log_lines("vigil stderr flood line").len() as u64;
    let (_, metrics) = agent.get("/metrics");
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vigil_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("vigil_log_lines_dropped_total") as u64;
    assert!(logged <= n, "no stderr line logged twice: {logged} of {n}");
    assert!(logged + dropped >= n, "{logged} logged + {dropped} dropped < {n} lines");
}

#[test]
fn crash_loop_delays_grow_and_the_state_says_crash_loop() {
    let cfg = fast_config("crash_loop_crashes = 3\ncrash_loop_window_secs = 60\nrestart_max_delay_secs = 10");
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "exit:1@0.05")]);
    agent.wait_status(T, "crash_loop", |s| s["collector"]["state"] == "crash_loop");
    agent.wait_status(T, "5 incarnations", |s| s["collector"]["incarnation"].as_u64() >= Some(5));
    let delays: Vec<u64> = agent
        .log_lines("Restarting the collector after a delay")
        .iter()
        .map(|l| l.split("delay_ms=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    for w in delays.windows(2) {
        assert!(w[1] > w[0], "delays grow: {delays:?}");
    }
    // The measured gaps between a crash and the next spawn grow as well.
    let exits: Vec<_> = agent.log_lines("Collector crashed").iter().map(|l| line_time(l)).collect();
    let spawns: Vec<_> = agent.log_lines("Collector spawned").iter().map(|l| line_time(l)).collect();
    let gaps: Vec<i64> = (0..4).map(|i| (spawns[i + 1] - exits[i]).num_milliseconds()).collect();
    for w in gaps.windows(2) {
        assert!(w[1] > w[0], "gaps grow: {gaps:?}");
    }
    let loop_errors = agent.log_lines("crash-looping").iter().filter(|l| l.contains(" ERROR ")).count();
    assert_eq!(loop_errors, 1, "the crash loop is announced once, on entry");
    // It never gives up: still restarting.
    agent.wait_status(T, "6 incarnations", |s| s["collector"]["incarnation"].as_u64() >= Some(6));
}

#[test]
fn sigterm_stops_both_with_exit_0() {
    let agent = Agent::start(&fast_config(""), &[]);
    let s = agent.wait_running(1, T);
    let child = s["collector"]["pid"].as_i64().unwrap() as i32;
    let (st, agent) = agent.stop(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "clean stop; log:\n{}", agent.log_tail());
    assert!(!alive(child), "collector gone");
    assert!(crash_files(&agent.crash_dir()).is_empty(), "a clean stop is not a crash");
}

#[test]
fn sigterm_kills_a_hung_collector_after_the_grace_period() {
    let cfg = fast_config("heartbeat_timeout_secs = 30\nstop_grace_secs = 1");
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "hang@0.2")]);
    let s = agent.wait_running(1, T);
    let child = s["collector"]["pid"].as_i64().unwrap() as i32;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let (st, agent) = agent.stop(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0));
    assert!(t0.elapsed() >= Duration::from_millis(900), "waited for the grace period");
    assert!(!alive(child));
    assert_eq!(agent.log_lines("did not exit within stop_grace_secs").len(), 1);
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_collector() {
    // A hung collector does not read stdin, so only PR_SET_PDEATHSIG can end it.
    for fault in ["", "hang@0.2"] {
        let mut agent = Agent::start(&fast_config("heartbeat_timeout_secs = 30"), &[("VIGIL_FAULT", fault)]);
        let s = agent.wait_running(1, T);
        let child = s["collector"]["pid"].as_i64().unwrap() as i32;
        std::thread::sleep(Duration::from_millis(400));
        agent.signal(libc::SIGKILL);
        agent.wait_exit(Duration::from_secs(2));
        let t0 = Instant::now();
        while alive(child) && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(child), "collector ({fault:?}) still alive 2 s after the supervisor was SIGKILLed");
    }
}

#[test]
fn thirty_crash_cycles_leak_no_fds_and_leave_no_zombies() {
    let cfg = fast_config(
        "restart_initial_delay_ms = 10\nrestart_max_delay_secs = 0.05\ncrash_loop_crashes = 1000",
    );
    // Incarnations 1..=33 exit 0.25 s after start; the 34th runs on.
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "exit:1@0.25x33")]);
    // The supervisor's fds while a collector has been running for a while (its pipes and
    // pidfd open, the previous one's all closed): sampled mid-life of an incarnation and
    // kept only if that incarnation is still the running one afterwards, so a replacement
    // in progress is never counted. A leak of one fd per cycle would add 30.
    let steady_fds = |at_least: u64| loop {
        let s = agent.wait_status(Duration::from_secs(60), "a running incarnation", |s| {
            s["collector"]["state"] == "running" && s["collector"]["incarnation"].as_u64() >= Some(at_least)
        });
        std::thread::sleep(Duration::from_millis(100));
        let n = fd_count(agent.pid());
        let again = agent.status();
        if again["collector"]["state"] == "running"
            && again["collector"]["incarnation"] == s["collector"]["incarnation"]
        {
            return n;
        }
    };
    let before = steady_fds(3);
    let after = steady_fds(34);
    assert!(after <= before, "fds grew from {before} to {after} over 30 crash cycles");
    // A child that exited a moment ago is a zombie until it is reaped (microseconds later):
    // only a zombie that is still there a second later is a leak.
    let first = zombie_children(agent.pid());
    std::thread::sleep(Duration::from_secs(1));
    let lasting: Vec<i32> = zombie_children(agent.pid()).into_iter().filter(|p| first.contains(p)).collect();
    assert!(lasting.is_empty(), "zombies: {lasting:?}");
    agent.wait_reports_on_disk();
    assert!(crash_files(&agent.crash_dir()).len() >= 60, "a report (json + stderr) per crash");
}

#[test]
fn crash_reports_are_pruned_to_the_configured_count() {
    let cfg =
        fast_config("restart_initial_delay_ms = 10\nrestart_max_delay_secs = 0.05\ncrash_reports_keep = 3");
    // Seven crashes, then an incarnation that runs on: the listing below never races with
    // a report being written.
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "exit:2@0.02x7")]);
    agent.wait_running(8, T);
    agent.wait_reports_on_disk();
    let files = crash_files(&agent.crash_dir());
    assert_eq!(files.len(), 6, "3 reports kept: {files:?}");
}

#[test]
fn healthz_is_ok_only_while_running() {
    let cfg = fast_config("restart_initial_delay_ms = 1500");
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "segv@0.5x1")]);
    agent.wait_running(1, T);
    assert_eq!(agent.get("/healthz"), (200, "ok\n".to_string()));
    agent.wait_status(T, "backoff", |s| s["collector"]["state"] == "backoff");
    let (code, body) = agent.get("/healthz");
    assert_eq!(code, 503);
    assert!(body.contains("SIGSEGV") && body.contains("backoff"), "{body}");
    assert_eq!(agent.get("/nope").0, 404);
}

#[test]
fn status_has_the_contract_fields() {
    let agent = Agent::start(&fast_config(""), &[]);
    agent.wait_status(T, "a heartbeat ack", |s| s["collector"]["heartbeat"]["rtt_ms"].is_f64());
    let s = agent.status();
    assert_eq!(s["pid"].as_i64(), Some(agent.pid() as i64));
    assert!(s["version"].is_string() && s["uptime_ms"].is_u64());
    let c = &s["collector"];
    for k in ["state", "pid", "incarnation", "restarts", "next_restart_in_ms", "heartbeat", "last_exit"] {
        assert!(c.get(k).is_some(), "collector.{k} missing: {c:#}");
    }
    assert!(c["heartbeat"]["last_ack_ms_ago"].as_u64().unwrap() < 2000);
    assert!(s["collectors"].is_array() && s["uploads"].is_array());
}

#[test]
fn the_first_incarnation_sees_vigil_incarnation_1() {
    // exit:7x1 only fires where VIGIL_INCARNATION <= 1: exactly one crash, then stable.
    let agent = Agent::start(&fast_config(""), &[("VIGIL_FAULT", "exit:7x1")]);
    agent.wait_running(2, T);
    std::thread::sleep(Duration::from_millis(800));
    let s = agent.status();
    assert_eq!(s["collector"]["incarnation"], 2);
    assert_eq!(s["collector"]["last_exit"]["code"], 7);
}

#[test]
fn supervisor_and_collector_run_the_binary_under_test() {
    // With VIGIL_BIN (scripts/test sets it to the static build) these tests must exercise
    // that binary in both processes, not the one cargo built.
    let agent = Agent::start(&fast_config(""), &[]);
    let s = agent.wait_running(1, T);
    let want = std::fs::canonicalize(vigil()).unwrap();
    let child = s["collector"]["pid"].as_i64().unwrap();
    for pid in [agent.pid() as i64, child] {
        assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), want, "pid {pid}");
    }
}

#[test]
fn an_upgrade_on_disk_does_not_change_the_running_collector() {
    // Until the agent restarts, a collector restart runs the file the supervisor was
    // started from, even after the file at its path was replaced.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("vigil");
    std::fs::copy(vigil(), &bin).unwrap();
    let cfg = fast_config("restart_initial_delay_ms = 10");
    let cfg_path = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg_path,
        format!("{cfg}\n[agent]\ndata_dir = \"{}\"\n", dir.path().join("data").display()),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Reaped::spawn(
        std::process::Command::new(&bin)
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("VIGIL_FAULT", "exit:3@0.3x1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    // Replace the binary the way `install` does: a new file (here a script) at the path.
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\nexit 9\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let t0 = std::time::Instant::now();
    let second = loop {
        let text = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        if text.lines().any(|l| l.contains("Collector is running.") && l.contains("incarnation=2")) {
            break text;
        }
        assert!(t0.elapsed() < T, "no second incarnation:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(child);
    assert!(!second.contains("code=9"), "the replaced file ran as the collector:\n{second}");
}
