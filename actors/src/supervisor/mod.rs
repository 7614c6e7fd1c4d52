//! [`Supervisor`]: keeps one collector child running, restarts it when it dies, and keeps the
//! reason for every death (crash reports, `/status`).
//!
//! # States
//!
//! ```text
//!            spawn            Hello
//! (start) ─────────► starting ─────► running
//!                        ▲  │           │  child died (any way)
//!          delay elapsed │  └───────────┤
//!                        │              ▼
//!                        └──── backoff | crash_loop
//! Shutdown (SIGTERM/SIGINT) from any state ─► stopping ─► stopped (process exits 0)
//! ```
//!
//! # Restart policy ([`policy`])
//!
//! Each crash asks [`RestartPolicy`] how long to wait (exponential backoff with the one
//! jitter of [`crate::backoff`]) and whether it is a crash loop; a crash with a collector in
//! flight asks [`Quarantine`] whether that collector must be left out for a while. Both are
//! plain code in `policy.rs`, tested without processes.
//!
//! # Check-ins ([`updates`])
//!
//! New collector settings and new collector modules arrive from the check-in actor; both are
//! applied by a *graceful restart* (stdin closed, `stop_grace_secs`, then SIGKILL; the exit is
//! a requested one, not a crash, and the next incarnation starts at once). A new module is on
//! probation: if it crash-loops within `crash_loop_window_secs` of the switch, the previous
//! module comes back ([`crate::supervisor::module::Modules::on_crash`]).

pub mod checkin;
pub mod child_process;
pub mod crash_report;
pub mod deaths;
pub mod disk;
pub mod heartbeat;
pub mod module;
pub mod oom;
pub mod policy;
pub mod sd_notify;
pub mod stack;
mod updates;
pub use policy::{Quarantine, RestartDecision, RestartPolicy};
pub use updates::{
    ApplyCollectors, CheckinInfo, CheckinReport, CheckinStatus, GetCheckinInfo, ModuleEvent, RecordChange,
    Reload,
};

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::collector::collectors::{CollectorsConfig, NAMES};
use crate::config::{StackCapture, SupervisorConfig};
use crate::ipc::{FromCollector, ToCollector};
use crate::sample::Sample;
use crate::signals::signal_name;
use crate::supervisor::child_process::{
    ChildEvents, ChildExited, ChildMessage, ChildProcess, ChildStdoutClosed, Kill, SendToChild, SpawnSpec,
};
use crate::supervisor::crash_report::{CrashReport, LastExit};
use crate::supervisor::heartbeat::{Ack, ChildUnresponsive, Heartbeat, HeartbeatObserved, StopHeartbeat};
use crate::supervisor::module::{Change, ModuleStatus, Modules};

/// Lifecycle state of the collector as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    Running,
    Backoff,
    CrashLoop,
    Stopping,
    Stopped,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 6] =
        [State::Starting, State::Running, State::Backoff, State::CrashLoop, State::Stopping, State::Stopped];

    /// The name `/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::CrashLoop => "crash_loop",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }
}

/// Everything the Supervisor needs to run.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub config: SupervisorConfig,
    pub data_dir: PathBuf,
    /// The executable to run as the collector, and its arguments.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to the inherited environment of every incarnation.
    pub env: Vec<(OsString, OsString)>,
    pub version: String,
    /// The host name samples carry (`agent.hostname` or the system's), shown on the status page.
    pub host: String,
    /// What the collector child runs (sent to every incarnation).
    pub collectors: CollectorsConfig,
    /// `agent.tags`, added to every sample.
    pub tags: BTreeMap<String, String>,
    /// Host names of the upload URLs (the dns collector's default names).
    pub upload_hosts: Vec<String>,
    /// The upload sinks every sample is published to (each on its own thread), told to
    /// spool what they buffer before the process exits.
    pub sinks: Vec<crate::upload::SinkHandle>,
    /// systemd's notification socket, when started by systemd with `Type=notify`.
    pub notify: Option<std::sync::Arc<crate::supervisor::sd_notify::SdNotify>>,
}

impl SupervisorSettings {
    pub fn crash_dir(&self) -> PathBuf {
        self.data_dir.join("crashes")
    }
}

/// Stop the collector and then the process (SIGTERM/SIGINT). A second one kills at once.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub signal: &'static str,
}

/// What `/status` shows of the supervisor.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    pub version: String,
    /// The host name samples carry.
    pub host: String,
    /// `agent.tags`.
    pub tags: BTreeMap<String, String>,
    pub pid: u32,
    pub uptime_ms: u64,
    pub collector: CollectorStatus,
    pub collectors: Vec<CollectorEntry>,
    pub uploads: Vec<serde_json::Value>,
    /// Series in the supervisor's latest-value store (what `/metrics` serves); those without
    /// a value for the stale window are forgotten, so this follows what exists now.
    pub series: usize,
    /// The last check-in and the last change it brought (absent when check-ins are off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkin: Option<CheckinStatus>,
}

/// One element of `/status` `collectors`.
#[derive(Debug, Clone, Serialize)]
pub struct CollectorEntry {
    pub name: String,
    /// `ok`, `error` (last collection failed), `quarantined` or `disabled`.
    pub state: &'static str,
    pub last_duration_ms: Option<f64>,
    /// Collections finished (or failed), in total.
    pub collections: u64,
    /// Samples produced, in total.
    pub samples: u64,
    /// Failed collections, in total.
    pub errors: u64,
    pub last_error: Option<String>,
    /// Process crashes that happened while this collector was collecting.
    pub crashes: u32,
    /// Until when it is quarantined (RFC 3339), while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined_until: Option<String>,
}

/// What the supervisor knows of one collector, across incarnations.
#[derive(Debug, Default, Clone)]
struct CollectorStats {
    last_duration_ms: Option<f64>,
    collections: u64,
    samples: u64,
    errors: u64,
    last_error: Option<String>,
    last_ok: bool,
    crashes_total: u32,
}

/// A series: metric name and tags.
pub type SeriesKey = (String, BTreeMap<String, String>);

/// The latest value of a series and when it was taken (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latest {
    pub value: f64,
    pub ts_ms: i64,
}

/// The latest value of every series, as `/metrics` reads it. The keys are shared with the
/// store, so publishing a snapshot copies pointers, not names and tags.
pub type LatestValues = Vec<(std::sync::Arc<SeriesKey>, Latest)>;

/// The supervisor's latest-value store: one entry per series, updated in place.
pub type LatestStore = HashMap<std::sync::Arc<SeriesKey>, Latest, foldhash::fast::RandomState>;

