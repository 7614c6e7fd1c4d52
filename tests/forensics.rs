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
    let dir = agent.crash_dir();
    let t0 = std::time::Instant::now();
    let report = loop {
        if let Some(id) = crash_files(&dir).iter().find_map(|f| f.strip_suffix(".json").map(str::to_string)) {
            let text = std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap();
            break serde_json::from_str::<Value>(&text).unwrap();
        }
        assert!(t0.elapsed() < T, "no crash report; log:\n{}", agent.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    };
    (agent, report)
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
    assert_eq!(r["capture"], "in_process", "{r:#}");
    assert!(r["stack_error"].is_null(), "{r:#}");
    let funcs = functions(&r);
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

    let out = Command::new(vigil())
        .args(["crashes", "show", &id, "--data-dir"])
        .arg(agent.data_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
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
    let in_libc = top["module"].as_str().is_some_and(|m| m.starts_with("libc.so"))
        || top["function"].as_str().is_some_and(|f| f.contains("strlen"));
    assert!(in_libc, "innermost frame not in libc: {top}");
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
