//! What the HTTP sinks ([`super::remote_write`], [`super::otlp`]) share: one request at a
//! time, in spool order; what a status means ([`outcome`], CONTRACT §7); `Retry-After`; and
//! the per-thread HTTP clients. A batch becomes one or more [`Part`]s (remote write: one
//! request; OTLP: its samples to `/v1/metrics`, its crash reports to `/v1/logs`), sent in
//! order; the batch leaves the spool when its last part is through. A part that was
//! delivered is not sent again when a later one is retried.

use std::time::Duration;

use actix::prelude::*;

use super::part::{Carries, Part};
use super::protocol::Batch;
use super::Uploader;
use crate::config::SinkType;

/// A request and its whole answer must be done within this.
const HTTP_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of a response body read (error texts, OTLP partial-success answers).
const RESPONSE_LIMIT: usize = 64 * 1024;

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
    /// The HTTP client of each HTTP sink, by sink name, made at its first request. An awc
    /// client belongs to the thread that made it, and every sink runs on a thread of its own
    /// ([`crate::upload::SinkHandle`]), so it lives here rather than in the (sendable)
    /// Uploader.
    static CLIENTS: std::cell::RefCell<std::collections::HashMap<String, awc::Client>> = Default::default();
}

/// Drops the client of sink `name` (its TLS settings may have changed): the next request
/// makes a new one.
pub fn forget_client(name: &str) {
    CLIENTS.with_borrow_mut(|c| c.remove(name));
}

impl Uploader {
    /// The requests that deliver `batch` on this sink.
    fn parts(&self, batch: &Batch) -> Vec<Part> {
        match self.cfg.kind {
            SinkType::RemoteWrite => vec![super::remote_write::part(&self.cfg.url, batch)],
            SinkType::Otlp => super::otlp::parts(&self.cfg.url, batch, &self.agent_tags),
            SinkType::Vigil => unreachable!("the vigil sink sends over its WebSocket"),
        }
    }

