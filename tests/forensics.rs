//! Where the collector died (CONTRACT §6): real faults in the real binary, and the stack each
//! crash report carries. Run against the dynamic and the static-pie build (scripts/test).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

/// Starts the agent with `fault` (first incarnation only) and returns it with the report
/// of the first crash once written.
fn crash_with(fault: &str, extra: &str) -> (Agent, Value) {
    let cfg = format!("{}\n[collectors]\ninterval_secs = 0.2\n", fast_config(extra));
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", fault)]);
    agent.wait_running(2, T);
    let report = first_report(&agent);
    (agent, report)
}

/// The first crash report on disk.
fn first_report(agent: &Agent) -> Value {
    reports(agent, 1).remove(0)
}

/// What `vigil crashes show ID` prints for the agent's data dir.
fn crashes_show(agent: &Agent, id: &str) -> String {
    let out = Command::new(vigil())
        .args(["crashes", "show", id, "--data-dir"])
        .arg(agent.data_dir())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The faulting function above the load collector's actor (named by its generic argument),
/// with its file, line and module: where it is on the stack.
fn assert_segv_in_load(r: &Value) -> usize {
    let funcs = functions(r);
    let segv = position(&funcs, |f| f.ends_with("vigil_actors::collector::fault::segv"))
        .unwrap_or_else(|| panic!("no fault::segv frame: {funcs:#?}"));
    let tick = position(&funcs, |f| f.contains("CollectorActor<") && f.contains("load::Load>"))
        .unwrap_or_else(|| panic!("the load collector's actor is not on the stack: {funcs:#?}"));
    assert!(segv < tick, "innermost first: {funcs:#?}");
    let top = &r["stack"][segv];
    assert_eq!(top["file"], "actors/src/collector/fault.rs", "{top}");
    assert!(top["line"].as_u64().is_some(), "{top}");
    assert_eq!(top["module"], "vigil", "{top}");
    assert!(top["address"].as_str().unwrap().starts_with("0x"));
    assert!(!r["thread"].as_str().unwrap_or_default().is_empty(), "{r:#}");
    segv
}

fn functions(report: &Value) -> Vec<String> {
    report["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack: {report:#}"))
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("??").to_string())
        .collect()
}

fn position(funcs: &[String], pred: impl Fn(&str) -> bool) -> Option<usize> {
    funcs.iter().position(|f| pred(f))
}

/// `segv@collector:load`: the stack names the faulting function and, below it, the load
/// collector's actor (by its generic argument); the report, the log line, `/status`,
/// `/crashes/ID` and `vigil crashes show` all carry it.
#[test]
fn a_segv_in_a_collector_names_the_function_and_the_collector() {
    let (agent, r) = crash_with("segv@collector:loadx1", "");
    assert_eq!(r["signal_name"], "SIGSEGV", "{r:#}");
    assert_eq!(r["reason"], "signaled");
    // `auto` on a host that allows ptrace: taken from outside.
    assert_eq!(r["capture"], "ptrace", "{r:#}");
    assert!(r["stack_error"].is_null(), "{r:#}");
    let segv = assert_segv_in_load(&r);
    let sig = r["signature"].as_str().expect("a signature").to_string();
    assert_eq!(sig.len(), 12);
    let id = r["id"].as_str().unwrap().to_string();

    // The stderr tail is only what the collector wrote: the capture went to its own pipe.
    let tail = std::fs::read(agent.crash_dir().join(format!("{id}.stderr"))).unwrap();
    assert!(!String::from_utf8_lossy(&tail).contains("VIGIL-CRASH"));

    let line = agent.log_lines(&format!("crash report {id}")).join("\n");
    assert!(line.contains("in vigil_actors::collector::fault::segv"), "{line}");
    let s = agent.wait_status(T, "the crash counted by signature", |s| {
        s["collector"]["crash_counts"].as_array().unwrap().iter().any(|c| c["signature"] == sig.as_str())
    });
    assert_eq!(s["collector"]["crash_counts"].as_array().unwrap().len(), 1, "{s:#}");
    let (code, body) = agent.get(&format!("/crashes/{id}"));
    assert_eq!(code, 200);
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["stack"], r["stack"]);

    let text = crashes_show(&agent, &id);
    let want = format!("#{segv} vigil_actors::collector::fault::segv (actors/src/collector/fault.rs:");
    assert!(text.contains(&want), "{text}");
    assert!(text.contains(&format!("signature {sig}")), "{text}");
}

