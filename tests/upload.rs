//! Uploads with real peers: the real `vigil run` and the real `vigil receive`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

pub struct Receiver {
    child: Child,
    pub addr: String,
    pub out: PathBuf,
}

impl Receiver {
    /// Starts `vigil receive` on `listen` (`127.0.0.1:0` picks a port) writing to `out`.
    pub fn start(listen: &str, out: &Path, log: &Path) -> Receiver {
        Receiver::start_with(listen, out, log, &[])
    }

    pub fn start_with(listen: &str, out: &Path, log: &Path, extra: &[&str]) -> Receiver {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(vigil())
            .args(["receive", "--listen", listen, "--out"])
            .arg(out)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap();
        // Owned at once, so Drop reaps the process even if the wait below fails.
        let mut r = Receiver { child, addr: String::new(), out: out.to_path_buf() };
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text.lines().rev().find_map(|l| {
                l.split("Receiving at ")
                    .nth(1)
                    .and_then(|r| r.split_once("://"))
                    .and_then(|(_, r)| r.split("/v1/ingest").next())
                    .map(str::to_string)
            }) {
                r.addr = addr;
                return r;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "receiver did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The complete lines so far: the receiver may be in the middle of writing the last
    /// one (a write to a file is not atomic for a concurrent reader), so a line without its
    /// newline yet is left for the next look.
    pub fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn config(url: &str) -> String {
    format!(
        "{}\n[collectors]\ninterval_secs = 0.2\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"main\"\nurl = \"{url}\"\nflush_interval_secs = 0.3\n",
        fast_config("")
    )
}

pub fn wait_lines(r: &Receiver, n: usize) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let l = r.lines();
        if l.len() >= n {
            return l;
        }
        assert!(t0.elapsed() < T, "only {} batches arrived", l.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn receive_gets_contiguous_seqs_with_contract_names() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let agent = Agent::start(&config(&format!("ws://{}/v1/ingest", r.addr)), &[]);
    let lines = wait_lines(&r, 6);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "contiguous from 1");
    let agent_id = lines[0]["agent_id"].as_str().unwrap();
    assert_eq!(agent_id.len(), 32);
    assert_eq!(std::fs::read_to_string(agent.data_dir().join("agent_id")).unwrap().trim(), agent_id);
    let names: BTreeSet<&str> = lines
        .iter()
        .flat_map(|l| l["samples"].as_array().unwrap())
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for n in [
        "cpu_user",
        "cpu_idle",
        "load_1",
        "mem_util",
        "mem_available_bytes",
        "fs_disk_util",
        "processes",
        "proc_threads",
    ] {
        assert!(names.contains(n), "{n} uploaded: {names:?}");
    }
    let s = &lines[1]["samples"][0];
    assert!(
        s["ts_ms"].as_i64().unwrap() > 1_700_000_000_000 && s["tags"].is_object() && s["value"].is_number()
    );
    // The receiver stores a line before it acks, and the sink publishes its status every
    // 200 ms: the count catches up with what is on disk shortly after.
    let st = agent
        .wait_status(T, "six acknowledged batches", |s| s["uploads"][0]["sent_batches"].as_u64() >= Some(6));
    let up = &st["uploads"][0];
    assert_eq!(
        (up["name"].as_str(), up["type"].as_str(), up["connected"].as_bool()),
        (Some("main"), Some("vigil"), Some(true))
    );
}

#[test]
fn an_outage_and_a_supervisor_sigkill_lose_no_batch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let log = dir.path().join("recv.log");
    let r = Receiver::start("127.0.0.1:0", &out, &log);
    let port_addr = r.addr.clone();
    let cfg = config(&format!("ws://{port_addr}/v1/ingest"));
    let agent = Agent::start(&cfg, &[]);
    wait_lines(&r, 3);
    // The receiver dies: batches pile up in the spool.
    drop(r);
    let s =
        agent.wait_status(T, "a growing spool", |s| s["uploads"][0]["spooled_batches"].as_u64() >= Some(4));
    assert_eq!(s["uploads"][0]["connected"], false);
    // The supervisor is SIGKILLed mid-outage, then everything comes back.
    agent.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    let agent = agent.restart(&cfg);
    let r = Receiver::start(&port_addr, &out, &log);
    let s = agent.wait_status(T, "the spool drained", |s| {
        let u = &s["uploads"][0];
        u["connected"] == true && u["spooled_batches"] == 0 && u["acked_seq"].as_u64() >= Some(10)
    });
    let last = s["uploads"][0]["acked_seq"].as_u64().unwrap();
    let seqs: Vec<u64> = r.lines().iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[..last as usize], (1..=last).collect::<Vec<_>>()[..], "every seq once, in order, no gap");
}

