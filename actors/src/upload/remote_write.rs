//! Prometheus remote write 1.0: the protobuf messages (declared here with prost, field
//! numbers as in Prometheus' `prompb/remote.proto` and `types.proto`), the conversion of a
//! spooled [`Batch`], and the snappy block compression the protocol requires.
//!
//! # Names
//!
//! A sample `cpu_user{…}` becomes the series `cpu_user` (the `__name__` label) with one label
//! per tag, plus `host` (the batch's host) unless a tag of that name exists. Tag names that
//! are not valid Prometheus label names have every other character replaced by `_`; values
//! are sent as they are. Labels are sorted by name, as receivers require.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;

use super::protocol::{self, Batch};
use super::Uploader;
use crate::sample::metric_name as sanitize;

/// A request and its whole answer must be done within this.
const HTTP_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

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

/// What to do after a response with this status.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Everything that is not about this batch (401, 403, 404, 407, 429, 5xx, a redirect, an
    /// unknown code): the upstream is unavailable to us for now; keep the batch, try again.
    Retry,
    /// 400, 413, 422: the receiver says this batch itself is bad and will never take it;
    /// drop it and count (`rejected`), or it would block every later batch.
    Reject,
}

/// The one place that decides what a status means (CONTRACT §7). This departs on purpose
/// from remote write 1.0's "do not retry 4xx other than 429": an expired token or a proxy's
/// 403/404 during maintenance is an outage, which is what the spool is there to ride out.
pub fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        400 | 413 | 422 => Outcome::Reject,
        _ => Outcome::Retry,
    }
}

/// The longest `Retry-After` honoured: a receiver asking for more is retried after this
/// (a typo'd or hostile header must not park the sink for days).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

/// A `Retry-After` header's wait: delay-seconds or an HTTP-date (RFC 9110 §10.2.3), relative
/// to `now`; `None` when absent or unparsable. A date in the past means "now".
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    let wait = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&chrono::Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

thread_local! {
    /// The HTTP client of each remote_write sink, by sink name, made at its first request. An
    /// awc client belongs to the thread that made it, and every sink runs on a thread of its
    /// own ([`crate::upload::SinkHandle`]), so it lives here rather than in the (sendable)
    /// Uploader.
    static CLIENTS: std::cell::RefCell<std::collections::HashMap<String, awc::Client>> = Default::default();
}

