//! The native `vigil` sink: one WebSocket connection to `URL` (CONTRACT §7,
//! docs/protocol.md). Spooled batches go out in seq order, at most [`WINDOW`] unacknowledged;
//! the receiver acks each seq, and after a reconnect everything unacknowledged is sent again
//! (the receiver de-duplicates by `(agent_id, sink, seq)`). A failed connection backs off
//! ([`crate::backoff`]); an idle one is pinged every [`PING_EVERY`].

use std::time::Duration;

use actix::prelude::*;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::protocol::{self, ServerMsg};
use super::{Uploader, PING_EVERY, WINDOW};

#[derive(Message)]
#[rtype(result = "()")]
enum ConnEvent {
    Acked(u64),
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
    pub(super) fn pump_ws(&mut self) {
        let Some(tx) = &self.conn else { return };
        let acked = self.spool.acked();
        let start = self.sent_upto.max(acked);
        for rec in self.spool.pending().filter(|r| r.seq > start) {
            if rec.seq > acked + WINDOW {
                break;
            }
            if tx.send(rec.payload.clone()).is_err() {
                break;
            }
            self.sent_upto = rec.seq;
        }
    }

    pub(super) fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.conn.is_some() {
            return;
        }
        self.connecting = true;
        self.generation += 1;
        let generation = self.generation;
        let url = self.cfg.url.clone();
        let token = self.token();
        let tls = self.tls();
        let fut = async move {
            // Names resolve through hickory, never libc's getaddrinfo.
            let client = crate::resolver::http_client(Duration::from_secs(10), tls?);
            let mut req = client.ws(url.as_str());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.connect().await.map(|(_, framed)| framed).map_err(|e| e.to_string())
        };
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            this.connecting = false;
            if std::mem::take(&mut this.reconnect) {
                // Made with the old token: connect again with the new one.
                this.backoff.reset();
                return this.connect(ctx);
            }
            match res {
                Ok(framed) => {
                    tracing::info!(sink = %this.cfg.name, url = %this.cfg.url, "Upload connection established.");
                    this.backoff.reset();
                    this.last_error = None;
                    let (tx, rx) = mpsc::unbounded_channel();
                    this.conn = Some(tx);
                    this.sent_upto = this.spool.acked();
                    run_connection(framed, rx, ctx.address(), generation);
                    this.pump(ctx);
                }
                Err(e) => this.disconnected(ctx, e),
            }
        }));
    }

    fn disconnected(&mut self, ctx: &mut Context<Self>, why: String) {
        self.conn = None;
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
/// acks. Ends with `Closed` on any error or close.
fn run_connection<F>(
    framed: F,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    addr: Addr<Uploader>,
    generation: u64,
) where
    F: futures_util::Sink<ws::Message, Error = awc::error::WsProtocolError>
        + futures_util::Stream<Item = Result<ws::Frame, awc::error::WsProtocolError>>
        + 'static,
{
    let (mut sink, mut stream) = framed.split();
    actix_rt::spawn(async move {
        let why = loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(bytes) => {
                        if let Err(e) = sink.send(ws::Message::Binary(bytes.into())).await {
                            break format!("send: {e}");
                        }
                    }
                    None => break "closed by the uploader".to_string(),
                },
                frame = stream.next() => match frame {
                    Some(Ok(ws::Frame::Binary(b))) => match protocol::decode::<ServerMsg>(&b) {
                        Ok(ServerMsg::Ack { seq }) => addr.do_send(Conn { generation, ev: ConnEvent::Acked(seq) }),
                        Err(e) => tracing::warn!(error = %e, "Ignoring an undecodable message from the receiver."),
                    },
                    Some(Ok(ws::Frame::Ping(p))) => {
                        if sink.send(ws::Message::Pong(p)).await.is_err() {
                            break "send pong failed".to_string();
                        }
                    }
                    Some(Ok(ws::Frame::Close(reason))) => break format!("closed by the receiver: {reason:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("receive: {e}"),
                    None => break "connection closed".to_string(),
                },
                _ = tokio::time::sleep(PING_EVERY) => {
                    if let Err(e) = sink.send(ws::Message::Ping(Vec::new().into())).await {
                        break format!("ping: {e}");
                    }
                }
            }
        };
        addr.do_send(Conn { generation, ev: ConnEvent::Closed(why) });
    });
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
            ConnEvent::Closed(why) => {
                if self.conn.is_some() {
                    self.disconnected(ctx, why);
                }
            }
        }
    }
}