/// `segv-libc`: the innermost frame is libc's (its module, or its function where the
/// symbols give it), and the Rust caller is right below.
#[test]
fn a_segv_inside_libc_shows_the_libc_frame_and_the_rust_caller() {
    let (_agent, r) = crash_with("segv-libc@0.5x1", "");
    assert_eq!(r["signal_name"], "SIGSEGV", "{r:#}");
    let stack = r["stack"].as_array().unwrap_or_else(|| panic!("no stack: {r:#}"));
    let top = &stack[0];
    // The dynamic build: libc.so.6's frame, its internal function (`__strlen_avx2`, not in
    // libc's dynamic symbols) named from libc6-dbg's debug file, which scripts/test installs.
    // The static-pie build: libc is inside vigil, named from vigil's symbol table.
    assert!(
        top["function"].as_str().is_some_and(|f| f.contains("strlen")),
        "innermost frame not strlen: {top}"
    );
    let module = top["module"].as_str().unwrap_or_default();
    assert!(module.starts_with("libc.so") || module == "vigil", "innermost frame in {module}: {top}");
    let funcs = functions(&r);
    let caller = position(&funcs, |f| f.ends_with("vigil_actors::collector::fault::segv_libc"))
        .unwrap_or_else(|| panic!("no Rust caller: {funcs:#?}"));
    assert!((1..=3).contains(&caller), "the caller right below libc: {funcs:#?}");
}

/// `stack-overflow`: the recursion is on the stack (the handler has its own stack).
#[test]
fn a_stack_overflow_shows_the_recursion() {
    let (_agent, r) = crash_with("stack-overflow@0.5x1", "");
    let sig = r["signal_name"].as_str().unwrap_or_default();
    assert!(sig == "SIGSEGV" || sig == "SIGABRT", "{r:#}");
    let funcs = functions(&r);
    let deep = funcs.iter().filter(|f| f.ends_with("fault::stack_overflow")).count();
    assert!(deep >= 50, "{deep} recursion frames: {:#?}", &funcs[..funcs.len().min(10)]);
    assert!(r["frames_omitted"].as_u64().unwrap() > 0, "an overflow is deeper than 256 frames");
}

/// abort(3): SIGABRT, with the stack through libc's abort into vigil's code.
#[test]
fn an_abort_has_a_stack() {
    let (_agent, r) = crash_with("abort@0.5x1", "");
    assert_eq!(r["signal_name"], "SIGABRT", "{r:#}");
    let funcs = functions(&r);
    assert!(
        funcs.iter().any(|f| f.starts_with("vigil_actors::") || f.starts_with("<vigil_actors::")),
        "{funcs:#?}"
    );
}

/// `stack_capture = "off"`: the report says why it has no stack; an exit with a code has
/// neither a stack nor an error.
#[test]
fn capture_off_says_so_and_exits_have_no_stack() {
    let (_agent, r) = crash_with("segv@0.5x1", "stack_capture = \"off\"\n");
    assert!(r["stack"].is_null(), "{r:#}");
    assert!(r["stack_error"].as_str().unwrap_or_default().contains("off"), "{r:#}");
    let (_agent, r) = crash_with("exit:3@0.5x1", "");
    assert_eq!(r["code"], 3);
    assert!(r["stack"].is_null() && r["stack_error"].is_null(), "{r:#}");
}

/// `stack_capture = "in_process"`: the collector's handler unwinds itself, with the same
/// stack, and the signal is still the real one.
#[test]
fn in_process_capture_gives_the_same_stack() {
    let (_agent, r) = crash_with("segv@collector:loadx1", "stack_capture = \"in_process\"\n");
    assert_eq!(r["signal_name"], "SIGSEGV", "{r:#}");
    assert_eq!(r["capture"], "in_process", "{r:#}");
    assert_segv_in_load(&r);
}

