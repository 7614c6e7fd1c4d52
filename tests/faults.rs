//! CONTRACT §10 with real faults: the data dir on a loop-mounted ext4 frozen with `fsfreeze`,
//! a `vigil receive` stopped with SIGSTOP, local clients flooding the status endpoint, and a
//! panic inside the Supervisor actor. The supervisor must stay responsive and truthful
//! through each, and lose nothing.
//!
//! These tests run as root (they mount); the test command installs e2fsprogs and util-linux.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::upload::{config as upload_config, wait_lines, Receiver};

const T: Duration = Duration::from_secs(30);

fn run(cmd: &str, args: &[&str]) {
    let out =
        Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e} (is it installed?)"));
    assert!(out.status.success(), "{cmd} {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// A small ext4 file system on a loop device, mounted on a temp dir; unmounted on drop
/// (lazily, so a failed test never leaves it behind).
pub(crate) struct Ext4 {
    mnt: tempfile::TempDir,
    _img: tempfile::TempDir,
}

impl Ext4 {
    fn mount() -> Ext4 {
        Ext4::mount_in(&std::env::temp_dir())
    }

    /// Mounted on a new directory inside `parent`.
    pub(crate) fn mount_in(parent: &Path) -> Ext4 {
        let img_dir = tempfile::tempdir().unwrap();
        let img = img_dir.path().join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
        let mnt = tempfile::tempdir_in(parent).unwrap();
        run("mount", &["-o", "loop", img.to_str().unwrap(), mnt.path().to_str().unwrap()]);
        Ext4 { mnt, _img: img_dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.mnt.path()
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let p = self.mnt.path().to_str().unwrap().to_string();
        // Thawed first: nothing can be unmounted (or killed) while it is frozen.
        let _ = Command::new("fsfreeze").args(["-u", &p]).output();
        let ok = Command::new("umount").arg(&p).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").args(["-l", &p]).status();
        }
    }
}

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop (lazily if busy).
struct Tmpfs {
    mnt: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let mnt = tempfile::tempdir().unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs", mnt.path().to_str().unwrap()],
        );
        Tmpfs { mnt }
    }

    fn path(&self) -> &Path {
        self.mnt.path()
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.path().join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
        // Whatever is left in smaller pieces, so that no batch fits.
        while f.write_all(&[0x5a; 512]).is_ok() {}
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.mnt.path().to_str().unwrap().to_string();
        if !Command::new("umount").arg(&p).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").args(["-l", &p]).status();
        }
    }
}

/// The data dir on a tmpfs filled to the last byte for a few seconds: the sink holds its
/// batches in memory (shown in `last_error`, nothing dropped), supervision and collection go
/// on, and once space returns every sample is spooled and delivered, with no hole in time.
#[test]
fn a_full_disk_holds_batches_in_memory_and_spools_them_when_space_returns() {
    let fs = Tmpfs::mount("8M");
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let cfg = upload_config(&format!("ws://{}/v1/ingest", r.addr));
    let log = dir.path().join("vigil.log");
    let agent = Agent::start_at(dir, &fs.path().join("data"), &log, &cfg, &[]);
    agent.wait_running(1, T);
    wait_lines(&r, 2);
    let filler = fs.fill();
    let full_at = Instant::now();
    let s = agent.wait_status(T, "the sink to hit the full disk", |s| {
        s["uploads"][0]["last_error"].as_str().is_some_and(|e| e.contains("No space left on device"))
    });
    assert_eq!(s["uploads"][0]["dropped_samples"], 0, "{s:#}");
    let seq_when_full = s["uploads"][0]["last_seq"].as_u64().unwrap();
    while full_at.elapsed() < Duration::from_secs(4) {
        let s = agent.status();
        assert_eq!(s["collector"]["state"], "running", "{s:#}");
        assert_eq!(
            s["uploads"][0]["last_seq"].as_u64().unwrap(),
            seq_when_full,
            "nothing is spooled on a full disk"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        agent.log_lines("Cannot spool a batch").len(),
        1,
        "logged once per spell:\n{}",
        agent.log_tail()
    );
    std::fs::remove_file(&filler).unwrap();
    let s = agent.wait_status(T, "the held samples spooled and sent", |s| {
        let u = &s["uploads"][0];
        u["last_seq"].as_u64() > Some(seq_when_full + 1) && u["spooled_batches"] == 0
    });
    let u = &s["uploads"][0];
    assert_eq!(u["dropped_samples"], 0, "{s:#}");
    assert_eq!(u["dropped"]["disk_full_samples"], 0, "{s:#}");
    assert_no_gap(&r, u["acked_seq"].as_u64().unwrap());
    // The load collector's samples are contiguous in time across the full spell.
    assert_load_contiguous(&r, 20);
    assert_eq!(agent.log_lines("takes batches again").len(), 1, "{}", agent.log_tail());
    drop(agent);
}

/// tests/support/failfs.py mounted on a temp dir: a pass-through FUSE file system that
/// answers real EIO on demand. Unmounted (lazily if busy) and stopped on drop.
struct FailFs {
    mnt: tempfile::TempDir,
    _backing: tempfile::TempDir,
    control: PathBuf,
    child: Reaped,
}

impl FailFs {
    fn mount() -> FailFs {
        let backing = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let control = backing.path().with_extension("failfs-control");
        std::fs::write(&control, "").unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/failfs.py");
        let child = Reaped::spawn(
            Command::new("/usr/bin/python3")
                .arg(script)
                .arg(backing.path())
                .arg(mnt.path())
                .arg(&control)
                .stdin(std::process::Stdio::null()),
        );
        let fs = FailFs { mnt, _backing: backing, control, child };
        let t0 = Instant::now();
        let target = fs.path().to_str().unwrap().to_string();
        while !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(&target))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "failfs did not mount (python3-fusepy installed? run scripts/test)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fs
    }

    fn path(&self) -> &Path {
        self.mnt.path()
    }

    /// Puts `faults` (`write`, `fsync`, `create`, space separated; "" for none) in force.
    fn fail(&self, faults: &str) {
        std::fs::write(&self.control, faults).unwrap();
    }
}

