//! The collector child's side of the pipes: [`ParentLink`] reads frames from stdin, answers
//! heartbeats, writes frames to stdout, and ends the process when the supervisor goes away.
//!
//! Frames are written synchronously on the actor thread with one `write_all` each, so two
//! frames never interleave and a frame written just before a crash is already in the pipe.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::io::AsyncReadExt;

use crate::collector::fault::{self, Fault, FaultKind, FaultWhen};
use crate::collector::{CollectorContext, Env, SharedWriter, StopCollector};
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
    writer: SharedWriter,
    fault: Option<Fault>,
    version: String,
    /// The collector actors of the current configuration.
    collectors: Vec<Recipient<StopCollector>>,
    /// One collection at a time across all of them (see `collector`).
    lock: crate::collector::CollectionLock,
}

impl ParentLink {
    /// `fault` is the parsed `VIGIL_FAULT`, already filtered by incarnation.
    pub fn new(version: impl Into<String>, fault: Option<Fault>) -> Self {
        Self {
            writer: Rc::new(RefCell::new(FrameWriter::default())),
            fault,
            version: version.into(),
            collectors: Vec::new(),
            lock: Rc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn configure(
        &mut self,
        collectors: crate::collector::collectors::CollectorsConfig,
        disabled: Vec<String>,
        upload_hosts: Vec<String>,
    ) {
        for c in self.collectors.drain(..) {
            c.do_send(StopCollector);
        }
        let ctx = CollectorContext {
            env: Env { upload_hosts, ..Env::default() },
            interval: collectors.interval(),
            writer: self.writer.clone(),
            lock: self.lock.clone(),
            fault: self.fault.clone().filter(|f| matches!(f.when, FaultWhen::Collector(_))),
        };
        self.collectors = collectors.start(&disabled, &ctx);
        tracing::info!(running = self.collectors.len(), disabled = ?disabled, "Collectors configured.");
    }
}

impl Actor for ParentLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.writer
            .borrow_mut()
            .send(&FromCollector::Hello { pid: std::process::id(), version: self.version.clone() });
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
                self.writer.borrow_mut().send(&FromCollector::HeartbeatAck { seq });
            }
            Inbound::Message(ToCollector::Configure { collectors, disabled, upload_hosts }) => {
                self.configure(*collectors, disabled, upload_hosts);
            }
            Inbound::Closed => {
                tracing::info!("Stdin closed by the supervisor; shutting down.");
                for c in self.collectors.drain(..) {
                    c.do_send(StopCollector);
                }
                // A collection in flight finishes (and sends its samples) before the exit.
                let lock = self.lock.clone();
                actix_rt::spawn(async move {
                    let _guard = lock.lock().await;
                    System::current().stop_with_code(0);
                });
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
            FaultKind::SegvLibc => fault::segv_libc(),
            FaultKind::StackOverflow => {
                fault::stack_overflow(0);
                std::process::abort()
            }
            FaultKind::Oom => fault::oom(),
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
                self.writer.borrow_mut().broken = true;
            }
            FaultKind::Garbage => {
                // A burst now and a smaller one every half second; heartbeats keep flowing.
                self.writer.borrow_mut().write_raw(&fault::garbage(4096));
                ctx.run_interval(Duration::from_millis(500), |this, _| {
                    this.writer.borrow_mut().write_raw(&fault::garbage(256));
                });
            }
        }
    }
}