/// A tracer on the collector, killed (and reaped) when dropped.
struct Tracer(std::process::Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Attaches `strace -f` to `pid` and waits until the kernel shows it as the tracer.
fn strace(pid: u64) -> Tracer {
    let child = Tracer(
        Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-p", &pid.to_string()])
            .spawn()
            .expect("strace (scripts/test installs it)"),
    );
    let t0 = std::time::Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.lines().any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")) {
            return child;
        }
        assert!(t0.elapsed() < T, "strace did not attach to {pid}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Another tracer (strace) on the collector makes PTRACE_SEIZE fail: with `ptrace` the
/// report is still written, with `stack_error` saying why; with `auto` the handler unwinds
/// in process instead.
#[test]
fn a_ptrace_capture_that_fails_still_writes_the_report() {
    for (mode, want) in [("ptrace", None), ("auto", Some("in_process"))] {
        let cfg = format!(
            "{}\n[collectors]\ninterval_secs = 0.2\n",
            fast_config(&format!("stack_capture = \"{mode}\"\n"))
        );
        let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "segv@2x1")]);
        let s = agent.wait_running(1, T);
        let pid = s["collector"]["pid"].as_u64().unwrap();
        let tracer = strace(pid);
        let r = first_report(&agent);
        drop(tracer);
        assert_eq!(r["signal_name"], "SIGSEGV", "{mode}: the real signal still: {r:#}");
        match want {
            None => {
                assert!(r["stack"].is_null(), "{mode}: {r:#}");
                let err = r["stack_error"].as_str().unwrap_or_default();
                assert!(err.contains("cannot ptrace") && err.contains("already traced"), "{mode}: {r:#}");
            }
            Some(capture) => {
                assert_eq!(r["capture"], capture, "{mode}: {r:#}");
                assert!(r["stack"].as_array().is_some_and(|s| !s.is_empty()), "{mode}: {r:#}");
                assert!(agent
                    .log_lines("unwinds itself instead")
                    .iter()
                    .any(|l| l.contains("already traced")));
            }
        }
    }
}

/// A hang report: every thread, one of them stuck in `fault::hang` under the load
/// collector's actor.
fn assert_stuck_in_hang(r: &Value) {
    assert_eq!(r["reason"], "unresponsive", "{r:#}");
    let threads = r["threads"].as_array().unwrap_or_else(|| panic!("no threads: {r:#}"));
    assert!(threads.len() >= 2, "every thread (the runtime has more than one): {r:#}");
    let stuck = threads
        .iter()
        .find(|t| {
            let f: Vec<&str> =
                t["stack"].as_array().unwrap().iter().filter_map(|f| f["function"].as_str()).collect();
            let hang = f.iter().position(|f| f.ends_with("vigil_actors::collector::fault::hang"));
            let tick = f.iter().position(|f| f.contains("CollectorActor<") && f.contains("load::Load>"));
            matches!((hang, tick), (Some(h), Some(t)) if h < t)
        })
        .unwrap_or_else(|| panic!("no thread stuck in fault::hang under the load collector: {r:#}"));
    assert!(!stuck["name"].as_str().unwrap_or_default().is_empty());
}

/// A hang under `auto` where ptrace fails (strace attached): the threads write their own.
#[test]
fn a_hang_without_ptrace_under_auto_has_the_threads_write_their_own() {
    let cfg = format!("{}\n[collectors]\ninterval_secs = 0.2\n", fast_config(""));
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "hang@collector:loadx1")]);
    let t0 = std::time::Instant::now();
    let pid = loop {
        let s = agent.status();
        if let Some(p) = s["collector"]["pid"].as_u64() {
            break p;
        }
        assert!(t0.elapsed() < T, "no collector");
        std::thread::sleep(Duration::from_millis(20));
    };
    let tracer = strace(pid);
    let r = first_report(&agent);
    drop(tracer);
    assert_eq!(r["capture"], "in_process", "{r:#}");
    assert_stuck_in_hang(&r);
    assert!(agent.log_lines("write their own instead").iter().any(|l| l.contains("already traced")));
}

/// A hang: before the SIGKILL, every thread's stack, the stuck one inside the hanging
/// function in the load collector: taken with ptrace, and without it by the threads
/// themselves.
#[test]
fn a_hang_report_has_every_thread_and_the_stuck_one() {
    let (agent, r) = crash_with("hang@collector:loadx1", "");
    assert_eq!(r["capture"], "ptrace", "{r:#}");
    assert_stuck_in_hang(&r);
    let id = r["id"].as_str().unwrap();
    let line = agent.log_lines(&format!("crash report {id}")).join("\n");
    assert!(line.contains("in vigil_actors::collector::fault::hang"), "{line}");
    let text = crashes_show(&agent, id);
    assert!(text.contains("(hung; captured ptrace"), "{text}");
    assert!(text.contains(" vigil_actors::collector::fault::hang (actors/src/collector/fault.rs:"), "{text}");

    // Without ptrace, every thread writes its own stack on a signal.
    let (_agent, r) = crash_with("hang@collector:loadx1", "stack_capture = \"in_process\"\n");
    assert_eq!(r["capture"], "in_process", "{r:#}");
    assert_stuck_in_hang(&r);
}