/// How often the Supervisor forgets the series that went stale.
pub const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// Forgets the series whose latest value is older than `window` at `now_ms`; returns how many.
/// This is what keeps the store bounded by what exists now, not by everything that ever did
/// (every container, interface, mount and process that came and went).
pub fn prune_stale(latest: &mut LatestStore, now_ms: i64, window: Duration) -> usize {
    let oldest = now_ms.saturating_sub(window.as_millis() as i64);
    let before = latest.len();
    latest.retain(|_, v| v.ts_ms >= oldest);
    if latest.capacity() > 2 * latest.len() + 64 {
        latest.shrink_to_fit();
    }
    before - latest.len()
}

/// How often the Supervisor publishes its status and latest values to its [`StatusFeed`]
/// (besides at once on every start, exit and stop of the collector).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// At exit, how long the sinks get to spool what they buffer, and the disk thread to write
/// the crash reports it holds.
pub const STOP_FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// What the Supervisor publishes for the status endpoint: read without sending the
/// Supervisor a message, so no client (however many, however slow) can delay supervision,
/// and no request waits on the supervision thread (CONTRACT §10).
#[derive(Clone)]
pub struct StatusFeed {
    /// `None` only until the Supervisor's first publication (made when it is created).
    status: tokio::sync::watch::Receiver<Option<(Instant, std::sync::Arc<StatusSnapshot>)>>,
    latest: tokio::sync::watch::Receiver<std::sync::Arc<LatestValues>>,
    deaths: tokio::sync::watch::Receiver<std::sync::Arc<Vec<deaths::Death>>>,
    disk: disk::Disk,
}

impl StatusFeed {
    /// The last published status, with its relative times (uptime, last ack, next
    /// restart) brought forward to now, and the crash reports still waiting for the disk.
    pub fn status(&self) -> Option<StatusSnapshot> {
        let (taken, snap) = self.status.borrow().clone()?;
        let mut snap = (*snap).clone();
        let age = taken.elapsed().as_millis() as u64;
        snap.uptime_ms += age;
        let c = &mut snap.collector;
        c.heartbeat.last_ack_ms_ago = c.heartbeat.last_ack_ms_ago.map(|ms| ms + age);
        c.uptime_ms = c.uptime_ms.map(|ms| ms + age);
        c.next_restart_in_ms = c.next_restart_in_ms.map(|ms| ms.saturating_sub(age));
        c.pending_crash_reports = self.disk.pending_reports();
        c.crash_report_error = self.disk.report_error();
        Some(snap)
    }

    /// The latest value of every series, as last published.
    pub fn latest(&self) -> std::sync::Arc<LatestValues> {
        self.latest.borrow().clone()
    }

