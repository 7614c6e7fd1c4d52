//! Uploads with real peers: the real `vigil run` and the real `vigil receive`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

struct Receiver {
    child: Child,
    pub addr: String,
    pub out: PathBuf,
}

impl Receiver {
    /// Starts `vigil receive` on `listen` (`127.0.0.1:0` picks a port) writing to `out`.
    fn start(listen: &str, out: &Path, log: &Path) -> Receiver {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(VIGIL)
            .args(["receive", "--listen", listen, "--out"])
            .arg(out)
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
                l.split("Receiving at ws://")
                    .nth(1)
                    .and_then(|r| r.split("/v1/ingest").next())
                    .map(str::to_string)
            }) {
                r.addr = addr;
                return r;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "receiver did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
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

fn config(url: &str) -> String {
    format!(
        "{}\n[collectors]\ninterval_secs = 0.2\n[collectors.time_drift]\nenabled = false\n\n\
         [[upload]]\nname = \"main\"\nurl = \"{url}\"\nflush_interval_secs = 0.3\n",
        fast_config("")
    )
}

fn wait_lines(r: &Receiver, n: usize) -> Vec<Value> {
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
    let st = agent.status();
    let up = &st["uploads"][0];
    assert_eq!(
        (up["name"].as_str(), up["type"].as_str(), up["connected"].as_bool()),
        (Some("main"), Some("vigil"), Some(true))
    );
    assert!(up["sent_batches"].as_u64().unwrap() >= 6);
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
    let agent = agent.restart(&cfg);
    let s = agent.status();
    let d = &s["uploads"][0]["dropped"];
    assert_eq!(d["corrupt_records"], 1, "{s:#}");
    assert!(d["torn_bytes"].as_u64().unwrap() > 0, "{s:#}");
    assert!(agent.log_lines("damaged records").len() == 1);
    drop(dir);
}
