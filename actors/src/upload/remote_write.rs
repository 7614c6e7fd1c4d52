//! Prometheus remote write 1.0: the protobuf messages (declared here with prost, field
//! numbers as in Prometheus' `prompb/remote.proto` and `types.proto`), the conversion of a
//! spooled [`Batch`], and the snappy block compression the protocol requires. Sending,
//! retries and drops are those of every HTTP sink ([`super::http`]).
//!
//! # Names
//!
//! A sample `cpu_user{…}` becomes the series `cpu_user` (the `__name__` label) with one label
//! per tag, plus `host` (the batch's host) unless a tag of that name exists. Tag names that
//! are not valid Prometheus label names have every other character replaced by `_`; values
//! are sent as they are. Labels are sorted by name, as receivers require.

use std::collections::BTreeMap;

use super::part::{Carries, Part};
use super::protocol::Batch;
use crate::sample::metric_name as sanitize;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<PromSample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PromSample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// One time series per distinct (name, tags) of the batch, samples in time order.
pub fn to_write_request(batch: &Batch) -> WriteRequest {
    let mut series: BTreeMap<Vec<(String, String)>, Vec<PromSample>> = BTreeMap::new();
    for s in &batch.samples {
        let mut labels: BTreeMap<String, String> =
            s.tags.iter().map(|(k, v)| (sanitize(k), v.clone())).collect();
        labels.entry("host".into()).or_insert_with(|| batch.host.clone());
        labels.insert("__name__".into(), sanitize(&s.name));
        let key: Vec<(String, String)> = labels.into_iter().collect();
        series.entry(key).or_default().push(PromSample { value: s.value, timestamp: s.ts_ms });
    }
    WriteRequest {
        timeseries: series
            .into_iter()
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|s| s.timestamp);
                TimeSeries {
                    labels: labels.into_iter().map(|(name, value)| Label { name, value }).collect(),
                    samples,
                }
            })
            .collect(),
    }
}

/// The request body: protobuf, then snappy (block format).
pub fn encode_body(req: &WriteRequest) -> Vec<u8> {
    let pb = prost::Message::encode_to_vec(req);
    snap::raw::Encoder::new().compress_vec(&pb).expect("snappy accepts any input below 4 GiB")
}

/// A batch as its one request.
pub fn part(url: &str, batch: &Batch) -> Part {
    Part {
        url: url.to_string(),
        body: encode_body(&to_write_request(batch)),
        headers: &[
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        carries: Carries::Samples(batch.samples.len() as u64),
        partial: None,
        error_text: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::protocol::WireSample;

    #[test]
    fn batch_becomes_sorted_labelled_series_and_round_trips() {
        let s = |name: &str, tags: &[(&str, &str)], ts, value| WireSample {
            name: name.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ts_ms: ts,
            value,
        };
        let batch = Batch {
            agent_id: "a".into(),
            sink: "prom".into(),
            seq: 1,
            host: "web-1".into(),
            samples: vec![
                s("load_1", &[], 2000, 0.5),
                s("load_1", &[], 1000, 0.25),
                s("fs_disk_util", &[("mount", "/"), ("fs-type", "ext4")], 1000, 40.0),
            ],
            crash_reports: vec![],
        };
        let req = to_write_request(&batch);
        assert_eq!(req.timeseries.len(), 2);
        let fs = &req.timeseries[0];
        let names: Vec<&str> = fs.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "fs_type", "host", "mount"], "sorted, sanitised");
        let load = &req.timeseries[1];
        assert_eq!(
            load.samples,
            vec![PromSample { value: 0.25, timestamp: 1000 }, PromSample { value: 0.5, timestamp: 2000 }]
        );
        let body = encode_body(&req);
        let pb = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(<WriteRequest as prost::Message>::decode(pb.as_slice()).unwrap(), req);
    }

    #[test]
    fn label_names_are_sanitised() {
        assert_eq!(sanitize("9lives"), "_9lives");
        assert_eq!(sanitize("fs-type"), "fs_type");
    }
}