#[test]
fn a_damaged_spool_is_recovered_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // No receiver at all: everything stays in the spool.
    let cfg = config("ws://127.0.0.1:9/v1/ingest");
    let agent = Agent::start(&cfg, &[]);
    agent.wait_status(T, "6 spooled batches", |s| s["uploads"][0]["spooled_batches"].as_u64() >= Some(6));
    let (_, agent) = agent.stop(Duration::from_secs(10));
    let spool = agent.data_dir().join("spool/main");
    let seg = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    // Flip a bit in the second record's payload, and tear the tail.
    let second = data.windows(4).enumerate().filter(|(_, w)| *w == b"VSR1").nth(1).unwrap().0;
    data[second + 30] ^= 0x10;
    let torn = data.len() - 7;
    data.truncate(torn);
    std::fs::write(&seg, &data).unwrap();
    let records_left = data.windows(4).filter(|w| *w == b"VSR1").count() as u64 - 2;
    // And entries named like spool files that are not: a directory, garbage, a garbage
    // `acked` (each used to make `vigil run` exit 1).
    std::fs::create_dir(spool.join("00000000000000090000.seg")).unwrap();
    std::fs::write(spool.join("00000000000000090001.seg"), b"\x00garbage\xff").unwrap();
    std::fs::write(spool.join("acked"), b"twelve").unwrap();
    let agent = agent.restart(&cfg);
    let s = agent.status();
    let d = &s["uploads"][0]["dropped"];
    assert_eq!(d["corrupt_records"], 1, "{s:#}");
    assert!(d["torn_bytes"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(d["bad_files"], 3, "{s:#}");
    assert!(
        s["uploads"][0]["spooled_batches"].as_u64() >= Some(records_left),
        "the good records are all still there: {s:#}"
    );
    assert!(spool.join("00000000000000090000.seg.bad").is_dir());
    assert!(spool.join("00000000000000090001.seg.bad").is_file());
    assert_eq!(std::fs::read(spool.join("acked.bad")).unwrap(), b"twelve");
    assert!(agent.log_lines("damaged records").len() == 1);
    assert_eq!(agent.log_lines("Damaged spool file set aside").len(), 3, "{}", agent.log_tail());
    drop(dir);
}

/// After the spool is lost (the disk replaced, a wipe) the sink starts again at seq 1 while
/// the receiver already holds higher seqs of the same agent: the receiver's Hello makes the
/// sink number above them, and the batches spooled before it connected are spooled again
/// above them. Nothing is discarded as a duplicate.
#[test]
fn a_lost_spool_numbers_above_what_the_receiver_holds_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let rlog = dir.path().join("recv.log");
    let r = Receiver::start("127.0.0.1:0", &out, &rlog);
    let addr = r.addr.clone();
    let cfg = config(&format!("ws://{addr}/v1/ingest"));
    let agent = Agent::start(&cfg, &[]);
    wait_lines(&r, 4);
    let (_, agent) = agent.stop(Duration::from_secs(10));
    drop(r);
    let held = r_max_seq(&out);
    assert!(held >= 4);
    std::fs::remove_dir_all(agent.data_dir().join("spool/main")).unwrap();
    // Restarted with the receiver away: batches 1, 2, 3 … go into the new spool.
    let agent = agent.restart(&cfg);
    let s = agent.wait_status(T, "a few batches in the new spool", |s| {
        s["uploads"][0]["spooled_batches"].as_u64() >= Some(3)
    });
    assert!(s["uploads"][0]["last_seq"].as_u64().unwrap() <= held, "the new spool starts low: {s:#}");
    let away_until = chrono::Utc::now().timestamp_millis();
    let r = Receiver::start(&addr, &out, &rlog);
    let s = agent.wait_status(T, "the new spool delivered", |s| {
        let u = &s["uploads"][0];
        u["connected"] == true && u["spooled_batches"] == 0 && u["acked_seq"].as_u64() > Some(held)
    });
    let lines = r.lines();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    let after: Vec<u64> = seqs.iter().copied().filter(|&x| x > held).collect();
    assert_eq!(
        seqs.len(),
        held as usize + after.len(),
        "nothing stored twice, nothing below the mark: {seqs:?}"
    );
    assert_eq!(
        after,
        ((held + 1)..=held + after.len() as u64).collect::<Vec<_>>(),
        "contiguous above the mark"
    );
    let earliest_new = lines
        .iter()
        .filter(|l| l["seq"].as_u64() > Some(held))
        .flat_map(|l| l["samples"].as_array().unwrap().clone())
        .map(|x| x["ts_ms"].as_i64().unwrap())
        .min()
        .unwrap();
    assert!(earliest_new < away_until, "samples spooled while the receiver was away arrived");
    assert_eq!(agent.log_lines("numbering continues above the receiver's").len(), 1, "{}", agent.log_tail());
    assert_eq!(s["uploads"][0]["dropped_samples"], 0);
}

fn r_max_seq(out: &Path) -> u64 {
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .max()
        .unwrap()
}