    /// The last [`deaths::RING`] unrequested ends of the collector, oldest first.
    pub fn deaths(&self) -> std::sync::Arc<Vec<deaths::Death>> {
        self.deaths.borrow().clone()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CollectorStatus {
    pub state: State,
    pub pid: Option<u32>,
    pub incarnation: u64,
    /// How long the current collector process has lived (null while none runs).
    pub uptime_ms: Option<u64>,
    pub restarts: u64,
    pub next_restart_in_ms: Option<u64>,
    pub heartbeat: HeartbeatStatus,
    pub last_exit: Option<LastExit>,
    /// Every end of the collector that vigil did not ask for, counted by how it ended.
    pub crash_counts: Vec<CrashCount>,
    /// Those ends per hour over the last 24 hours, oldest hour first (the last counts the 60
    /// minutes up to now), from the persisted ring of the last 1,000 ([`deaths`]).
    pub crashes_per_hour: Vec<u32>,
    /// Crash reports not yet on disk (kept in memory until the disk takes them).
    pub pending_crash_reports: usize,
    /// Frames from the collector dropped since start, by reason: `oversized_frames`,
    /// `bad_checksum_frames`, `undecodable_frames`.
    pub dropped_frames: BTreeMap<&'static str, u64>,
    /// Why the pending crash reports cannot be written (null when none wait).
    pub crash_report_error: Option<String>,
    /// Why the last attempt to start the collector failed, while it keeps failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spawn_error: Option<String>,
    /// The collector module that runs (CONTRACT §9).
    pub module: ModuleStatus,
}

/// How many times the collector ended one way: `reason` (`signaled`, `exited` or
/// `unresponsive`) with the terminating signal or the exit code.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CrashCount {
    pub reason: String,
    pub signal_name: Option<String>,
    pub code: Option<i32>,
    /// The stack's signature ([`stack::signature`]); null where no stack was captured.
    pub signature: Option<String>,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatStatus {
    pub last_ack_ms_ago: Option<u64>,
    pub rtt_ms: Option<f64>,
}

impl StatusSnapshot {
    /// `/healthz`: `Ok(())` when the collector is running, else why not.
    pub fn health(&self) -> Result<(), String> {
        let c = &self.collector;
        if c.state == State::Running {
            return Ok(());
        }
        let mut why = format!("collector state is {}", c.state.as_str());
        if let Some(e) = &c.last_exit {
            let how = match (&e.signal_name, e.code) {
                (Some(s), _) => s.clone(),
                (None, Some(code)) => format!("exit code {code}"),
                (None, None) => e.reason.clone(),
            };
            why.push_str(&format!(" after {} ({how})", e.reason));
            if let Some(r) = &e.crash_report {
                why.push_str(&format!(", crash report {r}"));
            }
        }
        if let Some(e) = &c.spawn_error {
            why.push_str(&format!("; cannot start it: {e}"));
        }
        Err(why)
    }
}

/// A crash report waiting for its stack.
struct PendingReport {
    report: CrashReport,
    stderr_tail: Vec<u8>,
    /// The end was a requested stop that did not go cleanly (a WARN, not a crash).
    stopping: bool,
    /// `killed by SIGSEGV`, `exited with code 3`, …
    how: String,
}

/// How long the symbolizer gets; past it the report is written with `stack_error`.
pub const SYMBOLIZE_WITHIN: Duration = Duration::from_secs(2);
/// How long the SIGKILL of a hung collector waits for its threads' stacks at most
/// (CONTRACT §6).
pub const HANG_CAPTURE_WITHIN: Duration = Duration::from_secs(2);
/// How long a hung collector gets to write its threads' stacks itself (`in_process`) before
/// the SIGKILL.
pub const IN_PROCESS_DUMP_WITHIN: Duration = Duration::from_millis(1000);

/// How one end of the collector is counted: reason, signal name, exit code, signature.
type CrashKey = (String, Option<String>, Option<i32>, Option<String>);

/// Why the supervisor killed the current child, if it did.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillReason {
    Unresponsive,
    StdoutClosed,
    StopGraceExpired,
    SecondStopSignal,
}

struct Current {
    addr: Addr<ChildProcess>,
    heartbeat: Addr<Heartbeat>,
    pid: u32,
    incarnation: u64,
    kill_reason: Option<KillReason>,
    /// The collector between its CollectionBegin and CollectionEnd frames.
    in_flight: Option<String>,
    /// Why it was asked to stop so that a new one replaces it (new settings or module):
    /// its exit is not a crash and the next incarnation starts at once.
    restart_for: Option<&'static str>,
    /// Every thread's stack, taken before the SIGKILL of a hang (or why not).
    hang_capture: Option<Result<Vec<u8>, String>>,
    /// The OOM-kill counts while it lives, to tell whether a SIGKILL was the OOM killer's.
    oom: oom::OomWatch,
    /// When it was spawned.
    started: Instant,
}

pub struct Supervisor {
    settings: SupervisorSettings,
    started: Instant,
    state: State,
    incarnation: u64,
    restarts: u64,
    current: Option<Current>,
    policy: RestartPolicy,
    next_restart: Option<(Instant, SpawnHandle)>,
    last_exit: Option<LastExit>,
    last_ack: Option<Instant>,
    rtt: Option<Duration>,
    spawn_error: Option<String>,
    /// Whether the last restart decision was a crash loop (the ERROR is logged on entry only).
    in_crash_loop: bool,
    stats: HashMap<String, CollectorStats>,
    /// Quarantined collectors and when their quarantine ends.
    quarantine: Quarantine,
    latest: LatestStore,
    /// Unrequested ends by (reason, signal name, exit code), for `/metrics`.
    crash_counts: BTreeMap<CrashKey, u64>,
    /// The last unrequested ends, persisted in the data dir; published on change.
    deaths: deaths::Deaths,
    deaths_tx: tokio::sync::watch::Sender<std::sync::Arc<Vec<deaths::Death>>>,
    /// The incarnation whose first heartbeat ack systemd was told about (0: none yet, so
    /// `READY=1` is still due).
    notified_incarnation: u64,
    /// Which collector module runs; the probation of a new one.
    modules: Modules,
    /// The outcome of the last change a check-in brought.
    last_change: Option<Change>,
    checkin: Option<CheckinStatus>,
    /// The disk thread: crash reports and the module state are written there.
    disk: disk::Disk,
    status_tx: tokio::sync::watch::Sender<Option<(Instant, std::sync::Arc<StatusSnapshot>)>>,
    latest_tx: tokio::sync::watch::Sender<std::sync::Arc<LatestValues>>,
    /// New values arrived since `latest` was last published.
    latest_dirty: bool,
    /// When stale series were last forgotten.
    last_prune: Instant,
}

impl Supervisor {
    /// A Supervisor and the feed the status endpoint reads. Starts the disk thread (which
    /// prunes the crash dir first); reads the module state (start-up, before anything is
    /// supervised).
    pub fn new(settings: SupervisorSettings) -> std::io::Result<(Self, StatusFeed)> {
        let disk = disk::Disk::start(settings.crash_dir(), settings.config.crash_reports_keep)?;
        let (status_tx, status) = tokio::sync::watch::channel(None);
        let (latest_tx, latest) = tokio::sync::watch::channel(std::sync::Arc::new(Vec::new()));
        let deaths = deaths::Deaths::load(&settings.data_dir);
        let (deaths_tx, deaths_rx) = tokio::sync::watch::channel(deaths.snapshot());
        let feed = StatusFeed { status, latest, deaths: deaths_rx, disk: disk.clone() };
        let mut this = Self {
            policy: RestartPolicy::new(&settings.config),
            quarantine: Quarantine::new(&settings.config),
            modules: Modules::load(&settings.data_dir, &settings.version).with_disk(disk.clone()),
            disk,
            status_tx,
            latest_tx,
            latest_dirty: false,
            last_prune: Instant::now(),
            last_change: None,
            checkin: None,
            settings,
            started: Instant::now(),
            state: State::Starting,
            incarnation: 0,
            restarts: 0,
            current: None,
            next_restart: None,
            last_exit: None,
            last_ack: None,
            rtt: None,
            spawn_error: None,
            in_crash_loop: false,
            stats: HashMap::new(),
            latest: LatestStore::default(),
            crash_counts: BTreeMap::new(),
            deaths,
            deaths_tx,
            notified_incarnation: 0,
        };
        this.publish();
        Ok((this, feed))
    }

    /// Tells systemd `state` (`KEY=VALUE` lines), when it is listening.
    fn sd_notify(&self, state: &str) {
        if let Some(n) = &self.settings.notify {
            n.send(state);
        }
    }

    /// Quarantined collectors whose quarantine has not ended.
    fn disabled(&self) -> Vec<String> {
        self.quarantine.disabled(Instant::now())
    }

    fn configure_message(&self) -> SendToChild {
        SendToChild(ToCollector::Configure {
            collectors: Box::new(self.settings.collectors.clone()),
            disabled: self.disabled(),
            upload_hosts: self.settings.upload_hosts.clone(),
        })
    }

    fn record(&mut self, ts_ms: i64, name: String, value: f64, tags: BTreeMap<String, String>) {
        let key = (name, tags);
        match self.latest.get_mut(&key) {
            Some(v) => *v = Latest { value, ts_ms },
            None => {
                self.latest.insert(std::sync::Arc::new(key), Latest { value, ts_ms });
            }
        }
        self.latest_dirty = true;
    }

    /// Publishes the status (and the latest values, when new ones came) to the feed. At most
    /// every [`PRUNE_EVERY`], series without a value for the stale window are forgotten first.
    fn publish(&mut self) {
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = Instant::now();
            let window = self.settings.collectors.stale_after();
            if prune_stale(&mut self.latest, chrono::Utc::now().timestamp_millis(), window) > 0 {
                self.latest_dirty = true;
            }
        }
        self.status_tx.send_replace(Some((Instant::now(), std::sync::Arc::new(self.snapshot()))));
        if std::mem::take(&mut self.latest_dirty) {
            let latest: LatestValues = self.latest.iter().map(|(k, v)| (k.clone(), *v)).collect();
            self.latest_tx.send_replace(std::sync::Arc::new(latest));
        }
    }