impl Drop for FailFs {
    fn drop(&mut self) {
        let p = self.mnt.path().to_str().unwrap().to_string();
        if !Command::new("umount").arg(&p).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").args(["-l", &p]).status();
        }
        let _ = self.child.0.kill();
        let _ = std::fs::remove_file(&self.control);
    }
}

/// The data dir on a file system that answers real EIO: on writes, then on fsyncs after
/// complete writes, then on creating the next segment. The sink holds its samples, no seq
/// ever names two batches (the receiver would keep the first and drop the second as a
/// duplicate: a hole in time), no unacknowledged segment is lost, and once the disk works
/// every sample arrives.
#[test]
fn eio_on_writes_fsyncs_and_creates_loses_nothing_and_reuses_no_seq() {
    let fs = FailFs::mount();
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let cfg = upload_config(&format!("ws://{}/v1/ingest", r.addr));
    let log = dir.path().join("vigil.log");
    let agent = Agent::start_at(dir, &fs.path().join("data"), &log, &cfg, &[]);
    agent.wait_running(1, T);
    wait_lines(&r, 2);
    for faults in ["write", "fsync", "write create"] {
        fs.fail(faults);
        let s = agent.wait_status(T, &format!("EIO ({faults}) seen by the sink"), |s| {
            s["uploads"][0]["last_error"].as_str().is_some_and(|e| e.contains("Input/output error"))
        });
        let seq = s["uploads"][0]["last_seq"].as_u64().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let s = agent.status();
        assert_eq!(
            s["uploads"][0]["last_seq"].as_u64().unwrap(),
            seq,
            "{faults}: nothing spooled on EIO: {s:#}"
        );
        assert_eq!(s["collector"]["state"], "running", "{s:#}");
        fs.fail("");
        agent
            .wait_status(T, "the held samples spooled", |s| s["uploads"][0]["last_seq"].as_u64() > Some(seq));
    }
    let s = agent.wait_status(T, "everything delivered", |s| {
        s["uploads"][0]["spooled_batches"] == 0 && s["uploads"][0]["acked_seq"] == s["uploads"][0]["last_seq"]
    });
    let u = &s["uploads"][0];
    assert_eq!(u["dropped_samples"], 0, "{s:#}");
    assert_eq!(u["dropped"]["corrupt_records"], 0, "{s:#}");
    assert_no_gap(&r, u["acked_seq"].as_u64().unwrap());
    assert_load_contiguous(&r, 30);
    drop(agent);
}

