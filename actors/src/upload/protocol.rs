//! The native upload protocol (the `vigil` sink and `vigil receive`), specified byte for
//! byte in docs/protocol.md: MessagePack (rmp-serde, structs as maps) in binary WebSocket
//! messages.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One sample as uploaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSample {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub ts_ms: i64,
    pub value: f64,
}

/// Client → server: one batch of a sink. `seq` starts at 1 per sink and increases by one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub agent_id: String,
    /// The `[[upload]]` name: seq counts per sink, so receivers key on (agent_id, sink, seq).
    #[serde(default)]
    pub sink: String,
    pub seq: u64,
    pub host: String,
    pub samples: Vec<WireSample>,
    /// Crash reports (the `ID.json` objects) not yet delivered to this sink.
    pub crash_reports: Vec<serde_json::Value>,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The batch `seq` is stored (or was already): the client may forget it and all
    /// earlier ones.
    Ack { seq: u64 },
    /// Sent first on a connection whose upgrade request named the agent and the sink
    /// (`X-Vigil-Agent-Id`, `X-Vigil-Sink`): the highest seq the receiver stored for them (0
    /// for none). The sink numbers its next batch above it, so a lost or restored spool never
    /// makes the receiver discard new batches as duplicates.
    Hello { high_seq: u64 },
}

/// Request headers naming the agent and the sink on the WebSocket upgrade, and the response
/// header by which a receiver says a [`ServerMsg::Hello`] follows.
pub const AGENT_HEADER: &str = "x-vigil-agent-id";
pub const SINK_HEADER: &str = "x-vigil-sink";
pub const HELLO_HEADER: &str = "x-vigil-hello";
/// The request header by which a sink offers the encodings it can send besides the
/// `samples` form ([`super::columns::NAME`]), and the response header naming the one the
/// receiver takes. Without the answer, batches are sent as [`Batch`].
pub const ENCODINGS_HEADER: &str = "x-vigil-encodings";
pub const ENCODING_HEADER: &str = "x-vigil-encoding";

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(msg).expect("protocol messages always encode")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// The agent's identity: generated once (random 128 bits, hex) and kept in
/// `DATA_DIR/agent_id`, so it survives restarts and upgrades.
pub fn agent_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("agent_id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let tmp = data_dir.join(".agent_id.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(id.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_and_agent_id_is_stable() {
        let b = Batch {
            agent_id: "a".into(),
            sink: "main".into(),
            seq: 7,
            host: "h".into(),
            samples: vec![WireSample { name: "load_1".into(), tags: BTreeMap::new(), ts_ms: 1, value: 0.5 }],
            crash_reports: vec![serde_json::json!({"id": "x"})],
        };
        assert_eq!(decode::<Batch>(&encode(&b)).unwrap(), b);
        assert_eq!(
            decode::<ServerMsg>(&encode(&ServerMsg::Ack { seq: 3 })).unwrap(),
            ServerMsg::Ack { seq: 3 }
        );
        let d = std::env::temp_dir().join(format!("vigil-agent-id-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let a = agent_id(&d).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(agent_id(&d).unwrap(), a);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// What a receiver decodes (a batch) and what a sink decodes (a server message) are total
    /// over any bytes: 200,000 valid, damaged and random inputs, no panic; undamaged ones
    /// round-trip.
    #[test]
    fn property_batch_and_server_message_decoders_are_total() {
        use rand::{rngs::StdRng, RngExt, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0xBA7C4);
        for case in 0..200_000u32 {
            let n = rng.random_range(0..4);
            let batch = Batch {
                agent_id: format!("{:x}", rng.random::<u64>()),
                sink: "main".into(),
                seq: rng.random(),
                host: "h\u{e9}".into(),
                samples: (0..n)
                    .map(|i| WireSample {
                        name: format!("m{i}"),
                        tags: BTreeMap::from([("k".to_string(), format!("{}", rng.random::<u16>()))]),
                        ts_ms: rng.random(),
                        value: rng.random(),
                    })
                    .collect(),
                crash_reports: if case % 7 == 0 {
                    vec![serde_json::json!({"id": "x", "signal": 11})]
                } else {
                    vec![]
                },
            };
            let valid = encode(&batch);
            if case % 10 == 0 {
                assert_eq!(decode::<Batch>(&valid).unwrap(), batch);
                assert_eq!(super::super::columns::sample_count(&valid), n as u64);
            }
            let bytes = crate::mutate::mutate(&mut rng, &valid);
            let _ = decode::<Batch>(&bytes);
            let _ = super::super::columns::sample_count(&bytes);
            let msg = if case % 2 == 0 {
                ServerMsg::Ack { seq: rng.random() }
            } else {
                ServerMsg::Hello { high_seq: rng.random() }
            };
            let _ = decode::<ServerMsg>(&crate::mutate::mutate(&mut rng, &encode(&msg)));
        }
    }
}