    fn on_collection_end(
        &mut self,
        collector: String,
        ts_ms: i64,
        duration_ms: f64,
        samples: Vec<Sample>,
        error: Option<String>,
    ) {
        let n = samples.len() as u64;
        let mut wire = Vec::with_capacity(samples.len());
        for s in samples {
            let mut tags = self.settings.tags.clone();
            tags.extend(s.tags);
            if !self.settings.sinks.is_empty() {
                wire.push(crate::upload::protocol::WireSample {
                    name: s.name.clone(),
                    tags: tags.clone(),
                    ts_ms,
                    value: s.value,
                });
            }
            self.record(ts_ms, s.name, s.value, tags);
        }
        if !wire.is_empty() {
            let wire = std::sync::Arc::new(wire);
            for sink in &self.settings.sinks {
                sink.publish(wire.clone());
            }
        }
        let st = self.stats.entry(collector.clone()).or_default();
        st.last_duration_ms = Some(duration_ms);
        st.collections += 1;
        st.samples += n;
        st.last_ok = error.is_none();
        if error.is_some() {
            st.errors += 1;
            st.last_error = error;
        }
        let (samples_total, errors_total) = (st.samples, st.errors);
        // Self metrics of every collection (CONTRACT §4).
        let tags = |c: &str| BTreeMap::from([("collector".to_string(), c.to_string())]);
        self.record(ts_ms, "collector_duration_ms".into(), duration_ms, tags(&collector));
        self.record(ts_ms, "collector_samples_total".into(), samples_total as f64, tags(&collector));
        self.record(ts_ms, "collector_errors_total".into(), errors_total as f64, tags(&collector));
    }