/// A crash dir that cannot be written (a file where the directory should be): the restart
/// goes on, the report waits in memory, `/status` says why and the log says it once; once
/// the path is fixed the report is written.
#[test]
fn an_unwritable_crash_dir_is_shown_and_the_restart_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("crashes"), b"not a directory").unwrap();
    let log = dir.path().join("vigil.log");
    let agent = Agent::start_at(dir, &data, &log, &fast_config(""), &[("VIGIL_FAULT", "exit:3@0.3x1")]);
    let s = agent.wait_status(T, "the second incarnation with the report pending", |s| {
        s["collector"]["incarnation"].as_u64() >= Some(2) && s["collector"]["state"] == "running"
    });
    assert_eq!(s["collector"]["pending_crash_reports"], 1, "{s:#}");
    let why = s["collector"]["crash_report_error"].as_str().unwrap_or_else(|| panic!("{s:#}"));
    assert!(why.contains("crashes"), "{why}");
    let id = s["collector"]["last_exit"]["crash_report"].as_str().unwrap().to_string();
    assert_eq!(agent.log_lines("Cannot write the crash report").len(), 1, "{}", agent.log_tail());
    std::fs::remove_file(data.join("crashes")).unwrap();
    let s = agent.wait_status(T, "the report written", |s| s["collector"]["pending_crash_reports"] == 0);
    assert!(s["collector"]["crash_report_error"].is_null(), "{s:#}");
    assert!(data.join(format!("crashes/{id}.json")).exists());
    assert_eq!(s["collector"]["incarnation"], 2, "no restart was held up or repeated: {s:#}");
}

/// Freezes a file system; thaws it when dropped. Declared after the processes that use the
/// file system, so that it drops (thaws) first: a process blocked on a frozen file system
/// cannot be killed until it thaws.
struct Frozen(PathBuf);

impl Frozen {
    fn freeze(path: &Path) -> Frozen {
        run("fsfreeze", &["-f", path.to_str().unwrap()]);
        Frozen(path.to_path_buf())
    }

    fn thaw(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").args(["-u", self.0.to_str().unwrap()]).output();
    }
}

/// Requests `/healthz` every 50 ms from another thread until stopped; the slowest answer.
struct HealthProbe {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<(Duration, usize)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthProbe {
    fn start(addr: &str) -> HealthProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((Duration::ZERO, 0)));
        let (s, w, addr) = (stop.clone(), worst.clone(), addr.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let (code, _) = http_get(&addr, "/healthz", None);
                let took = t0.elapsed();
                assert!(code == 200 || code == 503, "/healthz answered {code}");
                let mut g = w.lock().unwrap();
                g.0 = g.0.max(took);
                g.1 += 1;
                drop(g);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        HealthProbe { stop, worst, thread: Some(thread) }
    }

    /// Stops it; the slowest answer and the number of answers.
    fn finish(mut self) -> (Duration, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the probe failed");
        *self.worst.lock().unwrap()
    }
}

impl Drop for HealthProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for incarnation `n`'s first heartbeat ack (the status shows none before it).
fn wait_acked(agent: &Agent, n: u64) {
    agent.wait_status(Duration::from_secs(5), "the first heartbeat ack", |s| {
        s["collector"]["incarnation"].as_u64() >= Some(n)
            && !s["collector"]["heartbeat"]["last_ack_ms_ago"].is_null()
    });
}

fn no_unresponsive(s: &Value) -> bool {
    s["collector"]["crash_counts"].as_array().unwrap().iter().all(|c| c["reason"] != "unresponsive")
}

/// Every seq from 1 to `upto` arrived, in order, once.
/// More than `min` `load_1` samples reached the receiver, and none is more than 1.5 s from
/// the next: no collection was lost to the fault.
fn assert_load_contiguous(r: &Receiver, min: usize) {
    let mut ts: Vec<i64> = r
        .lines()
        .iter()
        .flat_map(|l| l["samples"].as_array().unwrap().clone())
        .filter(|x| x["name"] == "load_1")
        .map(|x| x["ts_ms"].as_i64().unwrap())
        .collect();
    ts.sort();
    let worst = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(ts.len() > min && worst < 1500, "a hole of {worst} ms in {} load_1 samples", ts.len());
}

fn assert_no_gap(r: &Receiver, upto: u64) {
    let seqs: Vec<u64> = r.lines().iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=upto).collect();
    assert_eq!(seqs[..(upto as usize).min(seqs.len())], want[..], "every seq once, in order, no gap");
}