impl Uploader {
    /// remote_write: POSTs the oldest unacknowledged batch, one request at a time, so
    /// batches arrive in order. 2xx removes it from the spool; 400/413/422 drop it (counted
    /// as `rejected`): the receiver will never take it, and keeping it would block every later
    /// batch; every other status and every network error keeps it and retries with backoff,
    /// waiting at least what `Retry-After` asks ([`outcome`]).
    pub(super) fn pump_http(&mut self, ctx: &mut Context<Self>) {
        if self.http_busy {
            return;
        }
        let Some(seq) = self.spool.first_pending() else { return };
        let rec = match self.spool.read(seq) {
            Ok(rec) => rec,
            Err(e @ super::spool::SpoolError::Damaged { .. }) => {
                tracing::error!(sink = %self.cfg.name, seq, error = %e, "A spooled batch was damaged on disk; skipped (counted as corrupt_records).");
                self.spool.skip_damaged(seq);
                return self.pump_http(ctx);
            }
            Err(e) => return self.retry_http(ctx, format!("spool: {e}")),
        };
        let batch: Batch = match protocol::decode(&rec.payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sink = %self.cfg.name, seq = rec.seq, error = %e, "Spooled batch does not decode; dropped (counted as undecodable_batches).");
                self.undecodable_batches += 1;
                self.ack_http(rec.seq, ctx);
                return;
            }
        };
        let body = encode_body(&to_write_request(&batch));
        let client = match CLIENTS.with_borrow(|c| c.get(&self.cfg.name).cloned()) {
            Some(c) => c,
            None => match self.tls() {
                Ok(tls) => {
                    let c = crate::resolver::http_client(Duration::from_secs(30), tls);
                    CLIENTS.with_borrow_mut(|m| m.insert(self.cfg.name.clone(), c.clone()));
                    c
                }
                Err(e) => return self.retry_http(ctx, e),
            },
        };
        let mut req = client
            .post(self.cfg.url.as_str())
            .insert_header(("Content-Encoding", "snappy"))
            .insert_header(("Content-Type", "application/x-protobuf"))
            .insert_header(("X-Prometheus-Remote-Write-Version", "0.1.0"));
        if let Some(t) = self.token() {
            req = req.bearer_auth(t);
        }
        self.http_busy = true;
        let exchange = async move {
            let mut resp = req.send_body(body).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, chrono::Utc::now()));
            let text = resp
                .body()
                .limit(4096)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Ok::<_, String>((status, text, wait))
        };
        // The client's timeout ends at the response headers; a receiver that then stalls
        // must not hold the sink (one request at a time) for ever.
        let fut = async move {
            tokio::time::timeout(HTTP_EXCHANGE_TIMEOUT, exchange).await.unwrap_or_else(|_| {
                Err(format!("no complete answer within {} s", HTTP_EXCHANGE_TIMEOUT.as_secs()))
            })
        };
        let samples = batch.samples.len() as u64;
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            this.http_busy = false;
            match res.map(|(code, text, wait)| (outcome(code), code, text, wait)) {
                Ok((Outcome::Delivered, ..)) => {
                    this.http_ok = true;
                    this.backoff.reset();
                    this.last_error = None;
                    this.acked_batches += 1;
                    this.ack_http(rec.seq, ctx);
                }
                Ok((Outcome::Reject, code, text, _)) => {
                    tracing::error!(sink = %this.cfg.name, seq = rec.seq, status = code, response = %text.trim(), "Receiver rejected a batch; dropped (counted as rejected).");
                    this.error(format!("HTTP {code}: {}", text.trim()));
                    this.rejected_batches += 1;
                    this.rejected_samples += samples;
                    this.ack_http(rec.seq, ctx);
                }
                Ok((Outcome::Retry, code, text, wait)) => {
                    let why = match wait {
                        Some(w) => format!("HTTP {code}: {} (Retry-After {} s)", text.trim(), w.as_secs()),
                        None => format!("HTTP {code}: {}", text.trim()),
                    };
                    this.retry_http_after(ctx, why, wait)
                }
                Err(e) => this.retry_http(ctx, e),
            }
        }));
    }

    fn ack_http(&mut self, seq: u64, ctx: &mut Context<Self>) {
        if let Err(e) = self.spool.ack(seq) {
            tracing::error!(sink = %self.cfg.name, error = %e, "Cannot record an ack in the spool.");
            self.error(format!("spool: {e}"));
            return;
        }
        self.pump_http(ctx);
        self.publish_status();
    }

    fn retry_http(&mut self, ctx: &mut Context<Self>, why: String) {
        self.retry_http_after(ctx, why, None)
    }

    /// Retries after the backoff's next delay, or after the receiver's `Retry-After` when it
    /// asks for longer (never sooner than it asked).
    fn retry_http_after(&mut self, ctx: &mut Context<Self>, why: String, retry_after: Option<Duration>) {
        self.http_ok = false;
        self.http_busy = true;
        let delay = self.backoff.next_delay().max(retry_after.unwrap_or_default());
        tracing::warn!(sink = %self.cfg.name, error = %why, retry_in_ms = delay.as_millis() as u64, spooled = self.spool.pending_len(), "remote_write failed; batches stay in the spool.");
        self.error(why);
        ctx.run_later(delay, |this, ctx| {
            this.http_busy = false;
            this.pump_http(ctx);
        });
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
    fn only_a_bad_batch_is_rejected_every_other_failure_is_retried() {
        assert_eq!(outcome(200), Outcome::Delivered);
        assert_eq!(outcome(204), Outcome::Delivered);
        for code in [400, 413, 422] {
            assert_eq!(outcome(code), Outcome::Reject, "{code}");
        }
        for code in [301, 401, 403, 404, 405, 407, 408, 409, 429, 499, 500, 502, 503, 504, 599, 999] {
            assert_eq!(outcome(code), Outcome::Retry, "{code}");
        }
        assert_eq!(sanitize("9lives"), "_9lives");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now =
            chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO), "past: now");
        assert_eq!(retry_after("86400", now), Some(RETRY_AFTER_MAX));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
