//! The other ingest paths a fleet runs, with real peers: an OTLP/HTTP receiver built on the
//! official OpenTelemetry protobuf definitions (PyPI `opentelemetry-proto`, run by Debian's
//! python3: tests/support/otlp_receiver.py), and a real VictoriaMetrics (Debian
//! `victoria-metrics`) taking remote write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(40);

/// tests/support/otlp_receiver.py on a free loopback port, writing one JSON line per
/// request it decoded (and one `refused` line per request it was told to refuse).
struct OtlpReceiver {
    _child: Reaped,
    addr: String,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl OtlpReceiver {
    fn start(extra: &[&str]) -> OtlpReceiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("otlp.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/otlp_receiver.py");
        let mut child = Reaped::spawn(
            Command::new("/usr/bin/python3")
                .arg(script)
                .args(["--listen", "127.0.0.1:0", "--out"])
                .arg(&out)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        );
        let mut line = String::new();
        let stdout = child.0.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| {
                panic!("the OTLP receiver did not start ({line:?}); run scripts/test (it installs opentelemetry-proto)")
            })
            .to_string();
        OtlpReceiver { _child: child, addr, out, _dir: dir }
    }

    /// The complete lines so far (the last one may still be being written).
    fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text[..text.rfind('\n').map_or(0, |i| i + 1)]
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
            .collect()
    }

    /// The accepted requests to `path`.
    fn accepted(&self, path: &str) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l["path"] == path && l.get("refused").is_none()).collect()
    }
}

fn otlp_config(extra_agent: &str, url: &str) -> String {
    format!(
        "{}\n[agent]\n{extra_agent}\n[collectors]\ninterval_secs = 0.3\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"otel\"\ntype = \"otlp\"\nurl = \"{url}\"\nflush_interval_secs = 0.3\n",
        fast_config("")
    )
}

/// A string attribute of an OTLP attribute list, as MessageToDict renders it.
fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a str> {
    attrs.as_array()?.iter().find(|a| a["key"] == key)?["value"]["string_value"].as_str()
}