/// The data dir and the log on an ext4 that is frozen for 8 s while the collector is
/// SIGKILLed: the restart keeps its schedule, `/healthz` answers within 1 s throughout, no
/// healthy collector is killed as unresponsive, the crash report waits in memory (and is
/// counted) until the thaw, and the sink loses no batch.
#[test]
fn a_frozen_data_dir_stalls_neither_supervision_nor_the_status_endpoint() {
    let fs = Ext4::mount();
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let cfg = upload_config(&format!("ws://{}/v1/ingest", r.addr));
    let agent = Agent::start_at(dir, &fs.path().join("data"), &fs.path().join("vigil.log"), &cfg, &[]);
    let s = agent.wait_running(1, T);
    let pid = s["collector"]["pid"].as_i64().unwrap() as i32;
    wait_lines(&r, 3);

    let frozen = Frozen::freeze(fs.path());
    let t_freeze = Instant::now();
    let probe = HealthProbe::start(&agent.addr);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling the collector child of our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t_kill = Instant::now();
    let s = agent.wait_status(Duration::from_secs(5), "a new collector while the disk is frozen", |s| {
        s["collector"]["state"] == "running" && s["collector"]["incarnation"].as_u64() >= Some(2)
    });
    wait_acked(&agent, 2);
    let restarted_in = t_kill.elapsed();
    assert!(restarted_in < Duration::from_secs(3), "restart took {restarted_in:?} (delay 100 ms)");
    let exit = &s["collector"]["last_exit"];
    assert_eq!(exit["signal_name"], "SIGKILL", "{s:#}");
    let id = exit["crash_report"].as_str().expect("the report has its ID at once").to_string();
    assert_eq!(s["collector"]["pending_crash_reports"], 1, "held in memory: {s:#}");
    let crash_json = agent.crash_dir().join(format!("{id}.json"));
    assert!(!crash_json.exists(), "written on a frozen file system?");
    // The crash timeline has it at once, its file waits for the disk, and the page answers.
    assert_eq!(s["collector"]["crashes_per_hour"][23], 1, "{s:#}");
    let deaths_file = agent.data_dir().join("deaths.json");
    let t_page = Instant::now();
    let (code, page) = agent.get("/");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<span id=\"crash-total\">1</span>"), "{page}");
    assert!(
        t_page.elapsed() < Duration::from_secs(2),
        "the page took {:?} on a frozen disk",
        t_page.elapsed()
    );
    // Frozen for 8 s in all; heartbeats go on meanwhile.
    while t_freeze.elapsed() < Duration::from_secs(8) {
        let s = agent.status();
        assert!(no_unresponsive(&s), "a healthy collector was killed as unresponsive: {s:#}");
        assert_eq!(s["collector"]["incarnation"], 2, "{s:#}");
        let age = s["collector"]["heartbeat"]["last_ack_ms_ago"].as_u64();
        assert!(age.is_some_and(|a| a < 1500), "heartbeats stalled: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (worst, answers) = probe.finish();
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?} with the data dir frozen");
    assert!(answers >= 50, "only {answers} /healthz answers in 7.5 s");
    let last_seq_frozen = agent.status()["uploads"][0]["last_seq"].as_u64().unwrap();

    frozen.thaw();
    let s = agent.wait_status(T, "the report on disk after the thaw", |s| {
        s["collector"]["pending_crash_reports"] == 0
    });
    assert!(crash_json.exists(), "{s:#}");
    let until = Instant::now() + T;
    while !std::fs::read_to_string(&deaths_file).is_ok_and(|t| t.contains(&id)) {
        assert!(Instant::now() < until, "deaths.json never got the crash after the thaw");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = agent.crash_dir().join(format!("{id}.stderr"));
    assert!(stderr.exists());
    let s = agent.wait_status(T, "the spool drained after the thaw", |s| {
        let u = &s["uploads"][0];
        u["connected"] == true && u["spooled_batches"] == 0 && u["acked_seq"].as_u64() > Some(last_seq_frozen)
    });
    let u = &s["uploads"][0];
    assert_eq!(u["dropped"]["buffer_full_samples"], 0, "{s:#}");
    assert_no_gap(&r, u["acked_seq"].as_u64().unwrap());
    assert!(no_unresponsive(&s), "{s:#}");
    let (code, metrics) = agent.get("/metrics");
    assert_eq!(code, 200);
    let dropped_lines = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vigil_log_lines_dropped_total "))
        .expect("vigil_log_lines_dropped_total in /metrics")
        .trim()
        .parse::<f64>()
        .unwrap();
    if dropped_lines > 0.0 {
        let until = Instant::now() + T;
        while agent.log_lines("Log lines were dropped").is_empty() {
            assert!(Instant::now() < until, "{dropped_lines} dropped lines never reported");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(agent);
}

/// A receiver stopped with SIGSTOP keeps its TCP connection open and never closes it: the
/// sink must find out from the missing acks (within `ack_timeout_secs`), show it, and after
/// SIGCONT deliver everything.
#[test]
fn a_stopped_receiver_is_noticed_within_the_ack_timeout_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start("127.0.0.1:0", &dir.path().join("out.jsonl"), &dir.path().join("recv.log"));
    let cfg = format!("{}ack_timeout_secs = 2\n", upload_config(&format!("ws://{}/v1/ingest", r.addr)));
    let agent = Agent::start(&cfg, &[]);
    agent.wait_status(T, "connected", |s| s["uploads"][0]["connected"] == true);
    wait_lines(&r, 3);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(r.pid(), libc::SIGSTOP) };
    let t_stop = Instant::now();
    let s = agent.wait_status(Duration::from_secs(10), "the dead connection noticed", |s| {
        s["uploads"][0]["connected"] == false
    });
    let noticed = t_stop.elapsed();
    // The ack timeout, plus one flush interval for the next batch to be sent.
    assert!(noticed < Duration::from_millis(2000 + 300 + 1500), "noticed after {noticed:?}");
    let why = s["uploads"][0]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("ack_timeout_secs"), "last_error: {why}");
    std::thread::sleep(Duration::from_secs(2));
    let last_stopped = agent.status()["uploads"][0]["last_seq"].as_u64().unwrap();
    unsafe { libc::kill(r.pid(), libc::SIGCONT) };
    let s = agent.wait_status(T, "everything delivered after SIGCONT", |s| {
        let u = &s["uploads"][0];
        u["connected"] == true && u["acked_seq"].as_u64() >= Some(last_stopped)
    });
    assert_no_gap(&r, s["uploads"][0]["acked_seq"].as_u64().unwrap());
}

