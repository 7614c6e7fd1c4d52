//! The native `vigil` sink: one WebSocket connection to `URL` (CONTRACT §7,
//! docs/protocol.md). Spooled batches go out in seq order, at most [`WINDOW`] unacknowledged;
//! the receiver acks each seq, and after a reconnect everything unacknowledged is sent again
//! (the receiver de-duplicates by `(agent_id, sink, seq)`). A failed connection backs off
//! ([`crate::backoff`]); an idle one is pinged every [`PING_EVERY`].

use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::columns;
use super::protocol::{self, ServerMsg};
use super::{Uploader, PING_EVERY, WINDOW};

#[derive(Message)]
#[rtype(result = "()")]
enum ConnEvent {
    Acked(u64),
    Hello(u64),
    Closed(String),
}

#[derive(Message)]
#[rtype(result = "()")]
struct Conn {
    generation: u64,
    ev: ConnEvent,
}

impl Uploader {
    /// Sends pending batches up to the window.
    /// Payloads are read back from the spool one at a time, so at most the window is in
    /// memory however long the backlog.
    pub(super) fn pump_ws(&mut self) {
        if self.conn.is_none() || self.awaiting_hello {
            return;
        }
        let acked = self.spool.acked();
        let start = self.sent_upto.max(acked);
        let seqs: Vec<u64> = self
            .spool
            .pending_seqs()
            .skip_while(|&s| s <= start)
            .take_while(|&s| s <= acked + WINDOW)
            .collect();
        for seq in seqs {
            let mut rec = match self.spool.read(seq) {
                Ok(rec) => rec,
                Err(e @ super::spool::SpoolError::Damaged { .. }) => {
                    tracing::error!(sink = %self.cfg.name, seq, error = %e, "A spooled batch was damaged on disk; skipped (counted as corrupt_records).");
                    self.spool.skip_damaged(seq);
                    continue;
                }
                Err(e) => {
                    // Tried again at the next ack or flush.
                    self.error(format!("spool: {e}"));
                    break;
                }
            };
            // What the receiver reads: the columns form against the series this connection
            // carried, or for a receiver that did not announce it, the samples form.
            let wire = match &mut self.wire {
                Some(sent) => sent.wire(&rec.payload),
                None => columns::samples_form(&rec.payload),
            };
            match wire {
                Ok(Some(bytes)) => rec.payload = bytes,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(sink = %self.cfg.name, seq, error = %e, "Spooled batch does not decode; dropped (counted as undecodable_batches).");
                    self.undecodable_batches += 1;
                    self.spool.forget(seq);
                    continue;
                }
            }
            let Some(tx) = &self.conn else { return };
            let len = rec.payload.len() as u64;
            if tx.send((rec.seq, rec.payload)).is_err() {
                break;
            }
            self.sent_bytes += len;
            self.sent_upto = seq;
        }
    }

    pub(super) fn connect(&mut self, ctx: &mut Context<Self>) {
        // A reload may have made a vigil sink an HTTP one while a reconnect was scheduled.
        if self.connecting || self.conn.is_some() || self.cfg.kind != crate::config::SinkType::Vigil {
            return;
        }
        self.connecting = true;
        self.generation += 1;
        let generation = self.generation;
        let url = self.cfg.url.clone();
        let token = self.token();
        let tls = self.tls();
        let (agent, sink) = (self.agent_id.clone(), self.cfg.name.clone());
        let fut = async move {
            // Names resolve through hickory, never libc's getaddrinfo.
            let client = crate::resolver::http_client(Duration::from_secs(10), tls?);
            let mut req = client
                .ws(url.as_str())
                .set_header(protocol::AGENT_HEADER, agent)
                .set_header(protocol::SINK_HEADER, sink)
                .set_header(protocol::ENCODINGS_HEADER, columns::NAME);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.connect()
                .await
                .map(|(resp, framed)| {
                    let h = resp.headers();
                    let columns = h
                        .get(protocol::ENCODING_HEADER)
                        .is_some_and(|v| v.as_bytes() == columns::NAME.as_bytes());
                    (h.contains_key(protocol::HELLO_HEADER), columns, framed)
                })
                .map_err(|e| e.to_string())
        };
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            this.connecting = false;
            if std::mem::take(&mut this.reconnect) {
                // Made with the old token: connect again with the new one.
                this.backoff.reset();
                return this.connect(ctx);
            }
            match res {
                Ok((hello, columns, framed)) => {
                    tracing::info!(sink = %this.cfg.name, url = %this.cfg.url, columns, "Upload connection established.");
                    this.wire = columns.then(columns::SentSeries::default);
                    // A receiver that announces a Hello gets nothing before it: a batch sent
                    // under a seq it already holds would be acked and discarded.
                    this.awaiting_hello = hello;
                    if hello {
                        let within = crate::config::secs(this.cfg.ack_timeout_secs);
                        ctx.run_later(within, move |this, ctx| {
                            if this.generation == generation && this.awaiting_hello && this.conn.is_some() {
                                this.generation += 1;
                                this.disconnected(ctx, format!("no Hello from the receiver within ack_timeout_secs ({} s)", within.as_secs_f64()));
                            }
                        });
                    }
                    this.backoff.reset();
                    this.last_error = None;
                    let (tx, rx) = mpsc::unbounded_channel();
                    this.conn = Some(tx);
                    this.sent_upto = this.spool.acked();
                    let ack_timeout = crate::config::secs(this.cfg.ack_timeout_secs);
                    run_connection(framed, rx, ctx.address(), generation, ack_timeout);
                    this.pump(ctx);
                    this.publish_status();
                }
                Err(e) => this.disconnected(ctx, e),
            }
        }));
    }

    fn disconnected(&mut self, ctx: &mut Context<Self>, why: String) {
        self.conn = None;
        self.awaiting_hello = false;
        let delay = self.backoff.next_delay();
        tracing::warn!(
            sink = %self.cfg.name,
            error = %why,
            retry_in_ms = delay.as_millis() as u64,
            spooled = self.spool.pending_len(),
            "Upload connection failed; batches stay in the spool."
        );
        self.error(why);
        ctx.run_later(delay, |this, ctx| this.connect(ctx));
    }
}

