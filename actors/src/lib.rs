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
//! * [`ipc`]: the frame codec and the messages on the pipes (both processes).
//! * [`supervisor`]: restart policy, crash reports, status snapshot; applies check-in changes.
//! * [`checkin`]: the check-in actor (remote settings, upload token, module downloads).
//! * [`module`]: signed collector modules: verification, installation, rollback bookkeeping.
//! * [`child_process`]: spawning, pipe draining, exit status.
//! * [`heartbeat`]: liveness of the child.
//! * [`parent_link`]: the child's end of the pipes.
//! * [`crash_report`]: the files of CONTRACT §6.
//! * [`fault`]: `VIGIL_FAULT` injection in the child.
//! * [`collector`]: the `Collector` trait and the generic `CollectorActor`.
//! * [`collectors`]: the one list of collectors, and each collector.
//! * [`config`]: the configuration schema and its semantic checks.
//! * [`protocol`]: the native upload protocol.
//! * [`remote_write`]: Prometheus remote write 1.0 encoding.
//! * [`resolver`]: name resolution without libc (hickory), also for awc.
//! * [`uploader`]: one actor per upload sink (spool, connection, acks).
//! * [`signals`]: signal names.
//! * [`sd_notify`]: readiness and watchdog notifications to systemd.
//! * [`spool`]: the durable, checksummed spool of one upload sink (upload itself: issue 4).

pub mod backoff;
pub mod collector;
pub mod config;
pub mod ipc;
pub mod resolver;
pub mod sample;
pub mod signals;
pub mod supervisor;
pub mod upload;
pub mod validate;

/// The version both processes report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
