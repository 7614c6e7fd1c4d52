//! The collector child's side of the pipes: [`ParentLink`] reads frames from stdin, answers
//! heartbeats, writes frames to stdout, and ends the process when the supervisor goes away.
//!
//! Frames are written synchronously on the actor thread with one `write_all` each, so two
//! frames never interleave and a frame written just before a crash is already in the pipe.

use std::io::Write;
use std::time::Duration;

use actix::prelude::*;
use tokio::io::AsyncReadExt;

use crate::fault::{self, Fault, FaultKind, FaultWhen};
use crate::ipc::{self, Decoded, Decoder, FromCollector, ToCollector};

/// Writes frames to fd 1.
pub struct FrameWriter {
    out: std::io::Stdout,
    broken: bool,
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self { out: std::io::stdout(), broken: false }
    }
}

impl FrameWriter {
    /// Sends one message; a write error (the supervisor is gone) is logged once and the
    /// writer goes quiet: stdin EOF or PDEATHSIG will end the process.
    pub fn send(&mut self, msg: &FromCollector) {
        match ipc::encode(msg) {
            Ok(frame) => self.write_raw(&frame),
            Err(e) => tracing::error!(error = %e, "Cannot encode a frame for the supervisor."),
        }
    }

    /// Writes bytes as they are (used by the `garbage` fault).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        let mut out = self.out.lock();
        if let Err(e) = out.write_all(bytes).and_then(|_| out.flush()) {
            self.broken = true;
            tracing::warn!(error = %e, "Cannot write to the supervisor; stdout is gone.");
        }
    }
}

/// A frame (or its absence) read from stdin.
#[derive(Message)]
#[rtype(result = "()")]
enum Inbound {
    Message(ToCollector),
    Closed,
}

/// Fire the configured fault now.
#[derive(Message)]
#[rtype(result = "()")]
struct FireFault;

/// The collector child's link to the supervisor.
pub struct ParentLink {
    writer: FrameWriter,
    fault: Option<Fault>,
    version: String,
}

impl ParentLink {
    /// `fault` is the parsed `VIGIL_FAULT`, already filtered by incarnation.
    pub fn new(version: impl Into<String>, fault: Option<Fault>) -> Self {
        Self { writer: FrameWriter::default(), fault, version: version.into() }
    }
}

impl Actor for ParentLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.writer.send(&FromCollector::Hello { pid: std::process::id(), version: self.version.clone() });
        let me = ctx.address();
        actix_rt::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut dec = Decoder::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        dec.feed(&buf[..n]);
                        while let Some(item) = dec.next_item::<ToCollector>() {
                            match item {
                                Decoded::Message(m) => me.do_send(Inbound::Message(m)),
                                Decoded::Text(t) => tracing::warn!(
                                    text = %String::from_utf8_lossy(&t),
                                    "Ignoring non-frame bytes on stdin."
                                ),
                                Decoded::Invalid(e) => {
                                    tracing::warn!(error = %e, "Ignoring a bad frame on stdin.")
                                }
                            }
                        }
                    }
                }
            }
            me.do_send(Inbound::Closed);
        });
        if let Some(f) = &self.fault {
            match &f.when {
                FaultWhen::After(d) => {
                    ctx.run_later(*d, |_, ctx| ctx.notify(FireFault));
                }
                FaultWhen::Collector(name) => {
                    tracing::info!(collector = %name, "Fault armed for a collector's next collection.");
                }
            }
        }
    }
}

impl Handler<Inbound> for ParentLink {
    type Result = ();

    fn handle(&mut self, msg: Inbound, _ctx: &mut Context<Self>) {
        match msg {
            Inbound::Message(ToCollector::Heartbeat { seq }) => {
                self.writer.send(&FromCollector::HeartbeatAck { seq });
            }
            Inbound::Closed => {
                tracing::info!("Stdin closed by the supervisor; shutting down.");
                System::current().stop_with_code(0);
            }
        }
    }
}

impl Handler<FireFault> for ParentLink {
    type Result = ();

    fn handle(&mut self, _: FireFault, ctx: &mut Context<Self>) {
        let Some(f) = self.fault.clone() else { return };
        tracing::warn!(fault = ?f.kind, "Injecting fault (VIGIL_FAULT).");
        match f.kind {
            FaultKind::Segv => fault::segv(),
            FaultKind::Abort => std::process::abort(),
            FaultKind::Panic => fault::panic_now(),
            FaultKind::Hang => fault::hang(),
            FaultKind::Exit(code) => std::process::exit(code),
            FaultKind::StderrFlood(n) => {
                fault::flood_stderr(n);
                fault::segv()
            }
            FaultKind::CloseStdout => {
                fault::close_stdout();
                self.writer.broken = true;
            }
            FaultKind::Garbage => {
                // A burst now and a smaller one every half second; heartbeats keep flowing.
                self.writer.write_raw(&fault::garbage(4096));
                ctx.run_interval(Duration::from_millis(500), |this, _| {
                    this.writer.write_raw(&fault::garbage(256));
                });
            }
        }
    }
}