    /// A crash happened while `name` was collecting: count it, and quarantine the collector
    /// once it has caused `quarantine_after_crashes` crashes.
    /// Blames a crash on collector `name`; whether that started its quarantine.
    fn attribute_crash(&mut self, ctx: &mut Context<Self>, name: &str) -> bool {
        self.stats.entry(name.to_string()).or_default().crashes_total += 1;
        let Some((d, until)) = self.quarantine.on_crash(name, Instant::now()) else { return false };
        let cfg = &self.settings.config;
        tracing::error!(
            collector = name,
            crashes = cfg.quarantine_after_crashes,
            quarantine_secs = cfg.quarantine_secs,
            "Collector {name} crashed the collector process {} times; quarantined (disabled) until {}. The others keep running.",
            cfg.quarantine_after_crashes,
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        // Blamed after the restart (a stack moved the blame here): the running collector
        // drops it now.
        if let Some(cur) = &self.current {
            cur.addr.do_send(self.configure_message());
        }
        let name = name.to_string();
        ctx.run_later(d, move |this, _| {
            if this.quarantine.end_if_over(&name, Instant::now()) {
                tracing::info!(collector = %name, "Quarantine over; the collector runs again.");
                if let Some(cur) = &this.current {
                    cur.addr.do_send(this.configure_message());
                }
            }
        });
        true
    }

    /// The stack shows that the crash was not the in-flight collector's: takes the blame (and
    /// any quarantine it started) back from it, and gives it to the collector on the stack.
    fn move_blame(&mut self, ctx: &mut Context<Self>, from: Option<(String, bool)>, to: Option<String>) {
        if let Some((name, quarantined)) = &from {
            if let Some(st) = self.stats.get_mut(name) {
                st.crashes_total = st.crashes_total.saturating_sub(1);
            }
            self.quarantine.withdraw(name, *quarantined);
            tracing::info!(
                collector = %name,
                on_stack = to.as_deref(),
                "The crash's stack does not show collector {name}, which was in flight; the crash is not counted against it{}.",
                if *quarantined { " and its quarantine is lifted" } else { "" }
            );
            if *quarantined {
                if let Some(cur) = &self.current {
                    cur.addr.do_send(self.configure_message());
                }
            }
        }
        if let Some(name) = to {
            self.attribute_crash(ctx, &name);
        }
    }

    fn collector_entries(&self) -> Vec<CollectorEntry> {
        let now = Instant::now();
        let enabled: HashMap<&str, bool> = self.settings.collectors.enabled().into_iter().collect();
        NAMES
            .iter()
            .map(|&name| {
                let st = self.stats.get(name).cloned().unwrap_or_default();
                let q = self.quarantine.until(name, now);
                let state = if !enabled.get(name).copied().unwrap_or(false) {
                    "disabled"
                } else if q.is_some() {
                    "quarantined"
                } else if st.last_error.is_some() && !st.last_ok {
                    "error"
                } else {
                    "ok"
                };
                CollectorEntry {
                    name: name.to_string(),
                    state,
                    last_duration_ms: st.last_duration_ms,
                    collections: st.collections,
                    samples: st.samples,
                    errors: st.errors,
                    last_error: st.last_error,
                    crashes: st.crashes_total,
                    quarantined_until: q.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                }
            })
            .collect()
    }

    fn spawn_child(&mut self, ctx: &mut Context<Self>) {
        self.next_restart = None;
        if matches!(self.state, State::Stopping | State::Stopped) {
            return;
        }
        // Incarnation numbers go to processes that started: a failed spawn does not use one,
        // so VIGIL_INCARNATION (and `xN` faults) count real collectors.
        let incarnation = self.incarnation + 1;
        self.state = State::Starting;
        self.last_ack = None;
        self.rtt = None;
        let mut env = self.settings.env.clone();
        env.push(("VIGIL_INCARNATION".into(), incarnation.to_string().into()));
        let crash_pipe = self.capture_on();
        let capture = self.settings.config.stack_capture;
        if crash_pipe {
            let fd = crate::collector::crash_capture::FD.to_string();
            env.push((crate::collector::crash_capture::FD_ENV.into(), fd.into()));
            env.push((crate::collector::crash_capture::MODE_ENV.into(), capture.as_str().into()));
        }
        let ptrace = match capture {
            StackCapture::Auto => Some(true),
            StackCapture::Ptrace => Some(false),
            StackCapture::InProcess | StackCapture::Off => None,
        }
        .map(|fallback| child_process::PtraceHelper { program: self.settings.program.clone(), fallback });
        let mut program = self.settings.program.clone();
        if let Some((path, (k, v))) = self.modules.program() {
            program = path;
            env.push((k.into(), v.into()));
        }
        let spec = SpawnSpec {
            program: program.clone(),
            args: self.settings.args.clone(),
            env,
            incarnation,
            stderr_tail_bytes: self.settings.config.stderr_tail_bytes as usize,
            crash_pipe,
            ptrace,
        };
        let me = ctx.address();
        let events = ChildEvents {
            message: me.clone().recipient(),
            stdout_closed: me.clone().recipient(),
            exited: me.clone().recipient(),
        };
        match ChildProcess::spawn(spec, events) {
            Ok((addr, pid)) => {
                if self.incarnation > 0 {
                    self.restarts += 1;
                }
                self.incarnation = incarnation;
                self.spawn_error = None;
                // Queued on the child's stdin before anything else: what to collect.
                addr.do_send(self.configure_message());
                let cfg = &self.settings.config;
                let heartbeat = Heartbeat::new(
                    self.incarnation,
                    cfg.heartbeat_interval(),
                    cfg.heartbeat_timeout(),
                    addr.clone().recipient(),
                    me.clone().recipient(),
                    me.recipient(),
                )
                .start();
                tracing::info!(
                    pid,
                    incarnation = self.incarnation,
                    module = self.modules.current_version(),
                    "Collector spawned."
                );
                self.current = Some(Current {
                    addr,
                    heartbeat,
                    pid,
                    incarnation: self.incarnation,
                    kill_reason: None,
                    in_flight: None,
                    restart_for: None,
                    hang_capture: None,
                    oom: oom::OomWatch::take(pid),
                    started: Instant::now(),
                });
            }
            Err(e) => {
                let program = program.display().to_string();
                tracing::error!(program = %program, error = %e, "Cannot start the collector; will retry.");
                self.spawn_error = Some(format!("{program}: {e}"));
                // A new module that cannot even start counts towards its rollback.
                self.check_rollback();
                self.schedule_restart(ctx, Duration::ZERO);
            }
        }
    }

    /// Applies the restart policy for an incarnation that lived `lived`.
    fn schedule_restart(&mut self, ctx: &mut Context<Self>, lived: Duration) -> Duration {
        let now = Instant::now();
        let d = self.policy.on_crash(now, lived, rand::random::<f64>());
        let was_loop = std::mem::replace(&mut self.in_crash_loop, d.crash_loop);
        self.state = if d.crash_loop { State::CrashLoop } else { State::Backoff };
        if d.crash_loop && !was_loop {
            tracing::error!(
                crashes = d.recent_crashes,
                window_secs = self.settings.config.crash_loop_window_secs,
                "Collector is crash-looping; it keeps being restarted with growing delays (see crash reports)."
            );
        }
        tracing::info!(delay_ms = d.delay.as_millis() as u64, state = ?self.state, "Restarting the collector after a delay.");
        self.sd_notify(&format!(
            "STATUS=Collector {}; restarting it in {} ms",
            self.state.as_str(),
            d.delay.as_millis()
        ));
        let handle = ctx.run_later(d.delay, |this, ctx| this.spawn_child(ctx));
        self.next_restart = Some((now + d.delay, handle));
        d.delay
    }

    /// The ring of deaths changed: save it (on the disk thread) and publish it.
    fn deaths_changed(&mut self) {
        let copy = self.deaths.snapshot();
        self.deaths.save(&self.disk, copy.clone());
        self.deaths_tx.send_replace(copy);
    }

    fn is_current(&self, incarnation: u64) -> bool {
        self.current.as_ref().is_some_and(|c| c.incarnation == incarnation)
    }

    fn kill_current(&mut self, reason: KillReason) {
        if let Some(c) = &mut self.current {
            c.kill_reason.get_or_insert(reason);
            c.addr.do_send(Kill);
        }
    }

    fn finish_stop(&mut self) {
        self.state = State::Stopped;
        // The collector's last samples are buffered in the sinks: into the spool with them
        // (sent after the next start), then exit.
        // Each waits a bounded time: a sink or a disk that stalls must not keep the process
        // from exiting (what is lost is said).
        let sinks = self.settings.sinks.clone();
        let disk = self.disk.clone();
        self.publish();
        actix_rt::spawn(async move {
            for s in &sinks {
                if !s.spool_now(STOP_FLUSH_WITHIN).await {
                    tracing::error!(sink = s.name(), within_secs = STOP_FLUSH_WITHIN.as_secs(), "Sink did not spool its buffered samples in time (its disk or thread is stalled); they are lost.");
                }
            }
            let left = disk.flush_reports(STOP_FLUSH_WITHIN).await;
            if left > 0 {
                tracing::error!(
                    reports = left,
                    "Crash reports still not on disk at exit; they are lost (the log has their summary)."
                );
            }
            tracing::info!("Supervisor stopped.");
            System::current().stop_with_code(0);
        });
    }

    /// Whether collectors get a crash socket and their crash handler.
    fn capture_on(&self) -> bool {
        self.settings.config.stack_capture != StackCapture::Off
    }

    /// Whether stacks may be taken from outside with ptrace (a hang's need it).
    fn ptrace_on(&self) -> bool {
        matches!(self.settings.config.stack_capture, StackCapture::Auto | StackCapture::Ptrace)
    }

    /// In process: every thread of the hung collector writes its own stack to the crash
    /// socket on a signal; what arrived by the SIGKILL ([`IN_PROCESS_DUMP_WITHIN`] later)
    /// comes with the exit.
    fn dump_in_process_then_kill(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = &self.current else { return };
        c.addr.do_send(child_process::DumpThreads);
        let incarnation = c.incarnation;
        ctx.run_later(IN_PROCESS_DUMP_WITHIN, move |this, _| {
            if let Some(c) = this.current.as_ref().filter(|c| c.incarnation == incarnation) {
                c.addr.do_send(Kill);
            }
        });
    }

    /// Takes every thread's stack of the hung collector (at most [`HANG_CAPTURE_WITHIN`]),
    /// then kills it; the capture waits in [`Current::hang_capture`] for its report.
    fn capture_then_kill(&mut self, ctx: &mut Context<Self>, reason: KillReason) {
        let ptrace = self.ptrace_on();
        let mode = self.settings.config.stack_capture.as_str();
        let Some(c) = &mut self.current else { return };
        if c.kill_reason.is_some() {
            return; // already being killed (or captured)
        }
        c.kill_reason = Some(reason);
        if !ptrace {
            if mode == "off" {
                c.hang_capture = Some(Err("supervisor.stack_capture is \"off\"".into()));
                c.addr.do_send(Kill);
                return;
            }
            self.dump_in_process_then_kill(ctx);
            return;
        }
        let (pid, incarnation) = (c.pid, c.incarnation);
        let fallback = mode == "auto";
        let fut = stack::dump_all_threads(self.settings.program.clone(), pid, HANG_CAPTURE_WITHIN);
        ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
            let Some(c) = this.current.as_mut().filter(|c| c.incarnation == incarnation) else { return };
            match res {
                Err(e) if fallback => {
                    tracing::warn!(pid, error = %e, "Could not take the hung collector's stacks with ptrace; its threads write their own instead (in_process).");
                    this.dump_in_process_then_kill(ctx);
                }
                res => {
                    c.hang_capture = Some(res);
                    c.addr.do_send(Kill);
                }
            }
        }));
    }

    /// The report is complete (with its stack when there is one): log the crash, count it
    /// by signature, and hand the report to the disk thread.
    fn finish_report(&mut self, p: PendingReport) {
        let r = &p.report;
        let e = &r.exit;
        let id = r.id.as_str();
        let f = &r.forensics;
        let at = f
            .stack
            .as_deref()
            .or_else(|| f.threads.as_ref().and_then(|t| t.first()).map(|t| t.stack.as_slice()))
            .and_then(stack::innermost_own);
        let place = at.map(|f| format!(" in {f}")).unwrap_or_default();
        let how = &p.how;
        if p.stopping {
            // Still a report (its stderr may say why it would not stop), but not a crash.
            tracing::warn!(
                pid = r.pid,
                code = e.code,
                signal = e.signal_name.as_deref(),
                report = id,
                "Collector did not stop cleanly ({how}){place}; crash report {id}."
            );
        } else {
            if let Some(sig) = &f.signature {
                let key = (e.reason.clone(), e.signal_name.clone(), e.code, None);
                if let Some(n) = self.crash_counts.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.crash_counts.remove(&key);
                    }
                    *self.crash_counts.entry((key.0, key.1, key.2, Some(sig.clone()))).or_default() += 1;
                }
                if let Some(d) = self.deaths.by_report(id) {
                    d.signature = Some(sig.clone());
                    self.deaths_changed();
                }
            }
            tracing::error!(
                pid = r.pid,
                incarnation = r.incarnation,
                reason = %e.reason,
                collector_in_flight = e.collector_in_flight.as_deref(),
                code = e.code,
                signal = e.signal_name.as_deref(),
                core_dumped = e.core_dumped,
                uptime_ms = e.uptime_ms,
                function = at,
                signature = f.signature.as_deref(),
                stack_error = f.stack_error.as_deref(),
                report = id,
                "Collector {} ({how}){place}; crash report {id}.",
                if e.reason == "unresponsive" { "was unresponsive and was killed" } else { "crashed" },
            );
        }
        // Written on the disk thread: nothing here waits for the disk, and the report waits
        // in memory (counted as pending) until the disk takes it.
        self.disk.write_held_report(p.report, p.stderr_tail);
        self.publish();
    }

    fn snapshot(&self) -> StatusSnapshot {
        let now = Instant::now();
        StatusSnapshot {
            version: self.settings.version.clone(),
            host: self.settings.host.clone(),
            tags: self.settings.tags.clone(),
            pid: std::process::id(),
            uptime_ms: now.duration_since(self.started).as_millis() as u64,
            collector: CollectorStatus {
                state: self.state,
                pid: self.current.as_ref().map(|c| c.pid),
                incarnation: self.incarnation,
                uptime_ms: self.current.as_ref().map(|c| now.duration_since(c.started).as_millis() as u64),
                restarts: self.restarts,
                next_restart_in_ms: self
                    .next_restart
                    .as_ref()
                    .map(|(at, _)| at.saturating_duration_since(now).as_millis() as u64),
                heartbeat: HeartbeatStatus {
                    last_ack_ms_ago: self.last_ack.map(|t| now.duration_since(t).as_millis() as u64),
                    rtt_ms: self.rtt.map(|d| d.as_secs_f64() * 1000.0),
                },
                last_exit: self.last_exit.clone(),
                crashes_per_hour: self.deaths.per_hour(chrono::Utc::now().timestamp_millis()),
                crash_counts: self
                    .crash_counts
                    .iter()
                    .map(|((reason, signal_name, code, signature), &count)| CrashCount {
                        reason: reason.clone(),
                        signal_name: signal_name.clone(),
                        code: *code,
                        signature: signature.clone(),
                        count,
                    })
                    .collect(),
                pending_crash_reports: self.disk.pending_reports(),
                dropped_frames: child_process::dropped_frames(),
                crash_report_error: self.disk.report_error(),
                spawn_error: self.spawn_error.clone(),
                module: self.modules.status(),
            },
            collectors: self.collector_entries(),
            uploads: Vec::new(),
            series: self.latest.len(),
            checkin: self
                .checkin
                .clone()
                .map(|c| CheckinStatus { last_change: self.last_change.clone(), ..c }),
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(PUBLISH_EVERY, |this, _| this.publish());
        // systemd's watchdog is fed from this actor's own timer: if the supervisor's event
        // loop stops turning, the pings stop and systemd restarts the whole service.
        if let Some(period) = self.settings.notify.as_ref().and_then(|n| n.watchdog_period()) {
            ctx.run_interval(period, |this, _| this.sd_notify("WATCHDOG=1"));
        }
        self.spawn_child(ctx);
    }
}

