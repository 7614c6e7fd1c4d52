//! vigil's actors and the typed messages between them, for both processes.
//!
//! vigil runs as two processes so that the risky work can crash without taking the parts
//! that must survive with it:
//!
//! ```text
//! vigil run (supervisor)                              vigil collector (child)
//!   Supervisor ◄── ChildMessage / ChildExited ──┐       ParentLink
//!     │  GetStatus ◄─ status endpoint (binary)   │         ▲ stdin: Heartbeat{seq}
//!     │ spawns per incarnation                   │         │ stdout: Hello, HeartbeatAck
//!     ├─► ChildProcess ── pipes ─────────────────┼─────────┘
//!     │     stdout frames ──────────────────────►│ (ChildMessage, ChildStdoutClosed)
//!     │     stderr → log + byte-exact tail       │
//!     │     exit status ────────────────────────►┘ (ChildExited)
//!     └─► Heartbeat ── SendToChild(Heartbeat) ─► ChildProcess
//!           ◄── Ack (routed by the Supervisor); ── ChildUnresponsive / HeartbeatObserved ─► Supervisor
//!
//! Checkin (own Arbiter) ── GetCheckinInfo, ApplyCollectors, ModuleEvent, RecordChange ─► Supervisor
//!                       └─ TokenChanged ─► Uploader(s)
//! ```
//!
//! # Layout
//!
//! By process: a module under [`supervisor`] or [`upload`] runs only in `vigil run`, one
//! under [`collector`] only in `vigil collector`, and the top level holds only what both
//! share. Shared modules take nothing from the three folders, with one arrow down allowed by
//! design: [`config`] composes the registry's `CollectorsConfig`. [`upload`] takes nothing
//! from [`supervisor`]. `scripts/check-cycles` keeps the tree free of import circles.
//!
//! * [`supervisor`] (supervisor process): the `Supervisor` and its messages, the restart
//!   `policy` (backoff, crash loop, quarantine), `child_process`, `heartbeat`,
//!   `crash_report`, `sd_notify`, `checkin` (own Arbiter) and `module`.
//! * [`upload`] (supervisor process): the `Uploader` per sink, `spool`, one file per sink
//!   type (`native`, `remote_write`), `protocol` (the native wire format and the spooled
//!   batch), `tls`, and `token` (the upload token store check-ins write and sinks read).
//! * [`collector`] (collector process): the `Collector` trait and `CollectorActor`,
//!   `parent_link`, `fault`, and `collectors`: the one registration list and each collector.
//! * Shared: [`ipc`] (the frame codec and the messages on the pipes), [`config`] (the
//!   schema), [`validate`] (located config problems), [`sample`] (samples and metric
//!   declarations), [`resolver`] (names without libc, also for awc), [`signals`] (signal
//!   names), [`backoff`] (the one backoff-with-jitter of every retry loop).

pub mod backoff;
pub mod collector;
pub mod config;
pub mod ipc;
#[doc(hidden)]
pub mod mutate;
pub mod resolver;
pub mod sample;
pub mod signals;
pub mod supervisor;
pub mod upload;
pub mod validate;

/// The version both processes report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