/// 8 local clients hammering `/metrics` and `/status` while the collector crashes three
/// times: the restarts keep their schedule, heartbeats go on, `/healthz` answers in time.
#[test]
fn a_status_flood_during_crashes_delays_neither_restarts_nor_heartbeats() {
    let cfg = format!("{}\n[collectors]\ninterval_secs = 0.2\n", fast_config(""));
    let t0 = Instant::now();
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "segv@1x3")]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, addr) = (stop.clone(), agent.addr.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (code, _) = http_get(&addr, if i % 2 == 0 { "/metrics" } else { "/status" }, None);
                    assert_eq!(code, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let probe = HealthProbe::start(&agent.addr);
    // Three crashes 1 s after each start, restart delays 100, 200 and 400 ms.
    let s = agent.wait_running(4, Duration::from_secs(15));
    let took = t0.elapsed();
    wait_acked(&agent, 4);
    assert!(took < Duration::from_secs(9), "four incarnations took {took:?} (about 4 s due)");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let s = agent.status();
        let age = s["collector"]["heartbeat"]["last_ack_ms_ago"].as_u64();
        assert!(age.is_some_and(|a| a < 1500), "heartbeats stalled under the flood: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let requests: u64 = clients.into_iter().map(|c| c.join().expect("a client failed")).sum();
    let (worst, _) = probe.finish();
    assert!(requests > 100, "only {requests} flood requests");
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?} under the flood");
    assert!(no_unresponsive(&s), "{s:#}");
    assert_eq!(s["collector"]["restarts"], 3, "{s:#}");
}

/// A panic inside the Supervisor actor ends `vigil run` with status 1 and the reason in its
/// log (so systemd restarts it), and takes the collector with it.
#[test]
fn a_panic_in_the_supervisor_ends_the_process_with_status_1() {
    let mut agent = Agent::start(&fast_config(""), &[("VIGIL_SUPERVISOR_FAULT", "panic@1")]);
    let s = agent.wait_running(1, T);
    let collector = s["collector"]["pid"].as_i64().unwrap() as i32;
    let st = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1), "{st}");
    let lines = agent.log_lines("The supervisor panicked");
    assert!(
        lines.iter().any(|l| l.contains("injected by VIGIL_SUPERVISOR_FAULT")),
        "log:\n{}",
        agent.log_tail()
    );
    let until = Instant::now() + Duration::from_secs(3);
    while alive(collector) {
        assert!(Instant::now() < until, "the collector outlived its supervisor");
        std::thread::sleep(Duration::from_millis(20));
    }
}
