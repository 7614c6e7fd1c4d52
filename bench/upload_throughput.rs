//! Upload throughput: samples per second through the real Uploader (batching, MessagePack
//! encoding, the synced spool append, the WebSocket send, the ack) into a real
//! `vigil receive` on 127.0.0.1, which decodes, writes a JSON line per batch and syncs.
//!
//! cargo build --release
//! cargo run --release -p vigil-actors --example upload_throughput -- [SAMPLES] [CHUNK]
//!
//! Reported in docs/performance.md.

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
    let (elapsed, status) = system.block_on(async move {
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
        let tags: std::collections::BTreeMap<String, String> =
            [("device".to_string(), "sda".to_string())].into_iter().collect();
        // Samples are made before the clock starts: their allocation is the collectors' cost,
        // not the upload path's.
        let mut chunks = Vec::new();
        let mut made = 0u64;
        while made < total {
            let n = chunk.min((total - made) as usize);
            chunks.push(
                (0..n)
                    .map(|i| WireSample {
                        name: "disk_reads_sec".into(),
                        tags: tags.clone(),
                        ts_ms: 1_700_000_000_000 + (made as i64) + i as i64,
                        value: i as f64,
                    })
                    .collect::<Vec<_>>(),
            );
            made += n as u64;
        }
        let t0 = Instant::now();
        for samples in chunks {
            up.send(Publish(Arc::new(samples))).await.unwrap();
        }
        // Done when every batch is acknowledged by the receiver.
        loop {
            let st = up.send(GetSinkStatus).await.unwrap();
            if st.spooled_batches == 0 && st.last_seq > 0 && st.acked_seq == st.last_seq {
                break (t0.elapsed(), st);
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let _ = recv.kill();
    let _ = recv.wait();
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("samples: {total} in {} batches, {:.3} s", status.last_seq, elapsed.as_secs_f64());
    println!("throughput: {rate:.0} samples/s (encode + spool + send + receiver ack)");
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("vigil-upload-bench-{}", std::process::id())),
    );
}
