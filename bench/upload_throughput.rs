//! Upload throughput: samples per second through the real Uploader (batching, MessagePack
//! encoding, the synced spool append, the WebSocket send, the ack) into a real
//! `vigil receive` on 127.0.0.1, which decodes, writes a JSON line per batch and syncs.
//!
//! cargo build --release
//! cargo run --release -p vigil-actors --example upload_throughput -- [SAMPLES] [CHUNK] [SERIES]
//!
//! SERIES distinct series (name and tags) take turns, as a host's collectors make them; each
//! chunk is one publication. Besides the wall-clock rate it reports the CPU of each side
//! (this process: batching, encoding, spool, send; the receiver: decoding, JSON, sync) and
//! the WebSocket payload bytes per sample. Reported in docs/performance.md.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use vigil_actors::config::UploadConfig;
use vigil_actors::upload::protocol::WireSample;
use vigil_actors::upload::{GetSinkStatus, Publish, Uploader};

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let total = *args.first().unwrap_or(&5_000_000);
    let chunk = *args.get(1).unwrap_or(&10_000) as usize;
    let n_series = (*args.get(2).unwrap_or(&1)).max(1);
    let dir = std::env::temp_dir().join(format!("vigil-upload-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vigil = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/vigil");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut recv = Command::new(vigil)
        .args(["receive", "--listen", &format!("127.0.0.1:{port}"), "--out"])
        .arg(dir.join("out.jsonl"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run target/release/vigil receive (cargo build --release first)");
    std::thread::sleep(Duration::from_millis(500));

    let system = actix_rt::System::new();
    let (elapsed, agent_cpu, status) = system.block_on(async move {
        let cfg = UploadConfig {
            name: "bench".into(),
            url: format!("ws://127.0.0.1:{port}/v1/ingest"),
            flush_interval_secs: 0.05,
            spool_max_bytes: 1 << 34,
            ..UploadConfig::default()
        };
        let up = Uploader::new(cfg, &dir, "bench-agent".into(), "bench-host".into()).start();
        // Let it connect before the clock starts.
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        const NAMES: [&str; 10] = [
            "cpu_user",
            "cpu_system",
            "mem_used_bytes",
            "disk_reads_sec",
            "disk_writes_sec",
            "net_rx_bytes_sec",
            "net_tx_bytes_sec",
            "fs_used_bytes",
            "processes_running",
            "tcp_established",
        ];
        let series: Vec<(String, std::collections::BTreeMap<String, String>)> = (0..n_series)
            .map(|k| {
                let tags = [
                    ("device".to_string(), format!("dev{}", k / 10)),
                    ("env".to_string(), "prod".to_string()),
                ];
                (NAMES[k as usize % 10].to_string(), tags.into_iter().collect())
            })
            .collect();
        // Samples are made before the clock starts: their allocation is the collectors' cost,
        // not the upload path's.
        let mut chunks = Vec::new();
        let mut made = 0u64;
        while made < total {
            let n = chunk.min((total - made) as usize);
            chunks.push(
                (0..n)
                    .map(|i| {
                        // Every series once per collection: a collection's samples share ts_ms.
                        let k = (made + i as u64) % n_series;
                        let round = (made + i as u64) / n_series;
                        let (name, tags) = &series[k as usize];
                        WireSample {
                            name: name.clone(),
                            tags: tags.clone(),
                            ts_ms: 1_700_000_000_000 + round as i64 * 1000,
                            value: (round % 100) as f64 * 1.5 + k as f64,
                        }
                    })
                    .collect::<Vec<_>>(),
            );
            made += n as u64;
        }
        eprintln!("publishing");
        let t0 = Instant::now();
        let cpu0 = cpu_secs(libc::RUSAGE_SELF);
        for samples in chunks {
            up.send(Publish(Arc::new(samples))).await.unwrap();
        }
        // Done when every batch is acknowledged by the receiver.
        loop {
            let st = up.send(GetSinkStatus).await.unwrap();
            if st.spooled_batches == 0 && st.last_seq > 0 && st.acked_seq == st.last_seq {
                break (t0.elapsed(), cpu_secs(libc::RUSAGE_SELF) - cpu0, st);
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // The receiver's CPU: it did nothing before the clock started but accept the connection.
    let _ = recv.kill();
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut st = 0;
    unsafe { libc::wait4(recv.id() as i32, &mut st, 0, &mut ru) };
    let recv_cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "samples: {total} in {} batches of {n_series} series, {:.3} s",
        status.last_seq,
        elapsed.as_secs_f64()
    );
    println!("throughput: {rate:.0} samples/s (encode + spool + send + receiver ack)");
    println!("agent side: {:.3} s CPU, {:.0} samples per CPU second", agent_cpu, total as f64 / agent_cpu);
    println!("receiver: {:.3} s CPU, {:.0} samples per CPU second", recv_cpu, total as f64 / recv_cpu);
    println!("wire: {:.2} payload bytes per sample", status.sent_bytes as f64 / total as f64);
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("vigil-upload-bench-{}", std::process::id())),
    );
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// User + system CPU seconds of `who` (this process).
fn cpu_secs(who: i32) -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