/// Drives one WebSocket connection: writes queued batches (and pings when idle), reads
/// acks. Ends with `Closed` on any error or close, and when the receiver stops answering:
/// a batch not acknowledged within `ack_timeout`, a ping without a pong within it, or a
/// send that cannot be written within it (a stopped receiver closes nothing; its TCP window
/// just fills).
fn run_connection<F>(
    framed: F,
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    addr: Addr<Uploader>,
    generation: u64,
    ack_timeout: Duration,
) where
    F: futures_util::Sink<ws::Message, Error = awc::error::WsProtocolError>
        + futures_util::Stream<Item = Result<ws::Frame, awc::error::WsProtocolError>>
        + 'static,
{
    let (mut sink, mut stream) = framed.split();
    let ping_every = PING_EVERY.min(ack_timeout);
    actix_rt::spawn(async move {
        let mut deadlines = Deadlines::default();
        let mut last_activity = Instant::now();
        let why = loop {
            let now = Instant::now();
            // A ping is due after `ping_every` without traffic, unless one is already out.
            let ping_due = deadlines.ping.is_none().then(|| last_activity + ping_every);
            let wake = [deadlines.next(ack_timeout), ping_due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + ping_every);
            tokio::select! {
                out = rx.recv() => match out {
                    Some((seq, bytes)) => {
                        let sent = tokio::time::timeout(ack_timeout, sink.send(ws::Message::Binary(bytes.into()))).await;
                        match sent {
                            Ok(Ok(())) => deadlines.sent(seq, Instant::now()),
                            Ok(Err(e)) => break format!("send: {e}"),
                            Err(_) => break format!("cannot send batch {seq} within ack_timeout_secs ({} s): the receiver does not read", ack_timeout.as_secs_f64()),
                        }
                        last_activity = Instant::now();
                    }
                    None => break "closed by the uploader".to_string(),
                },
                frame = stream.next() => {
                    last_activity = Instant::now();
                    match frame {
                        Some(Ok(ws::Frame::Binary(b))) => match protocol::decode::<ServerMsg>(&b) {
                            Ok(ServerMsg::Ack { seq }) => {
                                deadlines.acked(seq);
                                addr.do_send(Conn { generation, ev: ConnEvent::Acked(seq) })
                            }
                            Ok(ServerMsg::Hello { high_seq }) => {
                                addr.do_send(Conn { generation, ev: ConnEvent::Hello(high_seq) })
                            }
                            Err(e) => tracing::warn!(error = %e, "Ignoring an undecodable message from the receiver."),
                        },
                        Some(Ok(ws::Frame::Ping(p))) => {
                            match tokio::time::timeout(ack_timeout, sink.send(ws::Message::Pong(p))).await {
                                Ok(Ok(())) => {}
                                _ => break "send pong failed".to_string(),
                            }
                        }
                        Some(Ok(ws::Frame::Pong(_))) => deadlines.ping = None,
                        Some(Ok(ws::Frame::Close(reason))) => break format!("closed by the receiver: {reason:?}"),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break format!("receive: {e}"),
                        None => break "connection closed".to_string(),
                    }
                },
                _ = tokio::time::sleep_until(wake.max(now).into()) => {
                    let now = Instant::now();
                    if let Some(why) = deadlines.expired(now, ack_timeout) {
                        break why;
                    }
                    if now >= last_activity + ping_every && deadlines.ping.is_none() {
                        match tokio::time::timeout(ack_timeout, sink.send(ws::Message::Ping(Vec::new().into()))).await {
                            Ok(Ok(())) => deadlines.ping = Some(Instant::now()),
                            Ok(Err(e)) => break format!("ping: {e}"),
                            Err(_) => break format!("cannot send a ping within ack_timeout_secs ({} s)", ack_timeout.as_secs_f64()),
                        }
                        last_activity = Instant::now();
                    }
                }
            }
        };
        addr.do_send(Conn { generation, ev: ConnEvent::Closed(why) });
    });
}