/// A receiver that crashed in the middle of a line, after a line that is not UTF-8, starts:
/// the torn line is cut off (kept in `FILE.torn`), the bad line skipped, and the seqs of the
/// good lines still count, so the agent's next batch is numbered above them.
#[test]
fn receive_repairs_a_torn_last_line_and_starts_on_a_non_utf8_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let agent_id = "0123456789abcdef0123456789abcdef";
    let line = |seq: u64| {
        format!(
            "{{\"agent_id\":\"{agent_id}\",\"sink\":\"main\",\"seq\":{seq},\"host\":\"h\",\"samples\":[],\"crash_reports\":[]}}\n"
        )
    };
    let mut data = line(1).into_bytes();
    data.extend(b"\xff\xfe not utf-8 \xc3\x28\n");
    data.extend(line(2).as_bytes());
    let torn = line(3);
    let torn = &torn.as_bytes()[..torn.len() - 1]; // complete JSON, no newline: never acked
    data.extend(torn);
    std::fs::write(&out, &data).unwrap();
    let r = Receiver::start("127.0.0.1:0", &out, &dir.path().join("recv.log"));
    assert_eq!(std::fs::read(dir.path().join("out.jsonl.torn")).unwrap(), torn);
    let kept = std::fs::read(&out).unwrap();
    assert_eq!(kept.len(), data.len() - torn.len());
    let rlog = std::fs::read_to_string(dir.path().join("recv.log")).unwrap();
    assert!(rlog.contains("torn line"), "{rlog}");
    // An agent with that ID and a new spool: its batches go above 2 (3 was never acked).
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("data")).unwrap();
    std::fs::write(home.path().join("data/agent_id"), agent_id).unwrap();
    let agent = Agent::start_in(home, &config(&format!("ws://{}/v1/ingest", r.addr)), &[]);
    agent.wait_status(T, "two batches acked", |s| s["uploads"][0]["acked_seq"].as_u64() >= Some(4));
    let text = std::fs::read(&out).unwrap();
    let seqs: Vec<u64> = text[kept.len()..]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs[..2], [3, 4], "numbered above the receiver's 2: {seqs:?}");
}