/// A panic that ends the process: message, location, and the panicking thread's stack
/// starting at the code that panicked (the panic machinery left out).
#[test]
fn a_panic_has_its_message_location_and_stack() {
    let (_agent, r) = crash_with("panic@0.5x1", "");
    assert_eq!(r["code"], 101, "{r:#}");
    assert_eq!(r["panic"]["message"], "VIGIL_FAULT=panic: injected panic", "{r:#}");
    assert!(r["panic"]["location"]
        .as_str()
        .unwrap_or_default()
        .starts_with("actors/src/collector/fault.rs:"));
    let funcs = functions(&r);
    assert!(funcs[0].starts_with("vigil_actors::collector::fault::panic_now"), "{funcs:#?}");
    assert!(!funcs.iter().any(|f| f.starts_with("std::panicking::begin_panic")), "{funcs:#?}");
    assert_eq!(r["capture"], "in_process", "{r:#}");
    assert!(r["signature"].is_string(), "{r:#}");
}

/// A memory cgroup with a limit, made for one test and removed after it, even when the test
/// fails (what is still in it is killed first). Cgroup v1's memory hierarchy under this
/// process's own cgroup, or on v2 a child of the root.
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("vigil-oom-test-{}", std::process::id());
        let v1 = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|c| c == "memory").then(|| p.trim_start_matches('/').to_string())
        });
        let (dir, limit_file) = match v1 {
            Some(p) => {
                (std::path::Path::new("/sys/fs/cgroup/memory").join(p).join(&name), "memory.limit_in_bytes")
            }
            None => {
                let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
                (std::path::Path::new("/sys/fs/cgroup").join(&name), "memory.max")
            }
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot make the cgroup {}: {e}", dir.display()));
        let cg = MemoryCgroup { dir };
        std::fs::write(cg.dir.join(limit_file), limit.to_string()).unwrap();
        let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        cg
    }

    fn add(&self, pid: u64) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..200 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) of a pid in our test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove the cgroup {}", self.dir.display());
    }
}

/// Every crash report on disk once there are `n`, oldest first.
fn reports(agent: &Agent, n: usize) -> Vec<Value> {
    let t0 = std::time::Instant::now();
    loop {
        let mut ids: Vec<String> = crash_files(&agent.crash_dir())
            .iter()
            .filter_map(|f| f.strip_suffix(".json").map(str::to_string))
            .collect();
        if ids.len() >= n {
            ids.sort();
            return ids
                .iter()
                .map(|id| {
                    let text = std::fs::read_to_string(agent.crash_dir().join(format!("{id}.json"))).unwrap();
                    serde_json::from_str(&text).unwrap()
                })
                .collect();
        }
        assert!(t0.elapsed() < T, "{} of {n} crash reports; log:\n{}", ids.len(), agent.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `oom` in a memory cgroup with a limit: the kernel's OOM killer ends the collector, the
/// report says so (`oom_killed`, and the ERROR line), and the supervisor, in the same
/// cgroup, survives and restarts it. A SIGKILL from someone else is not the OOM killer's.
#[test]
fn an_oom_kill_is_named_and_the_supervisor_survives_it() {
    let cg = MemoryCgroup::new(384 << 20);
    let cfg = format!("{}\n[collectors]\ninterval_secs = 0.2\n", fast_config(""));
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "oom@3x1")]);
    cg.add(agent.pid() as u64);
    let s = agent.wait_running(1, T);
    cg.add(s["collector"]["pid"].as_u64().unwrap());
    let r = reports(&agent, 1).remove(0);
    assert_eq!(r["signal_name"], "SIGKILL", "{r:#}");
    assert_eq!(r["oom_killed"], true, "{r:#}");
    let id = r["id"].as_str().unwrap();
    let line = agent.log_lines(&format!("crash report {id}")).join("\n");
    assert!(line.contains("killed by the OOM killer"), "{line}");
    let text = crashes_show(&agent, id);
    assert!(text.contains("oom killed") && text.contains("yes (the kernel's OOM killer)"), "{text}");
    let s = agent.wait_running(2, T);
    assert_eq!(agent.get("/healthz").0, 200, "the supervisor lives on");

    let pid = s["collector"]["pid"].as_u64().unwrap();
    // SAFETY: kill(2) of the collector this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let r = reports(&agent, 2).remove(1);
    assert_eq!(r["signal_name"], "SIGKILL", "{r:#}");
    assert_eq!(r["oom_killed"], false, "{r:#}");
    drop(agent);
    drop(cg);
}