/// What a connection waits for from the receiver, and since when: the batches sent and not
/// yet acknowledged (in seq order), and the ping not yet answered.
#[derive(Debug, Default)]
struct Deadlines {
    unacked: std::collections::VecDeque<(u64, Instant)>,
    ping: Option<Instant>,
}

impl Deadlines {
    fn sent(&mut self, seq: u64, at: Instant) {
        self.unacked.push_back((seq, at));
    }

    /// An ack covers its seq and everything before it.
    fn acked(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|&(s, _)| s <= seq) {
            self.unacked.pop_front();
        }
    }

    /// When the oldest wait runs out.
    fn next(&self, timeout: Duration) -> Option<Instant> {
        let batch = self.unacked.front().map(|&(_, at)| at + timeout);
        let ping = self.ping.map(|at| at + timeout);
        batch.into_iter().chain(ping).min()
    }

    /// Why the connection is dead at `now`, if it is.
    fn expired(&self, now: Instant, timeout: Duration) -> Option<String> {
        let secs = timeout.as_secs_f64();
        if let Some(&(seq, _)) = self.unacked.front().filter(|&&(_, at)| now >= at + timeout) {
            return Some(format!("batch {seq} not acknowledged within ack_timeout_secs ({secs} s): the receiver stopped answering"));
        }
        if self.ping.is_some_and(|at| now >= at + timeout) {
            return Some(format!(
                "no pong within ack_timeout_secs ({secs} s): the receiver stopped answering"
            ));
        }
        None
    }
}

impl Handler<Conn> for Uploader {
    type Result = ();

