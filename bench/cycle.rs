//! One process running the collectors' cycles back to back, in-process (no supervisor, no
//! frames), for counting the instructions of a cycle with callgrind: bench/callgrind.py runs
//! it with two round counts and divides the difference, so start-up and the first (full)
//! collection drop out.
//!
//! cargo build --release -p vigil-actors --example cycle
//! target/release/examples/cycle ROUNDS [seed|all]
//!
//! `seed`: the seed's collectors (pressure, tcp, conntrack and top_processes off); `all`: all
//! of them. dns and time_drift are off in both, as in bench/overhead.py.

use std::time::Duration;

use vigil_actors::collector::collectors::CollectorsConfig;
use vigil_actors::collector::Env;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let seed = match args.get(1).map(String::as_str) {
        None | Some("all") => false,
        Some("seed") => true,
        Some(other) => panic!("expected seed or all, not {other}"),
    };
    let mut cfg = CollectorsConfig::default();
    cfg.dns.enabled = false;
    cfg.time_drift.enabled = false;
    if seed {
        cfg.pressure.enabled = false;
        cfg.tcp.enabled = false;
        cfg.conntrack.enabled = false;
        cfg.top_processes.enabled = false;
    }
    let system = actix_rt::System::new();
    let out = system.block_on(cfg.collect_rounds(&Env::default(), rounds, Duration::ZERO));
    let mut samples = 0;
    for (name, r) in out {
        match r {
            Ok(v) => samples += v.len(),
            Err(e) => eprintln!("{name}: {e}"),
        }
    }
    println!("{rounds} rounds, {samples} samples in the last");
}