impl Handler<ChildMessage> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: ChildMessage, _: &mut Context<Self>) {
        let Some(cur) = self.current.as_mut().filter(|c| c.incarnation == m.incarnation) else {
            return;
        };
        match m.msg {
            FromCollector::Hello { pid, version } => {
                if self.state == State::Starting {
                    self.state = State::Running;
                }
                tracing::info!(pid, version = %version, incarnation = m.incarnation, "Collector is running.");
                self.on_hello(&version);
                self.publish();
            }
            FromCollector::HeartbeatAck { seq } => cur.heartbeat.do_send(Ack { seq, received: m.received }),
            FromCollector::CollectionBegin { collector } => cur.in_flight = Some(collector),
            FromCollector::CollectionEnd { collector, ts_ms, duration_ms, samples, error } => {
                cur.in_flight = None;
                self.on_collection_end(collector, ts_ms, duration_ms, samples, error);
            }
        }
    }
}

impl Handler<HeartbeatObserved> for Supervisor {
    type Result = ();

    fn handle(&mut self, h: HeartbeatObserved, _: &mut Context<Self>) {
        if self.is_current(h.incarnation) {
            self.last_ack = Some(h.at);
            self.rtt = Some(h.rtt);
            if let Some(c) = &mut self.current {
                c.oom.refresh();
            }
            // Published before systemd hears READY=1, so /status already shows the ack.
            self.publish();
            if self.notified_incarnation != h.incarnation {
                // The first ack proves the whole chain works: spawn, pipes, the child's loop.
                let ready = if self.notified_incarnation == 0 {
                    format!("READY=1\nMAINPID={}\n", std::process::id())
                } else {
                    String::new()
                };
                self.notified_incarnation = h.incarnation;
                let pid = self.current.as_ref().map_or(0, |c| c.pid);
                self.sd_notify(&format!(
                    "{ready}STATUS=Collector running (pid {pid}, incarnation {})",
                    h.incarnation
                ));
            }
        }
    }
}

impl Handler<ChildUnresponsive> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: ChildUnresponsive, ctx: &mut Context<Self>) {
        if !self.is_current(m.incarnation) || self.state == State::Stopping {
            return;
        }
        let pid = self.current.as_ref().map(|c| c.pid);
        tracing::warn!(
            pid,
            silent_ms = m.silent_for.as_millis() as u64,
            "Collector unresponsive: no heartbeat ack for {:.1} s; killing it (SIGKILL).",
            m.silent_for.as_secs_f64()
        );
        self.capture_then_kill(ctx, KillReason::Unresponsive);
    }
}