    fn handle(&mut self, Conn { generation, ev }: Conn, ctx: &mut Context<Self>) {
        if generation != self.generation {
            return;
        }
        match ev {
            ConnEvent::Acked(seq) => {
                let before = self.spool.acked();
                if let Err(e) = self.spool.ack(seq) {
                    tracing::error!(sink = %self.cfg.name, error = %e, "Cannot record an ack in the spool.");
                    self.error(format!("spool: {e}"));
                }
                self.acked_batches += self.spool.acked().saturating_sub(before);
                self.pump(ctx);
            }
            ConnEvent::Hello(high) => {
                self.receiver_holds(high);
                self.awaiting_hello = false;
                self.pump(ctx);
            }
            ConnEvent::Closed(why) => {
                if self.conn.is_some() {
                    self.disconnected(ctx, why);
                }
            }
        }
        // What changed is visible in /status at once, not at the next STATUS_EVERY tick.
        self.publish_status();
    }
}

impl Uploader {
    /// The receiver holds every batch of this sink up to `high` ([`ServerMsg::Hello`]). The
    /// next batch is numbered above it, and the unacknowledged batches at or below it are
    /// acknowledged: the receiver has them. Except when the spool is new (it was started from
    /// nothing, so the receiver's batches came from a spool that was lost): then those batches
    /// are new data under stale seqs, and are spooled again above `high` first.
    pub(super) fn receiver_holds(&mut self, high: u64) {
        let renumber: Vec<u64> = if self.spool.is_new() {
            self.spool.pending_seqs().take_while(|&s| s <= high).collect()
        } else {
            Vec::new()
        };
        if self.spool.next_seq() <= high {
            tracing::warn!(
                sink = %self.cfg.name,
                receiver_high_seq = high,
                next_seq = self.spool.next_seq(),
                renumbered = renumber.len(),
                "The receiver holds seqs above this sink's (its spool was lost or restored); numbering continues above the receiver's."
            );
        }
        self.spool.advance_next_seq(high + 1);
        for seq in renumber {
            let batch = self.spool.read(seq).ok().and_then(|r| super::columns::decode_batch(&r.payload).ok());
            let Some(mut batch) = batch else {
                self.undecodable_batches += 1;
                continue;
            };
            batch.seq = self.spool.next_seq();
            if let Err(e) = self.spool.append(&super::columns::encode(&batch)) {
                // Tried again at the next connection (the spool stays new).
                self.spool_failed(format!("spool: {e}"));
                return;
            }
        }
        if let Err(e) = self.spool.ack(high) {
            tracing::error!(sink = %self.cfg.name, error = %e, "Cannot record an ack in the spool.");
            self.error(format!("spool: {e}"));
        }
        self.spool.mark_known();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unacknowledged_batch_sets_the_deadline() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(2);
        let mut d = Deadlines::default();
        assert_eq!(d.next(timeout), None);
        d.sent(1, t0);
        d.sent(2, t0 + Duration::from_secs(1));
        assert_eq!(d.next(timeout), Some(t0 + timeout));
        assert_eq!(d.expired(t0 + Duration::from_millis(1999), timeout), None);
        let why = d.expired(t0 + timeout, timeout).unwrap();
        assert!(why.contains("batch 1 not acknowledged"), "{why}");
        // An ack of 1 moves the deadline to batch 2's; an ack of 2 clears it.
        d.acked(1);
        assert_eq!(d.next(timeout), Some(t0 + Duration::from_secs(3)));
        assert_eq!(d.expired(t0 + timeout, timeout), None);
        d.acked(5);
        assert_eq!(d.next(timeout), None);
    }

    #[test]
    fn an_unanswered_ping_expires() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(2);
        let d = Deadlines { ping: Some(t0), ..Default::default() };
        assert_eq!(d.next(timeout), Some(t0 + timeout));
        assert!(d.expired(t0 + timeout, timeout).unwrap().contains("no pong"));
    }
}