    /// Sends the oldest unacknowledged batch, one request at a time, so batches arrive in
    /// order. 2xx moves on to its next part, or removes it from the spool after the last;
    /// 400/413/422 drop that part (counted as `rejected`): the receiver will never take it,
    /// and keeping it would block every later batch; every other status and every network
    /// error keeps it and retries with backoff, waiting at least what `Retry-After` asks
    /// ([`outcome`]).
    pub(super) fn pump_http(&mut self, ctx: &mut Context<Self>) {
        // A reload may have made an HTTP sink a vigil one while a retry was scheduled.
        if self.http_busy || self.cfg.kind == SinkType::Vigil {
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
        let batch: Batch = match super::columns::decode_batch(&rec.payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sink = %self.cfg.name, seq = rec.seq, error = %e, "Spooled batch does not decode; dropped (counted as undecodable_batches).");
                self.undecodable_batches += 1;
                self.ack_http(rec.seq, ctx, false);
                return;
            }
        };
        let done = match self.parts_done {
            Some((s, n)) if s == rec.seq => n,
            _ => 0,
        };
        let Some(part) = self.parts(&batch).into_iter().nth(done) else {
            // Every part is through (or the batch had nothing this sink sends).
            self.parts_done = None;
            let sent = !std::mem::take(&mut self.batch_rejected);
            self.ack_http(rec.seq, ctx, sent);
            return;
        };
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
        let mut req = client.post(part.url.as_str());
        for h in part.headers {
            req = req.insert_header(*h);
        }
        if let Some(t) = self.token() {
            req = req.bearer_auth(t);
        }
        self.http_busy = true;
        let body = part.body;
        self.sent_bytes += body.len() as u64;
        let exchange = async move {
            let mut resp = req.send_body(body).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, chrono::Utc::now()));
            let bytes = resp.body().limit(RESPONSE_LIMIT).await.map(|b| b.to_vec()).unwrap_or_default();
            Ok::<_, String>((status, bytes, wait))
        };
        // The client's timeout ends at the response headers; a receiver that then stalls
        // must not hold the sink (one request at a time) for ever.
        let fut = async move {
            tokio::time::timeout(HTTP_EXCHANGE_TIMEOUT, exchange).await.unwrap_or_else(|_| {
                Err(format!("no complete answer within {} s", HTTP_EXCHANGE_TIMEOUT.as_secs()))
            })
        };
        let (carries, partial, error_text, seq) = (part.carries, part.partial, part.error_text, rec.seq);
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            this.http_busy = false;
            let text = |b: &[u8]| {
                error_text.and_then(|read| read(b)).unwrap_or_else(|| {
                    String::from_utf8_lossy(&b[..b.len().min(4096)]).trim().to_string()
                })
            };
            match res.map(|(code, body, wait)| (outcome(code), code, body, wait)) {
                Ok((Outcome::Delivered, _, body, _)) => {
                    this.http_ok = true;
                    this.backoff.reset();
                    this.last_error = None;
                    if let Some((refused, why)) = partial.and_then(|read| read(&body)) {
                        tracing::warn!(sink = %this.cfg.name, seq, refused, message = %why, "Receiver accepted a request but refused some of its points (counted as rejected).");
                        this.error(format!("partial success: {refused} refused: {why}"));
                        this.count_rejected(carries, Some(refused));
                    }
                    this.part_through(seq, ctx);
                }
                Ok((Outcome::Reject, code, body, _)) => {
                    let text = text(&body);
                    tracing::error!(sink = %this.cfg.name, seq, status = code, response = %text, "Receiver rejected a request as bad; its part of the batch is dropped (counted as rejected).");
                    this.error(format!("HTTP {code}: {text}"));
                    this.count_rejected(carries, None);
                    this.part_through(seq, ctx);
                }
                Ok((Outcome::Retry, code, body, wait)) => {
                    let text = text(&body);
                    let why = match wait {
                        Some(w) => format!("HTTP {code}: {text} (Retry-After {} s)", w.as_secs()),
                        None => format!("HTTP {code}: {text}"),
                    };
                    this.retry_http_after(ctx, why, wait)
                }
                Err(e) => this.retry_http(ctx, e),
            }
        }));
    }

    /// Counts what a receiver refused: a whole part (`None`), or `Some(n)` of its points.
    fn count_rejected(&mut self, carries: Carries, points: Option<u64>) {
        match carries {
            Carries::Samples(n) => {
                if points.is_none() {
                    self.rejected_batches += 1;
                    self.batch_rejected = true;
                }
                self.rejected_samples += points.unwrap_or(n);
            }
            Carries::CrashReports(n) => self.rejected_crash_reports += points.unwrap_or(n),
        }
    }

    /// One more part of batch `seq` is done with: the next one is sent, or the batch acked.
    fn part_through(&mut self, seq: u64, ctx: &mut Context<Self>) {
        let done = match self.parts_done {
            Some((s, n)) if s == seq => n + 1,
            _ => 1,
        };
        self.parts_done = Some((seq, done));
        self.pump_http(ctx);
        self.publish_status();
    }

    /// Batch `seq` leaves the spool; `sent`: it was delivered (counted in `sent_batches`),
    /// not dropped.
    fn ack_http(&mut self, seq: u64, ctx: &mut Context<Self>, sent: bool) {
        if let Err(e) = self.spool.ack(seq) {
            tracing::error!(sink = %self.cfg.name, error = %e, "Cannot record an ack in the spool.");
            self.error(format!("spool: {e}"));
            return;
        }
        if sent {
            self.acked_batches += 1;
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
        tracing::warn!(sink = %self.cfg.name, error = %why, retry_in_ms = delay.as_millis() as u64, spooled = self.spool.pending_len(), "Upload failed; batches stay in the spool.");
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