/// Every data point of metric `name` in the accepted metrics requests: (time in ns, value,
/// point attributes).
fn points(lines: &[Value], name: &str) -> Vec<(u64, f64, Value)> {
    let mut out = Vec::new();
    for l in lines {
        for rm in l["resource_metrics"].as_array().into_iter().flatten() {
            for sm in rm["scope_metrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten().filter(|m| m["name"] == name) {
                    for p in m["gauge"]["data_points"].as_array().into_iter().flatten() {
                        let t = p["time_unix_nano"].as_str().unwrap().parse().unwrap();
                        out.push((t, p["as_double"].as_f64().unwrap_or(0.0), p["attributes"].clone()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_otlp_sink_sends_gauges_and_crash_reports_that_the_official_definitions_decode() {
    let r = OtlpReceiver::start(&[]);
    let agent = Agent::start(
        &otlp_config("hostname = \"otlp-host\"\ntags = { dc = \"eu-1\" }", &format!("http://{}", r.addr)),
        &[("VIGIL_FAULT", "segv@0.6x1")],
    );
    let s = agent.wait_running(2, T);
    let crash_id = s["collector"]["last_exit"]["crash_report"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while r.accepted("/v1/logs").is_empty() || points(&r.accepted("/v1/metrics"), "fs_disk_util").is_empty() {
        assert!(t0.elapsed() < T, "no crash report or no fs samples: {:?}\n{}", r.lines(), agent.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = r.accepted("/v1/metrics");
    let first = &metrics[0];
    assert_eq!(first["content_encoding"], "gzip", "{first}");
    assert_eq!(first["content_type"], "application/x-protobuf");
    let res = &first["resource_metrics"][0]["resource"]["attributes"];
    let agent_id = std::fs::read_to_string(agent.data_dir().join("agent_id")).unwrap();
    assert_eq!(attr(res, "service.name"), Some("vigil"), "{res}");
    assert_eq!(attr(res, "service.version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(attr(res, "host.name"), Some("otlp-host"));
    assert_eq!(attr(res, "host.id"), Some(agent_id.trim()));
    assert_eq!(attr(res, "dc"), Some("eu-1"), "agent tags are resource attributes");
    // Gauges named natively, with the declared units; tags are point attributes.
    let all_metrics: Vec<&Value> = metrics
        .iter()
        .flat_map(|l| l["resource_metrics"][0]["scope_metrics"][0]["metrics"].as_array().unwrap())
        .collect();
    let unit = |name: &str| all_metrics.iter().find(|m| m["name"] == name).map(|m| m["unit"].clone());
    assert_eq!(unit("load_1"), Some(Value::from("1")));
    assert_eq!(unit("fs_disk_util"), Some(Value::from("%")));
    assert_eq!(unit("mem_available_bytes"), Some(Value::from("By")));
    let loads = points(&metrics, "load_1");
    assert!(!loads.is_empty() && loads.iter().all(|(_, v, _)| *v >= 0.0), "{loads:?}");
    let fs = points(&metrics, "fs_disk_util");
    assert!(fs.iter().all(|(_, _, a)| attr(a, "mount").is_some() && attr(a, "dc").is_none()), "{fs:?}");
    // Every point lies in the agent's lifetime.
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64;
    assert!(loads.iter().all(|(t, _, _)| *t <= now_ns && now_ns - *t < 120_000_000_000));
    // The crash report as a log record, with its stack.
    let logs = r.accepted("/v1/logs");
    assert_eq!(logs.len(), 1, "one report, sent once: {logs:?}");
    let rec = &logs[0]["resource_logs"][0]["scope_logs"][0]["log_records"][0];
    assert_eq!(rec["severity_number"], "SEVERITY_NUMBER_FATAL", "{rec}");
    assert_eq!(rec["severity_text"], "FATAL");
    let a = &rec["attributes"];
    assert_eq!(attr(a, "vigil.crash.id"), Some(crash_id.as_str()));
    assert_eq!(attr(a, "vigil.crash.reason"), Some("signaled"));
    assert_eq!(attr(a, "vigil.crash.signal_name"), Some("SIGSEGV"));
    let stack = attr(a, "exception.stacktrace").unwrap_or_else(|| panic!("no stack: {rec}"));
    assert!(stack.starts_with("#0 ") && stack.contains("fault::"), "{stack}");
    assert!(rec["body"]["string_value"].as_str().unwrap().contains("SIGSEGV"), "{rec}");
    let st = agent.status();
    let up = &st["uploads"][0];
    assert_eq!((up["type"].as_str(), up["connected"].as_bool()), (Some("otlp"), Some(true)), "{up}");
    assert_eq!(up["dropped_samples"], 0, "{up}");
}

#[test]
fn an_otlp_receiver_answering_503_for_a_while_gets_every_point_afterwards() {
    // Four refusals: the sink's backoff (1, 2, 4, 8 s) makes that about 15 s of outage.
    let r = OtlpReceiver::start(&["--fail-first", "4", "--fail-status", "503", "--retry-after", "1"]);
    let started = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64;
    let agent = Agent::start(&otlp_config("", &format!("http://{}", r.addr)), &[]);
    agent.wait_status(T, "a 503 with its Retry-After in last_error", |s| {
        s["uploads"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e == "HTTP 503: test refuses (Retry-After 1 s)")
    });
    // The refusals end; everything spooled meanwhile goes through, in order.
    let s = agent.wait_status(T, "the backlog delivered", |s| {
        let up = &s["uploads"][0];
        up["connected"] == true && up["acked_seq"].as_u64() >= Some(6) && up["acked_seq"] == up["last_seq"]
    });
    let up = &s["uploads"][0];
    assert_eq!(up["dropped_samples"], 0, "{up}");
    assert!(up["errors"].as_u64() >= Some(4), "{up}");
    let refused = r.lines().iter().filter(|l| l.get("refused").is_some()).count();
    assert_eq!(refused, 4);
    let mut times: Vec<u64> =
        points(&r.accepted("/v1/metrics"), "load_1").into_iter().map(|(t, _, _)| t).collect();
    let distinct: BTreeSet<u64> = times.iter().copied().collect();
    assert_eq!(distinct.len(), times.len(), "no point twice");
    times.sort();
    // From the first collection (made while the receiver refused) on, no hole.
    assert!(times[0] - started < 3_000_000_000, "the first load_1 is from the start");
    for w in times.windows(2) {
        assert!(w[1] - w[0] < 1_500_000_000, "a hole in load_1 between {} and {}", w[0], w[1]);
    }
}

#[test]
fn a_partial_success_counts_its_rejected_points() {
    let r = OtlpReceiver::start(&["--reject-points", "2"]);
    let agent = Agent::start(&otlp_config("", &format!("http://{}/", r.addr)), &[]);
    let s = agent.wait_status(T, "rejected points counted", |s| {
        s["uploads"][0]["dropped"]["rejected_samples"].as_u64() >= Some(4)
    });
    let up = &s["uploads"][0];
    assert!(up["last_error"].as_str().unwrap().contains("test rejects 2"), "{up}");
    assert_eq!(up["dropped"]["rejected_batches"], 0, "the requests themselves were accepted: {up}");
    assert!(r.accepted("/v1/metrics").len() >= 2);
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("vigil_upload_dropped_samples_total{")
            && l.contains("reason=\"rejected\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// A real VictoriaMetrics (Debian package) on a free loopback port with its own storage.
struct VictoriaMetrics {
    _child: Reaped,
    addr: String,
    _dir: tempfile::TempDir,
}

impl VictoriaMetrics {
    fn start() -> VictoriaMetrics {
        let exe = Path::new("/usr/bin/victoria-metrics");
        assert!(
            exe.exists(),
            "victoria-metrics is not installed: run scripts/test (it installs the Debian package)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("vm.log")).unwrap();
        let child = Reaped::spawn(
            Command::new(exe)
                .arg(format!("-httpListenAddr={addr}"))
                .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
                .args([
                    "-retentionPeriod=1d",
                    "-search.latencyOffset=0s",
                    "-search.disableCache",
                    "-loggerLevel=ERROR",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        let t0 = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() || http_get(&addr, "/health", None).0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(30), "victoria-metrics never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        VictoriaMetrics { _child: child, addr, _dir: dir }
    }

    /// The series matching `selector` with their values (`/api/v1/export`, one JSON object
    /// per line), after making what was written searchable.
    fn export(&self, selector: &str) -> Vec<Value> {
        http_get(&self.addr, "/internal/force_flush", None);
        let encoded: String = selector
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http_get(&self.addr, &format!("/api/v1/export?match[]={encoded}"), None);
        assert_eq!(code, 200, "{body}");
        body.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

#[test]
fn a_real_victoria_metrics_receives_remote_write_and_answers_queries() {
    let vm = VictoriaMetrics::start();
    let cfg = format!(
        "{}\n[agent]\nhostname = \"vm-test-host\"\n[collectors]\ninterval_secs = 0.3\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"vm\"\ntype = \"remote_write\"\nurl = \"http://{}/api/v1/write\"\nflush_interval_secs = 0.3\n",
        fast_config(""),
        vm.addr
    );
    let agent = Agent::start(&cfg, &[]);
    let t0 = Instant::now();
    let series = loop {
        let s = vm.export("{__name__=\"load_1\"}");
        if s.first().is_some_and(|s| s["values"].as_array().unwrap().len() >= 5) {
            break s;
        }
        assert!(t0.elapsed() < T, "load_1 never reached VictoriaMetrics; agent log:\n{}", agent.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["metric"]["host"], "vm-test-host");
    let ts: Vec<i64> =
        series[0]["timestamps"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[1] > w[0]), "in order, no duplicates: {ts:?}");
    let fs = vm.export("{__name__=\"fs_disk_util\"}");
    assert!(fs.iter().any(|s| s["metric"]["mount"].is_string()), "{fs:?}");
    let tcp = vm.export("{__name__=\"tcp_connections\",state=\"listen\"}");
    assert!(!tcp.is_empty(), "the new collectors' series arrive too");
    let s = agent.status();
    let up = &s["uploads"][0];
    assert_eq!(up["connected"], true, "{up}");
    assert_eq!(up["dropped_samples"], 0, "{up}");
}