/// After the clock steps back, a new crash report must still count as the newest: neither
/// pruned at once (it would be, ordered by the wall clock in its name, behind reports from
/// "the future") nor skipped for upload (the sink sends reports newer than the last it sent).
/// Here the reports from before the step are dated 2099.
#[test]
fn a_crash_report_made_after_the_clock_stepped_back_is_kept_and_sent() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let cfg = config(&format!("ws://{}/v1/ingest", r.addr))
        .replace("[supervisor]\n", "[supervisor]\ncrash_reports_keep = 3\n");
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "exit:3@0.3x1")]);
    let s = agent.wait_status(T, "the first report on disk", |s| {
        s["collector"]["last_exit"]["crash_report"].is_string()
            && s["collector"]["pending_crash_reports"] == 0
    });
    let first = s["collector"]["last_exit"]["crash_report"].as_str().unwrap().to_string();
    let _ = wait_lines(&r, 2);
    let (_, agent) = agent.stop(Duration::from_secs(10));
    let crashes = agent.crash_dir();
    let json = std::fs::read_to_string(crashes.join(format!("{first}.json"))).unwrap();
    let future: Vec<String> = (0..3).map(|i| format!("20990101T00000{i}.000Z-1")).collect();
    for id in &future {
        std::fs::write(crashes.join(format!("{id}.json")), json.replace(&first, id)).unwrap();
        std::fs::write(crashes.join(format!("{id}.stderr")), b"from before the step\n").unwrap();
    }
    // The sink already sent everything up to the newest of them.
    std::fs::write(agent.data_dir().join("spool/main/crash_reports_sent"), &future[2]).unwrap();
    let agent = agent.restart_with(&cfg, &[("VIGIL_FAULT", "exit:3@0.3x1")]);
    let s = agent.wait_status(T, "the new report on disk", |s| {
        s["collector"]["incarnation"].as_u64() >= Some(2) && s["collector"]["pending_crash_reports"] == 0
    });
    let new = s["collector"]["last_exit"]["crash_report"].as_str().unwrap().to_string();
    assert!(new > future[2], "{new} sorts after the reports from before the step");
    assert!(crashes.join(format!("{new}.json")).exists(), "the new report was pruned at once");
    let mut left: Vec<String> = std::fs::read_dir(&crashes)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
        .collect();
    left.sort();
    assert_eq!(left, vec![future[1].clone(), future[2].clone(), new.clone()], "the oldest went");
    let t0 = Instant::now();
    while !r
        .lines()
        .iter()
        .any(|l| l["crash_reports"].as_array().unwrap().iter().any(|c| c["id"] == new.as_str()))
    {
        assert!(t0.elapsed() < T, "the new report was never sent");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A spooled batch that no longer decodes (a record with a good checksum around bytes that
/// are not a batch) and a crash report that cannot be read are each counted, in `/status` and
/// `/metrics`, not only logged; the batches after the bad one are still delivered.
#[test]
fn an_undecodable_batch_and_an_unreadable_crash_report_are_counted() {
    let http = ScriptedHttp::start(vec![]);
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let mut spool = vigil_actors::upload::spool::Spool::open(&data.join("spool/prom"), 1 << 30).unwrap();
    assert_eq!(spool.append(b"\xc1 not a batch").unwrap(), 1);
    drop(spool);
    std::fs::create_dir_all(data.join("crashes")).unwrap();
    std::fs::write(data.join("crashes/29990101T000000.000Z-1.json"), b"{ torn").unwrap();
    let agent =
        Agent::start_in(home, &remote_write_config(&format!("http://{}/api/v1/write", http.addr)), &[]);
    let s = agent.wait_status(T, "both drops counted and a batch delivered", |s| {
        let u = &s["uploads"][0];
        u["dropped"]["undecodable_batches"] == 1
            && u["dropped"]["unreadable_crash_reports"] == 1
            && u["sent_batches"].as_u64() >= Some(1)
    });
    assert!(s["uploads"][0]["acked_seq"].as_u64() >= Some(2), "{s:#}");
    let (_, metrics) = agent.get("/metrics");
    for line in [
        "vigil_upload_dropped_batches_total{reason=\"undecodable\",sink=\"prom\"} 1",
        "vigil_upload_dropped_crash_reports_total{reason=\"unreadable\",sink=\"prom\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line}:\n{metrics}");
    }
    assert_eq!(agent.log_lines("counted as undecodable_batches").len(), 1, "{}", agent.log_tail());
}

/// A running dnsmasq answering `known.vigil.test` on a free loopback port.
struct Dnsmasq {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn start() -> Dnsmasq {
        let exe = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("dnsmasq is not installed: run scripts/test (it installs dnsmasq-base)");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(exe);
        cmd.args([
            "--no-daemon",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
        ])
        .arg(format!("--port={port}"))
        .arg("--address=/known.vigil.test/10.1.2.3")
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if unsafe { libc::geteuid() } == 0 {
            cmd.arg("--user=root");
        }
        let child = cmd.spawn().expect("start dnsmasq");
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq { child, port, _dir: dir }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds tests/support/resolver_spy.c into an LD_PRELOAD library.
fn build_spy(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/resolver_spy.c");
    let so = dir.join("resolver_spy.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    so
}

#[test]
fn nothing_calls_the_libc_resolver_while_dns_resolves_and_a_sink_uploads_to_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let spy = build_spy(dir.path());
    let calls = dir.path().join("resolver-calls.log");
    // Positive control: the spy does see a libc lookup.
    let control = Command::new("getent")
        .args(["ahosts", "localhost"])
        .env("LD_PRELOAD", &spy)
        .env("VIGIL_RESOLVER_LOG", &calls)
        .output()
        .unwrap();
    assert!(control.status.success());
    let seen = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(seen.contains("getaddrinfo(localhost)"), "the spy works: {seen:?}");
    std::fs::remove_file(&calls).unwrap();

    let dns = Dnsmasq::start();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let port = r.addr.rsplit(':').next().unwrap();
    let cfg = format!(
        "{}\n[collectors]\ninterval_secs = 0.3\n\
         [collectors.dns]\nnames = [\"known.vigil.test\", \"localhost\"]\nnameservers = [\"127.0.0.1:{}\"]\n\
         [collectors.time_drift]\nservers = [\"localhost:9\"]\ntimeout_ms = 200\n\n\
         [[upload]]\nname = \"main\"\nurl = \"ws://localhost:{port}/v1/ingest\"\nflush_interval_secs = 0.3\n",
        fast_config(""),
        dns.port
    );
    let spy_s = spy.display().to_string();
    let calls_s = calls.display().to_string();
    let agent =
        Agent::start(&cfg, &[("LD_PRELOAD", spy_s.as_str()), ("VIGIL_RESOLVER_LOG", calls_s.as_str())]);
    // Uploaded batches prove the sink resolved `localhost`; dns_success 1 proves the collector resolved.
    let t0 = Instant::now();
    loop {
        let ok =
            r.lines().iter().flat_map(|l| l["samples"].as_array().cloned().unwrap_or_default()).any(|s| {
                s["name"] == "dns_success" && s["tags"]["name"] == "known.vigil.test" && s["value"] == 1.0
            });
        if ok && r.lines().len() >= 3 {
            break;
        }
        assert!(t0.elapsed() < T, "no dns_success=1 uploaded; agent log:\n{}", agent.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(seen.is_empty(), "vigil called the libc resolver:\n{seen}");
}

#[test]
fn crash_reports_reach_the_sink_once_with_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let agent =
        Agent::start(&config(&format!("ws://{}/v1/ingest", r.addr)), &[("VIGIL_FAULT", "segv@0.3x1")]);
    let s = agent.wait_running(2, T);
    let id = s["collector"]["last_exit"]["crash_report"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while r.lines().iter().all(|l| l["crash_reports"].as_array().is_none_or(|a| a.is_empty())) {
        assert!(t0.elapsed() < T, "no crash report uploaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A few more batches: the report must not come again.
    wait_lines(&r, r.lines().len() + 3);
    let reports: Vec<Value> =
        r.lines().iter().flat_map(|l| l["crash_reports"].as_array().cloned().unwrap_or_default()).collect();
    assert_eq!(reports.len(), 1, "sent once: {reports:#?}");
    assert_eq!(reports[0]["id"], id.as_str());
    assert_eq!(reports[0]["signal_name"], "SIGSEGV");
    assert_eq!(reports[0]["incarnation"], 1);
    drop(agent);
}

/// A real Prometheus that accepts remote write, and scrapes nothing.
fn remote_write_prometheus() -> Prometheus {
    Prometheus::start("global:\n  scrape_interval: 1h\n", &["--web.enable-remote-write-receiver"])
}

#[test]
fn a_real_prometheus_receives_remote_write_and_answers_queries() {
    let prom = remote_write_prometheus();
    let cfg = format!(
        "{}\n[agent]\nhostname = \"rw-test-host\"\n[collectors]\ninterval_secs = 0.3\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"prom\"\ntype = \"remote_write\"\nurl = \"http://{}/api/v1/write\"\nflush_interval_secs = 0.3\n",
        fast_config(""),
        prom.addr
    );
    let agent = Agent::start(&cfg, &[]);
    let t0 = Instant::now();
    let result = loop {
        let v = prom.query("load_1");
        let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
        if !r.is_empty() {
            break r;
        }
        assert!(t0.elapsed() < T, "load_1 never reached Prometheus; agent log:\n{}", agent.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(result[0]["metric"]["host"], "rw-test-host");
    let v: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(v >= 0.0);
    let fs = prom.query("fs_disk_util");
    assert!(
        fs["data"]["result"].as_array().unwrap().iter().any(|s| s["metric"]["mount"].is_string()),
        "{fs}"
    );
    let s = agent.status();
    let up = &s["uploads"][0];
    assert_eq!((up["type"].as_str(), up["connected"].as_bool()), (Some("remote_write"), Some(true)), "{up}");
    assert!(up["sent_batches"].as_u64().unwrap() >= 1);
    assert_eq!(up["dropped"]["rejected_samples"], 0);
}

/// A remote_write config sending to `url` every 0.3 s.
fn remote_write_config(url: &str) -> String {
    format!(
        "{}\n[collectors]\ninterval_secs = 0.3\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"prom\"\ntype = \"remote_write\"\nurl = \"{url}\"\nflush_interval_secs = 0.3\n",
        fast_config("")
    )
}

#[test]
fn a_404_during_maintenance_keeps_the_backlog_which_reaches_the_real_prometheus_after() {
    // A real Prometheus without its receiver answers 404 on /api/v1/write, as a proxy in
    // maintenance would: batches must stay in the spool, not be dropped.
    let old = Prometheus::start("global:\n  scrape_interval: 1h\n", &[]);
    let agent = Agent::start(&remote_write_config(&format!("http://{}/api/v1/write", old.addr)), &[]);
    let s = agent.wait_status(T, "a backlog behind 404s", |s| {
        s["uploads"][0]["spooled_batches"].as_u64() >= Some(4)
            && s["uploads"][0]["last_error"].as_str().is_some_and(|e| e.starts_with("HTTP 404"))
    });
    let up = &s["uploads"][0];
    assert_eq!(up["dropped"]["rejected_samples"], 0, "a 404 is not the batch's fault: {up}");
    assert_eq!(up["acked_seq"], 0, "{up}");
    assert_eq!(up["connected"], false, "{up}");
    // The loads collected while the upstream answered 404: all of them must arrive.
    let collected_before = s["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "load")
        .and_then(|c| Some(c["collections"].as_u64()? - c["errors"].as_u64()?))
        .unwrap();
    let switched_at = chrono::Utc::now().timestamp_millis();
    let addr = old.addr.clone();
    drop(old);
    let new = Prometheus::start_at(
        &addr,
        "global:\n  scrape_interval: 1h\n",
        &["--web.enable-remote-write-receiver"],
        None,
    );
    let t0 = Instant::now();
    loop {
        // Samples of load_1 older than the switch that reached the new Prometheus.
        let q = format!("count_over_time(load_1[10m] @ {})", switched_at as f64 / 1000.0);
        let v = new.query(&q);
        let n = v["data"]["result"][0]["value"][1].as_str().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        // Each load collection makes one load_1 sample.
        if n >= collected_before {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "only {n} of {} load_1 samples from before the switch arrived; agent log:\n{}",
            collected_before,
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let s = agent
        .wait_status(T, "the backlog delivered", |s| s["uploads"][0]["spooled_batches"].as_u64() <= Some(1));
    assert_eq!(s["uploads"][0]["dropped"]["rejected_samples"], 0);
    assert_eq!(s["uploads"][0]["dropped_samples"], 0);
}

/// One request a [`ScriptedHttp`] answered: when it came, the status it got, its body.
type Answered = (Instant, u16, Vec<u8>);

/// An HTTP/1.1 server that answers requests from a script (status and headers, one per
/// request, then 204), and records when each came and its body.
struct ScriptedHttp {
    addr: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<Answered>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedHttp {
    fn start(script: Vec<(u16, &'static str)>) -> ScriptedHttp {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(script)));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                'requests: while !stop2.load(Ordering::Relaxed) {
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(_) => break,
                    }
                    if line.trim().is_empty() {
                        continue;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            break 'requests;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    r.get_ref()
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .and_then(|_| r.read_exact(&mut body))
                        .expect("request body");
                    r.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                    let (code, headers) = script.lock().unwrap().pop_front().unwrap_or((204, ""));
                    log2.lock().unwrap().push((Instant::now(), code, body));
                    let text = format!("scripted {code}");
                    let answer =
                        format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\n{headers}\r\n{text}", text.len());
                    if w.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        ScriptedHttp { addr, log, stop, thread: Some(thread) }
    }

    fn requests(&self) -> Vec<Answered> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ScriptedHttp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn remote_write_retries_auth_and_routing_errors_honours_retry_after_and_drops_only_bad_batches() {
    let http =
        ScriptedHttp::start(vec![(401, ""), (503, "Retry-After: 4\r\n"), (403, ""), (404, ""), (400, "")]);
    let agent = Agent::start(&remote_write_config(&format!("http://{}/api/v1/write", http.addr)), &[]);
    let t0 = Instant::now();
    while http.requests().iter().filter(|r| r.1 == 204).count() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "{:?}",
            http.requests().iter().map(|r| r.1).collect::<Vec<_>>()
        );
        if http.requests().len() == 2 {
            let s = agent.status();
            let e = s["uploads"][0]["last_error"].as_str().unwrap_or_default().to_string();
            assert!(e.is_empty() || e.starts_with("HTTP 401") || e.contains("Retry-After 4 s"), "{e}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reqs = http.requests();
    let codes: Vec<u16> = reqs.iter().map(|r| r.1).collect();
    assert_eq!(&codes[..6], &[401, 503, 403, 404, 400, 204], "{codes:?}");
    // The batch refused with 401, 503, 403 and 404 was sent again each time, unchanged,
    // until the 400 dropped it; the next request carries another batch.
    for r in &reqs[1..5] {
        assert_eq!(r.2, reqs[0].2, "the same batch is retried");
    }
    assert_ne!(reqs[5].2, reqs[0].2, "the rejected batch is not sent again");
    assert!(reqs[5..].iter().all(|r| r.2 != reqs[0].2));
    // 401 → 1 s backoff; the 503 asked for 4 s where the backoff would wait 2.
    let gap = reqs[2].0 - reqs[1].0;
    assert!(gap >= Duration::from_millis(3900), "Retry-After 4 was not honoured: {gap:?}");
    let s = agent.wait_status(T, "the rejected samples counted", |s| {
        s["uploads"][0]["dropped"]["rejected_samples"].as_u64() > Some(0)
    });
    let up = &s["uploads"][0];
    assert!(up["errors"].as_u64() >= Some(5), "{up}");
    assert_eq!(up["dropped_samples"], up["dropped"]["rejected_samples"], "{up}");
    assert_eq!(up["dropped"]["rejected_batches"], 1, "{up}");
}

#[test]
fn samples_buffered_at_a_clean_stop_are_spooled_and_sent_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let url = format!("ws://{}/v1/ingest", r.addr);
    // A flush interval far longer than the test: only the stop can push these samples out.
    let slow = config(&url).replace("flush_interval_secs = 0.3", "flush_interval_secs = 3600");
    let agent = Agent::start(&slow, &[]);
    agent.wait_status(T, "a few collections", |s| {
        s["collectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "load" && c["collections"].as_u64() >= Some(3))
    });
    let (st, agent) = agent.stop(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0));
    let stopped_at = chrono::Utc::now().timestamp_millis();
    assert!(r.lines().is_empty(), "nothing was flushed before the stop");
    let _agent = agent.restart(&config(&url));
    let lines = wait_lines(&r, 1);
    assert_eq!(lines[0]["seq"], 1);
    let first_ts =
        lines[0]["samples"].as_array().unwrap().iter().map(|s| s["ts_ms"].as_i64().unwrap()).min().unwrap();
    assert!(first_ts < stopped_at, "batch 1 holds samples from before the stop");
    assert!(lines[0]["samples"].as_array().unwrap().iter().any(|s| s["name"] == "load_1"));
    assert_eq!(lines[0]["sink"], "main");
}

#[test]
fn the_sink_sends_its_token_file_as_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let server_token = dir.path().join("server-token");
    std::fs::write(&server_token, "t0ken-42\n").unwrap();
    let r = Receiver::start_with(
        "127.0.0.1:0",
        &dir.path().join("out.jsonl"),
        &dir.path().join("recv.log"),
        &["--token-file", server_token.to_str().unwrap()],
    );
    let url = format!("ws://{}/v1/ingest", r.addr);
    let with_token = |file: &Path| {
        config(&url).replace(
            "flush_interval_secs = 0.3\n",
            &format!("flush_interval_secs = 0.3\ntoken_file = \"{}\"\n", file.display()),
        )
    };
    // A wrong token is refused: nothing stored, the sink says why and keeps its batches.
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "nope").unwrap();
    let bad = Agent::start(&with_token(&wrong), &[]);
    let s = bad.wait_status(T, "a refused connection", |s| {
        s["uploads"][0]["last_error"].is_string() && s["uploads"][0]["spooled_batches"].as_u64() >= Some(2)
    });
    assert_eq!(s["uploads"][0]["connected"], false);
    assert!(r.lines().is_empty(), "nothing accepted without the right token");
    drop(bad);
    // The right token is accepted.
    let good = dir.path().join("good-token");
    std::fs::write(&good, "t0ken-42").unwrap();
    let _agent = Agent::start(&with_token(&good), &[]);
    assert!(wait_lines(&r, 2).len() >= 2);
}

/// A receiver as an older vigil (or a third party following the samples form of
/// docs/protocol.md) implements it: WebSocket at `/v1/ingest`, each binary message a
/// MessagePack map with `seq` and `samples` (`name`, `tags`, `ts_ms`, `value`), acked with
/// `{"Ack": {"seq": N}}`. It knows nothing of Hello or of the columns encoding. It keeps what
/// it decoded, the raw messages, and the upgrade headers it saw.
struct OlderReceiver {
    addr: String,
    got: std::sync::Arc<std::sync::Mutex<OlderGot>>,
    stop: actix_web::dev::ServerHandle,
}

#[derive(Default)]
struct OlderGot {
    batches: Vec<(u64, Vec<OldSample>)>,
    messages: Vec<Vec<u8>>,
    offered: Vec<String>,
}

#[derive(serde::Deserialize, Debug, Clone, PartialEq)]
struct OldSample {
    name: String,
    tags: std::collections::BTreeMap<String, String>,
    ts_ms: i64,
    value: f64,
}

impl OlderReceiver {
    fn start() -> OlderReceiver {
        use actix_web::{web, App, HttpRequest, HttpServer};
        use futures_util::StreamExt;
        #[derive(serde::Deserialize)]
        struct OldBatch {
            seq: u64,
            samples: Vec<OldSample>,
        }
        let got = std::sync::Arc::new(std::sync::Mutex::new(OlderGot::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = got.clone();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let got = shared.clone();
                    App::new().route(
                        "/v1/ingest",
                        web::get().to(move |req: HttpRequest, body: web::Payload| {
                            let got = got.clone();
                            async move {
                                let offered = req
                                    .headers()
                                    .get("x-vigil-encodings")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                got.lock().unwrap().offered.push(offered);
                                let (resp, mut session, mut stream) = actix_ws::handle(&req, body)?;
                                actix_rt::spawn(async move {
                                    while let Some(Ok(actix_ws::Message::Binary(b))) = stream.next().await {
                                        let batch: OldBatch =
                                            rmp_serde::from_slice(&b).expect("a batch in the samples form");
                                        let ack = rmp_serde::to_vec_named(
                                            &serde_json::json!({"Ack": {"seq": batch.seq}}),
                                        )
                                        .unwrap();
                                        {
                                            let mut g = got.lock().unwrap();
                                            g.messages.push(b.to_vec());
                                            g.batches.push((batch.seq, batch.samples));
                                        }
                                        if session.binary(ack).await.is_err() {
                                            break;
                                        }
                                    }
                                });
                                Ok::<_, actix_web::Error>(resp)
                            }
                        }),
                    )
                })
                .workers(1)
                .bind("127.0.0.1:0")
                .unwrap();
                let addr = server.addrs()[0].to_string();
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                let _ = server.await;
            })
        });
        let (addr, stop) = rx.recv_timeout(Duration::from_secs(10)).expect("the older receiver starts");
        OlderReceiver { addr, got, stop }
    }
}

impl Drop for OlderReceiver {
    fn drop(&mut self) {
        let _ = futures_util::FutureExt::now_or_never(self.stop.stop(false));
    }
}

/// Spools in the columns form, but a receiver that does not answer the offer gets every batch
/// in the samples form, with the samples the collectors made, and acknowledges them.
#[test]
fn an_older_receiver_gets_the_samples_form() {
    let r = OlderReceiver::start();
    let agent = Agent::start(&config(&format!("ws://{}/v1/ingest", r.addr)), &[]);
    agent.wait_status(T, "four batches acknowledged by the older receiver", |s| {
        s["uploads"][0]["acked_seq"].as_u64() >= Some(4)
    });
    let got = r.got.lock().unwrap();
    assert_eq!(
        got.offered.first().map(String::as_str),
        Some("columns"),
        "the sink offers the columns encoding"
    );
    let seqs: Vec<u64> = got.batches.iter().map(|b| b.0).collect();
    assert_eq!(seqs[..4], [1, 2, 3, 4], "in order from 1");
    let names: BTreeSet<&str> = got.batches.iter().flat_map(|b| &b.1).map(|s| s.name.as_str()).collect();
    assert!(names.contains("cpu_user") && names.contains("load_1"), "{names:?}");
    assert!(got.batches.iter().all(|b| b.1.iter().all(|s| s.ts_ms > 1_700_000_000_000)));
    for m in &got.messages {
        let v: serde_json::Value = rmp_serde::from_slice(m).unwrap();
        assert!(v.get("columns").is_none() && v.get("series").is_none(), "the samples form only: {v}");
    }
    drop(got);
    // What the spool holds is the columns form (smaller on disk), read back for this receiver:
    // with the receiver gone, batches stay in the spool, looked at once the agent stopped.
    drop(r);
    agent.wait_status(T, "batches held in the spool", |s| {
        s["uploads"][0]["spooled_batches"].as_u64() >= Some(2)
    });
    let (_, agent) = agent.stop(Duration::from_secs(10));
    let mut spool =
        vigil_actors::upload::spool::Spool::open(&agent.data_dir().join("spool/main"), 1 << 30).unwrap();
    let held = spool.read_all();
    assert!(held.len() >= 2);
    #[derive(serde::Deserialize)]
    struct Keys {
        columns: Option<serde::de::IgnoredAny>,
        samples: Option<serde::de::IgnoredAny>,
    }
    for rec in held {
        let k: Keys = rmp_serde::from_slice(&rec.payload).unwrap();
        assert!(k.columns.is_some() && k.samples.is_none(), "batch {} spooled in the columns form", rec.seq);
    }
}

/// With `vigil receive`, the offer is taken: each series crosses a connection once, so after
/// the first batch a sample costs a few bytes on the wire (`sent_bytes`), against about 70
/// in the samples form; what is stored is exactly what was sampled. A batch an older agent
/// spooled in the samples form is delivered on the same connection.
#[test]
fn the_columns_encoding_is_negotiated_and_an_older_spool_still_reaches_the_receiver() {
    use vigil_actors::upload::protocol::{Batch, WireSample};
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let old = Batch {
        agent_id: "0123456789abcdef0123456789abcdef".into(),
        sink: "main".into(),
        seq: 1,
        host: "older".into(),
        samples: vec![WireSample {
            name: "load_1".into(),
            tags: [("from".to_string(), "older spool".to_string())].into_iter().collect(),
            ts_ms: 1_700_000_000_123,
            value: 0.25,
        }],
        crash_reports: vec![],
    };
    let mut spool = vigil_actors::upload::spool::Spool::open(&data.join("spool/main"), 1 << 30).unwrap();
    assert_eq!(spool.append(&rmp_serde::to_vec_named(&old).unwrap()).unwrap(), 1);
    drop(spool);
    let r = Receiver::start("127.0.0.1:0", &home.path().join("out.jsonl"), &home.path().join("recv.log"));
    let agent = Agent::start_in(home, &config(&format!("ws://{}/v1/ingest", r.addr)), &[]);
    let lines = wait_lines(&r, 12);
    assert_eq!(lines[0]["host"], "older");
    assert_eq!(
        lines[0]["samples"],
        serde_json::json!([{"name": "load_1", "tags": {"from": "older spool"}, "ts_ms": 1_700_000_000_123i64, "value": 0.25}])
    );
    let st = agent
        .wait_status(T, "twelve batches acknowledged", |s| s["uploads"][0]["acked_seq"].as_u64() >= Some(12));
    let sent = st["uploads"][0]["sent_bytes"].as_u64().unwrap();
    let lines = r.lines();
    let acked = st["uploads"][0]["acked_seq"].as_u64().unwrap() as usize;
    let acked_lines = &lines[..acked.min(lines.len())];
    let samples: Vec<&Value> = acked_lines.iter().flat_map(|l| l["samples"].as_array().unwrap()).collect();
    // The same samples in the samples form, as the sink would have sent them to an older receiver.
    let samples_form: usize = acked_lines
        .iter()
        .map(|l| {
            let sample = |s: &Value| WireSample {
                name: s["name"].as_str().unwrap().into(),
                tags: serde_json::from_value(s["tags"].clone()).unwrap(),
                ts_ms: s["ts_ms"].as_i64().unwrap(),
                value: s["value"].as_f64().unwrap_or(f64::NAN),
            };
            let b = Batch {
                agent_id: l["agent_id"].as_str().unwrap().into(),
                sink: l["sink"].as_str().unwrap().into(),
                seq: l["seq"].as_u64().unwrap(),
                host: l["host"].as_str().unwrap().into(),
                samples: l["samples"].as_array().unwrap().iter().map(sample).collect(),
                crash_reports: vec![],
            };
            rmp_serde::to_vec_named(&b).unwrap().len()
        })
        .sum();
    let per_sample = sent as f64 / samples.len() as f64;
    assert!(
        sent * 4 < samples_form as u64,
        "columns: {sent} bytes for {} samples ({per_sample:.1} B each) against {samples_form} in the samples form",
        samples.len()
    );
    for l in &lines[1..] {
        for s in l["samples"].as_array().unwrap() {
            assert!(
                s["name"].is_string()
                    && s["tags"].is_object()
                    && s["ts_ms"].as_i64() > Some(1_700_000_000_000)
            );
            assert!(s["value"].is_number() || s["value"].is_null(), "{s}");
        }
    }
}