impl Handler<ChildStdoutClosed> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: ChildStdoutClosed, ctx: &mut Context<Self>) {
        if !self.is_current(m.incarnation) || self.state == State::Stopping || self.restarting() {
            return;
        }
        tracing::warn!(
            pid = m.pid,
            "Collector closed its stdout but is still running; it can no longer answer, so it is unresponsive. Killing it (SIGKILL)."
        );
        self.capture_then_kill(ctx, KillReason::StdoutClosed);
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, mut ev: ChildExited, ctx: &mut Context<Self>) {
        tracing::debug!(pid = ev.pid, incarnation = ev.incarnation, "Exit event received.");
        let Some(cur) = self.current.take_if(|c| c.incarnation == ev.incarnation) else {
            return;
        };
        cur.heartbeat.do_send(StopHeartbeat);
        // A requested restart (new settings or module) ends like a stop, not like a crash.
        let restart_for = cur.restart_for.filter(|_| self.state != State::Stopping);
        let stopping = self.state == State::Stopping || restart_for.is_some();
        let exit = ev.exit;
        let reason = match (stopping, cur.kill_reason) {
            (true, _) | (_, Some(KillReason::StopGraceExpired | KillReason::SecondStopSignal)) => "stopped",
            (false, Some(KillReason::Unresponsive | KillReason::StdoutClosed)) => "unresponsive",
            (false, None) if exit.signal.is_some() => "signaled",
            (false, None) => "exited",
        };
        let detail = match cur.kill_reason {
            Some(KillReason::Unresponsive) => {
                Some("no heartbeat ack within heartbeat_timeout_secs; killed".to_string())
            }
            Some(KillReason::StdoutClosed) => {
                Some("stdout closed while the process was alive; killed".to_string())
            }
            Some(KillReason::StopGraceExpired) => {
                Some("did not exit within stop_grace_secs; killed".to_string())
            }
            Some(KillReason::SecondStopSignal) => Some("killed on a second stop signal".to_string()),
            None => None,
        };
        let clean = exit.code == Some(0);
        let abnormal = !clean;
        let at = chrono::Utc::now() - chrono::Duration::from_std(ev.exited_at.elapsed()).unwrap_or_default();
        let mut last = LastExit {
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            reason: reason.to_string(),
            code: exit.code,
            signal: exit.signal,
            signal_name: exit.signal.map(signal_name),
            core_dumped: exit.core_dumped,
            uptime_ms: ev.uptime.as_millis() as u64,
            collector_in_flight: cur.in_flight.clone(),
            crash_report: None,
            detail,
            oom_killed: (exit.signal == Some(libc::SIGKILL)).then(|| cur.oom.killed()).flatten(),
        };
        if !stopping {
            *self
                .crash_counts
                .entry((reason.to_string(), last.signal_name.clone(), exit.code, None))
                .or_default() += 1;
        }
        // The crash is blamed on the collector in flight at once (the next incarnation must
        // know whether it is quarantined), and moved once the stack is read if that shows
        // another collector, or none (the one in flight may merely have held the collection
        // lock when the process was killed from outside).
        let blamed = cur.in_flight.clone().filter(|_| abnormal && !stopping).map(|name| {
            let quarantined = self.attribute_crash(ctx, &name);
            (name, quarantined)
        });
        let how = match (&last.signal_name, exit.code) {
            (Some(_), _) if last.oom_killed == Some(true) => "killed by the OOM killer (SIGKILL)".to_string(),
            (Some(s), _) => format!("killed by {s}{}", if exit.core_dumped { " (core dumped)" } else { "" }),
            (None, Some(c)) => format!("exited with code {c}"),
            (None, None) => "ended".to_string(),
        };
        if abnormal {
            // Stamped no earlier than the newest report so far: after the clock steps back, a
            // new report still sorts last (never pruned at once, never skipped for upload).
            let stamp = self.disk.report_time_ms(at.timestamp_millis());
            let id =
                crash_report::new_id(chrono::DateTime::from_timestamp_millis(stamp).unwrap_or(at), ev.pid);
            let report = CrashReport {
                id: id.clone(),
                version: self.settings.version.clone(),
                pid: ev.pid,
                incarnation: ev.incarnation,
                exit: LastExit { crash_report: Some(id.clone()), ..last.clone() },
                stderr_total_bytes: ev.stderr_total,
                stderr_kept_bytes: ev.stderr_tail.len() as u64,
                forensics: Default::default(),
            };
            last.crash_report = Some(id);
            // Pending from now: in memory while its stack is made, then until the disk takes it.
            self.disk.hold_report();
            let fatal = exit.signal.is_some_and(|s| crate::collector::crash_capture::SIGNALS.contains(&s));
            let mut report = report;
            // Rust exits 101 when a panic ends the process; its hook wrote where, on stderr.
            if exit.code == Some(101) {
                report.forensics.panic = crash_report::Panic::from_stderr(&ev.stderr_tail);
            }
            let pending = PendingReport { report, stderr_tail: ev.stderr_tail, stopping, how: how.clone() };
            // The raw capture to symbolize, or why there is none; `None`: no stack expected.
            let hang = if reason != "unresponsive" {
                None
            } else if cur.hang_capture.is_some() {
                cur.hang_capture
            } else if !ev.crash_capture.is_empty() {
                // Written by the collector's threads themselves (`in_process`).
                Some(Ok(std::mem::take(&mut ev.crash_capture)))
            } else {
                Some(Err(format!(
                    "the hung collector wrote no stacks within {} ms of being asked (stack_capture = \"in_process\")",
                    IN_PROCESS_DUMP_WITHIN.as_millis()
                )))
            };
            let panicked = exit.code == Some(101);
            let raw: Option<Result<Vec<u8>, String>> = if hang.is_some() {
                hang
            } else if !(fatal || panicked) {
                None
            } else if !self.capture_on() {
                fatal.then(|| Err("supervisor.stack_capture is \"off\"".into()))
            } else if !ev.crash_capture.is_empty() {
                Some(Ok(ev.crash_capture))
            } else if let Some(e) = ev.capture_error {
                Some(Err(e))
            } else {
                fatal.then(|| {
                    Err("the collector's crash handler wrote no stack (it died before the handler ran, or the handler itself failed)".into())
                })
            };
            match raw {
                Some(Ok(capture)) => {
                    // Symbolized in a helper process; the restart below does not wait for it.
                    let program = self.settings.program.clone();
                    let fut = stack::symbolize_in_helper(program, capture, SYMBOLIZE_WITHIN);
                    ctx.spawn(fut.into_actor(self).map(move |res, this, ctx| {
                        let mut pending = pending;
                        let f = &mut pending.report.forensics;
                        if let Ok(s) = &res {
                            let stack = s.threads.first().map_or(s.stack.as_slice(), |t| t.stack.as_slice());
                            let on_stack = stack::collector_on_stack(stack, NAMES);
                            if !pending.stopping && on_stack != blamed.as_ref().map(|b| b.0.clone()) {
                                this.move_blame(ctx, blamed, on_stack);
                            }
                        }
                        match res {
                            Ok(s) => {
                                let capture =
                                    if s.capture.is_empty() { "in_process".into() } else { s.capture };
                                f.capture = Some(capture);
                                if s.threads.is_empty() {
                                    f.signature = stack::signature(&s.stack);
                                    f.thread = Some(s.thread);
                                    f.frames_omitted = s.frames_omitted;
                                    f.stack = Some(s.stack);
                                } else {
                                    // A hang: the signature of where the first (main) thread,
                                    // the collectors' own, was stuck.
                                    f.signature = s.threads.first().and_then(|t| stack::signature(&t.stack));
                                    f.threads = Some(s.threads);
                                }
                            }
                            Err(e) => f.stack_error = Some(e),
                        }
                        this.finish_report(pending);
                    }));
                }
                Some(Err(e)) => {
                    let mut pending = pending;
                    pending.report.forensics.stack_error = Some(e);
                    self.finish_report(pending);
                }
                None => self.finish_report(pending),
            }
        } else if !stopping {
            tracing::warn!(
                pid = ev.pid,
                incarnation = ev.incarnation,
                "Collector exited with code 0 without being asked to; restarting it."
            );
        } else {
            tracing::info!(pid = ev.pid, "Collector stopped ({how}).");
        }
        if !stopping {
            self.deaths.push(deaths::Death {
                at_ms: at.timestamp_millis(),
                incarnation: ev.incarnation,
                reason: reason.to_string(),
                signal_name: last.signal_name.clone(),
                code: exit.code,
                signature: None,
                collector: last.collector_in_flight.clone(),
                restart_delay_ms: None,
                crash_report: last.crash_report.clone(),
            });
        }
        self.last_exit = Some(last);
        if let Some(why) = restart_for {
            tracing::info!(reason = why, "Starting the collector again ({why}).");
            self.spawn_child(ctx);
        } else if stopping {
            self.finish_stop();
        } else {
            self.check_rollback();
            let delay = self.schedule_restart(ctx, ev.uptime);
            if let Some(d) = self.deaths.last_mut() {
                d.restart_delay_ms = Some(delay.as_millis() as u64);
            }
            self.deaths_changed();
        }
        self.publish();
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: Shutdown, ctx: &mut Context<Self>) {
        if self.state == State::Stopping {
            tracing::warn!(signal = m.signal, "Second stop request: killing the collector now.");
            self.kill_current(KillReason::SecondStopSignal);
            return;
        }
        if self.state == State::Stopped {
            return;
        }
        self.state = State::Stopping;
        self.sd_notify(&format!("STOPPING=1\nSTATUS=Stopping ({})", m.signal));
        if let Some((_, h)) = self.next_restart.take() {
            ctx.cancel_future(h);
        }
        let Some(cur) = &self.current else {
            tracing::info!(signal = m.signal, "Stopping (no collector running).");
            self.finish_stop();
            return;
        };
        let grace = self.settings.config.stop_grace();
        tracing::info!(
            signal = m.signal,
            pid = cur.pid,
            grace_secs = grace.as_secs_f64(),
            "Stopping: closed the collector's stdin; it gets stop_grace_secs to exit before SIGKILL."
        );
        self.close_current(grace, ctx);
    }
}

