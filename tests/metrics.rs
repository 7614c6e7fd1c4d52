//! `/metrics` of the real `vigil run`: checked by the real `promtool`, scraped by a real
//! Prometheus (both from the Debian package).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

/// Every collector, from the registry, for a config that disables them all.
const COLLECTORS: &[&str] = vigil_actors::collector::collectors::NAMES;

/// Runs `promtool check metrics` on `body`; panics with its complaints unless it is silent and
/// exits 0.
fn promtool_accepts(body: &str) {
    let exe = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("promtool is not installed: run scripts/test (it installs the Debian prometheus package)");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, body).unwrap();
    let out = Command::new(exe)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}): {said}\n{body}",
        out.status
    );
}

/// `name{labels}` → value of every sample line.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l}"));
            (series.to_string(), value.parse().unwrap_or_else(|e| panic!("{l}: {e}")))
        })
        .collect()
}

fn value(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    *s.get(series).unwrap_or_else(|| panic!("no {series} in {:#?}", s.keys().collect::<Vec<_>>()))
}

/// Polls `/metrics` until it has `series`; returns the body.
fn wait_metrics(agent: &Agent, series: &str) -> String {
    let t0 = Instant::now();
    loop {
        let (code, body) = agent.get("/metrics");
        assert_eq!(code, 200, "{body}");
        if samples(&body).contains_key(series) {
            return body;
        }
        assert!(t0.elapsed() < T, "no {series} in /metrics:\n{body}\nlog:\n{}", agent.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_pass_promtool_with_samples_and_the_agents_own_figures() {
    // A sink that never connects (spool bytes, errors), and a first collector that segfaults.
    let cfg = format!(
        "{}\n[collectors]\ninterval_secs = 0.3\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"main\"\nurl = \"ws://127.0.0.1:9/v1/ingest\"\nflush_interval_secs = 0.3\n",
        fast_config("")
    );
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "segv@0.5x1")]);
    agent.wait_running(2, T);
    wait_metrics(&agent, "vigil_load_1");
    let body = wait_metrics(&agent, "vigil_collector_heartbeat_rtt_seconds");
    // The crash is counted under its stack's signature once the stack is symbolized.
    let t0 = Instant::now();
    while !agent
        .get("/metrics")
        .1
        .contains("vigil_collector_crashes_total{reason=\"signaled\",signal=\"SIGSEGV\",signature=\"")
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "the crash never got its signature");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = http_request(&agent.addr, "GET", "/metrics", None);
    assert_eq!(r.code, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    promtool_accepts(&body);
    promtool_accepts(&r.body);

    let s = samples(&r.body);
    let load = value(&s, "vigil_load_1");
    assert!((0.0..1000.0).contains(&load), "{load}");
    let idle = value(&s, "vigil_cpu_idle_ratio");
    assert!((0.0..=1.0).contains(&idle), "percent became a ratio: {idle}");
    assert!(value(&s, "vigil_mem_available_bytes") > 1e6);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(value(&s, &format!("vigil_build_info{{version=\"{version}\"}}")), 1.0);
    assert!(value(&s, "vigil_uptime_seconds") > 0.0);
    assert_eq!(value(&s, "vigil_collector_state{state=\"running\"}"), 1.0);
    assert_eq!(value(&s, "vigil_collector_state{state=\"backoff\"}"), 0.0);
    assert!(value(&s, "vigil_collector_restarts_total") >= 1.0);
    // One SIGSEGV, counted under its stack's signature (CONTRACT §6).
    let segv: Vec<_> = s
        .iter()
        .filter(|(k, _)| {
            k.starts_with("vigil_collector_crashes_total{reason=\"signaled\",signal=\"SIGSEGV\"")
        })
        .collect();
    assert_eq!(segv.len(), 1, "{segv:?}");
    assert_eq!(*segv[0].1, 1.0);
    assert!(segv[0].0.contains(",signature=\""), "{segv:?}");
    let rtt = value(&s, "vigil_collector_heartbeat_rtt_seconds");
    assert!(rtt > 0.0 && rtt < 2.0, "seconds, not ms: {rtt}");
    let took = value(&s, "vigil_collector_last_duration_seconds{collector=\"load\"}");
    assert!(took > 0.0 && took < 0.3, "seconds, not ms: {took}");
    assert!(value(&s, "vigil_collector_collections_total{collector=\"load\"}") >= 1.0);
    assert_eq!(value(&s, "vigil_collector_errors_total{collector=\"load\"}"), 0.0);
    assert_eq!(value(&s, "vigil_collector_quarantined{collector=\"load\"}"), 0.0);
    assert!(value(&s, "vigil_upload_spool_bytes{sink=\"main\"}") > 0.0);
    assert!(value(&s, "vigil_upload_errors_total{sink=\"main\"}") >= 1.0);
    assert_eq!(value(&s, "vigil_upload_connected{sink=\"main\"}"), 0.0);
    assert_eq!(value(&s, "vigil_upload_dropped_batches_total{reason=\"spool_full\",sink=\"main\"}"), 0.0);
    assert!(!r.body.contains("collector_duration_ms"), "only base units");

    // The same figures as /status.
    let st = agent.status();
    assert_eq!(st["collector"]["crash_counts"][0]["signal_name"], "SIGSEGV");
    assert!(st["uploads"][0]["errors"].as_u64() >= Some(1));
}