/// Fault injection (`VIGIL_SUPERVISOR_FAULT=panic@SECS`): the Supervisor panics in its
/// handler, as a bug would, to show that the process then ends with status 1.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InjectPanic;

impl Handler<InjectPanic> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected by VIGIL_SUPERVISOR_FAULT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series that got no value for the stale window is forgotten; live ones stay.
    #[test]
    fn stale_series_of_vanished_things_are_forgotten() {
        let key = |id: u32| {
            std::sync::Arc::new((
                "container_cpu".to_string(),
                BTreeMap::from([("id".to_string(), id.to_string())]),
            ))
        };
        let mut latest = LatestStore::default();
        let now = 10_000_000;
        // 10,000 containers came and went; 5 are alive.
        for id in 0..10_000 {
            latest.insert(key(id), Latest { value: 1.0, ts_ms: now - 3_600_000 });
        }
        for id in 10_000..10_005 {
            latest.insert(key(id), Latest { value: 2.0, ts_ms: now - 1_000 });
        }
        latest.insert(key(20_000), Latest { value: 3.0, ts_ms: now - 30_000 }); // exactly at the edge
        let gone = prune_stale(&mut latest, now, Duration::from_secs(30));
        assert_eq!(gone, 10_000);
        assert_eq!(latest.len(), 6);
        assert!(latest.capacity() < 1_000, "memory is given back: capacity {}", latest.capacity());
        assert!(latest.contains_key(&key(10_004)) && latest.contains_key(&key(20_000)));
    }

    #[test]
    fn state_names_are_the_status_names() {
        for st in State::ALL {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
    }

    #[test]
    fn health_names_the_signal_and_report() {
        let snap = StatusSnapshot {
            version: "v".into(),
            host: "h".into(),
            tags: BTreeMap::new(),
            pid: 1,
            uptime_ms: 0,
            collector: CollectorStatus {
                state: State::Backoff,
                pid: None,
                incarnation: 2,
                uptime_ms: None,
                restarts: 1,
                next_restart_in_ms: Some(100),
                heartbeat: HeartbeatStatus { last_ack_ms_ago: None, rtt_ms: None },
                crash_counts: vec![],
                crashes_per_hour: vec![0; deaths::HOURS],
                pending_crash_reports: 0,
                dropped_frames: BTreeMap::new(),
                crash_report_error: None,
                last_exit: Some(LastExit {
                    at: "t".into(),
                    reason: "signaled".into(),
                    code: None,
                    signal: Some(11),
                    signal_name: Some("SIGSEGV".into()),
                    core_dumped: false,
                    uptime_ms: 5,
                    collector_in_flight: None,
                    crash_report: Some("R1".into()),
                    detail: None,
                    oom_killed: None,
                }),
                spawn_error: None,
                module: ModuleStatus::builtin("v"),
            },
            collectors: vec![],
            uploads: vec![],
            series: 0,
            checkin: None,
        };
        assert_eq!(
            snap.health().unwrap_err(),
            "collector state is backoff after signaled (SIGSEGV), crash report R1"
        );
    }
}