#[test]
fn metrics_before_any_sample_are_valid_and_bad_requests_do_not_hurt() {
    let mut cfg = fast_config("");
    for c in COLLECTORS {
        cfg.push_str(&format!("[collectors.{c}]\nenabled = false\n"));
    }
    let agent = Agent::start(&cfg, &[]);
    let (code, body) = agent.get("/metrics");
    assert_eq!(code, 200, "{body}");
    promtool_accepts(&body);
    let s = samples(&body);
    assert_eq!(value(&s, "vigil_collector_restarts_total"), 0.0);
    assert!(!s.keys().any(|k| k.starts_with("vigil_load")), "no samples yet: {body}");
    for (method, path) in [
        ("POST", "/metrics"),
        ("GET", "/metrics?x=%ZZ&&=="),
        ("GET", "/metrics/../../status"),
        ("GET", "/metrics%00"),
        ("DELETE", "/metrics"),
    ] {
        let r = http_request(&agent.addr, method, path, None);
        assert!(r.code != 0 && r.code != 500, "{method} {path}: {}", r.head);
    }
    assert_eq!(agent.get("/metrics").0, 200, "still serving");
    assert!(agent.log_lines("panicked").is_empty(), "{}", agent.log_tail());
}

#[test]
fn a_real_prometheus_scrapes_metrics_with_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "scrape-t0ken\n").unwrap();
    let cfg = format!(
        "{}token_file = \"{}\"\n[collectors]\ninterval_secs = 0.3\n[collectors.time_drift]\nenabled = false\n",
        fast_config(""),
        token.display()
    );
    let agent = Agent::start(&cfg, &[]);
    assert_eq!(http_get(&agent.addr, "/metrics", None).0, 401, "the token is required");
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: vigil\n    authorization:\n      credentials_file: {}\n\
             \x20   static_configs:\n      - targets: [\"{}\"]\n",
            token.display(),
            agent.addr
        ),
        &[],
    );
    let t0 = Instant::now();
    loop {
        let up = prom.query("up{job=\"vigil\"}");
        if up["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        assert!(
            t0.elapsed() < T,
            "the vigil target never came up: {up}\ntargets: {}\nprometheus log:\n{}",
            http_get(&prom.addr, "/api/v1/targets", None).1,
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let t0 = Instant::now();
    let load = loop {
        let v = prom.query("vigil_load_1{job=\"vigil\"}");
        if let Some(s) = v["data"]["result"].as_array().and_then(|r| r.first()).cloned() {
            break s;
        }
        assert!(t0.elapsed() < T, "vigil_load_1 never scraped: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(load["metric"]["instance"], agent.addr.as_str());
    let v: f64 = load["value"][1].as_str().unwrap().parse().unwrap();
    assert!(v >= 0.0);
    let info = prom.query("vigil_build_info");
    assert_eq!(info["data"]["result"][0]["metric"]["version"], env!("CARGO_PKG_VERSION"), "{info}");
    let health = http_get(&prom.addr, "/api/v1/targets", None).1;
    assert!(health.contains("\"health\":\"up\""), "{health}");
}
