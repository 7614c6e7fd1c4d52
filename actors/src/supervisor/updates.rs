//! What the check-in actor asks of the [`Supervisor`]: its state for the next check-in, and
//! the changes a check-in brought (collector settings, a verified module, outcomes to report).
//! Settings and modules are applied by a graceful restart of the collector.

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use super::{KillReason, State, Supervisor};
use crate::config::CollectorsConfig;
use crate::supervisor::child_process::CloseStdin;
use crate::supervisor::heartbeat::StopHeartbeat;
use crate::supervisor::module::{Change, Installed, ModuleStatus};

/// What a check-in reports about the collector.
#[derive(Debug, Clone)]
pub struct CheckinInfo {
    pub state: State,
    pub restarts: u64,
    pub incarnation: u64,
    /// The collector settings in force (a check-in's settings equal to these change nothing).
    pub collectors: CollectorsConfig,
    pub module: ModuleStatus,
    pub last_change: Option<Change>,
}

#[derive(Message)]
#[rtype(result = "CheckinInfo")]
pub struct GetCheckinInfo;

/// `/status` `checkin`: how check-ins go.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckinStatus {
    pub url: String,
    /// RFC 3339 times of the last attempt and of the last successful check-in.
    pub last_attempt_at: Option<String>,
    pub last_ok_at: Option<String>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Filled in by the Supervisor: the outcome of the last change.
    pub last_change: Option<Change>,
}

/// The check-in actor's report after each attempt.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckinReport(pub CheckinStatus);

/// New collector settings (validated by the sender) with their id; applied by a graceful
/// restart unless they equal the ones in force.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyCollectors {
    pub collectors: Box<CollectorsConfig>,
    pub id: String,
}

/// What a configuration reload (SIGHUP) changes in the Supervisor: collector settings and
/// the dns collector's default names (a graceful collector restart when either changed), the
/// agent tags added to every sample, and the sinks samples are published to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload {
    pub collectors: Box<CollectorsConfig>,
    pub tags: std::collections::BTreeMap<String, String>,
    pub upload_hosts: Vec<String>,
    pub sinks: Vec<crate::upload::SinkHandle>,
}

/// The progress of a module a check-in offered.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ModuleEvent {
    /// Being downloaded and verified.
    Verifying { version: String },
    /// Verification failed (or the manifest is unusable): never run, not tried again.
    Rejected { version: String, error: String },
    /// The download failed (network, HTTP status, local files): not the module's fault;
    /// tried again at the next check-in.
    DownloadFailed { version: String, error: String },
    /// Verified and installed: switch to it (graceful restart; probation starts).
    Installed(Installed),
}

/// The outcome of a change the sender applied itself (an upload token).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordChange(pub Change);

impl Supervisor {
    /// Whether the current collector is being replaced on purpose.
    pub(super) fn restarting(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.restart_for.is_some())
    }

    /// Replaces the collector: closes its stdin (it flushes and exits 0), SIGKILL after
    /// `stop_grace_secs`; its exit starts the next incarnation at once. A collector waiting
    /// in backoff is started now. What the new one runs is read at spawn, so changes that
    /// arrive while a restart is under way ride along.
    fn restart_gracefully(&mut self, ctx: &mut Context<Self>, why: &'static str) {
        if matches!(self.state, State::Stopping | State::Stopped) {
            return;
        }
        if let Some((_, h)) = self.next_restart.take() {
            ctx.cancel_future(h);
            tracing::info!(reason = why, "Starting the collector now ({why}).");
            self.spawn_child(ctx);
            return;
        }
        let grace = self.settings.config.stop_grace();
        let Some(cur) = self.current.as_mut() else { return };
        if cur.restart_for.is_some() {
            return;
        }
        tracing::info!(reason = why, pid = cur.pid, "Restarting the collector gracefully ({why}).");
        cur.restart_for = Some(why);
        self.close_current(grace, ctx);
    }

    /// Asks the current collector to exit (heartbeats stop, its stdin is closed) and kills
    /// it if it is still the current one after `grace`.
    pub(super) fn close_current(&mut self, grace: Duration, ctx: &mut Context<Self>) {
        let Some(cur) = &self.current else { return };
        cur.heartbeat.do_send(StopHeartbeat);
        cur.addr.do_send(CloseStdin);
        let inc = cur.incarnation;
        ctx.run_later(grace, move |this, _| {
            if this.is_current(inc) {
                tracing::warn!("Collector did not exit within stop_grace_secs; killing it (SIGKILL).");
                this.kill_current(KillReason::StopGraceExpired);
            }
        });
    }

    pub(super) fn on_hello(&mut self, version: &str) {
        let expected = self.modules.current_version().to_string();
        if version != expected {
            tracing::warn!(reported = version, expected = %expected, "The collector reports another version than the module it was started as.");
        }
        if self.modules.on_hello(version) {
            tracing::info!(module = %expected, "New collector module is running.");
            self.last_change = Some(Change::new("module", &expected, "applied", None));
        }
    }

    /// After an unrequested end: rolls a crash-looping new module back.
    pub(super) fn check_rollback(&mut self) {
        let cfg = &self.settings.config;
        let Some(rb) = self.modules.on_crash(Instant::now(), cfg.crash_loop_crashes, cfg.crash_loop_window())
        else {
            return;
        };
        let to = rb.to.clone().unwrap_or_else(|| format!("built-in {}", self.settings.version));
        tracing::error!(
            module = %rb.bad,
            crashes = rb.crashes,
            rollback_to = %to,
            "Collector module {} crash-looped after the switch; rolled back to {to} and marked bad (never tried again).",
            rb.bad
        );
        let error = format!("crashed {} times within crash_loop_window_secs of the switch", rb.crashes);
        self.last_change = Some(Change::new("module", &rb.bad, "rolled_back", Some(error)));
        // The previous module starts with a clean slate.
        self.policy = super::RestartPolicy::new(&self.settings.config);
        self.in_crash_loop = false;
    }
}

impl Handler<GetCheckinInfo> for Supervisor {
    type Result = MessageResult<GetCheckinInfo>;

    fn handle(&mut self, _: GetCheckinInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(CheckinInfo {
            state: self.state,
            restarts: self.restarts,
            incarnation: self.incarnation,
            collectors: self.settings.collectors.clone(),
            module: self.modules.status(),
            last_change: self.last_change.clone(),
        })
    }
}

impl Handler<CheckinReport> for Supervisor {
    type Result = ();

    fn handle(&mut self, CheckinReport(st): CheckinReport, _: &mut Context<Self>) {
        self.checkin = Some(st);
    }
}

impl Handler<ApplyCollectors> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: ApplyCollectors, ctx: &mut Context<Self>) {
        if *m.collectors == self.settings.collectors {
            return;
        }
        tracing::info!(settings = %m.id, "New collector settings from a check-in.");
        self.settings.collectors = *m.collectors;
        self.last_change = Some(Change::new("settings", &m.id, "applied", None));
        self.restart_gracefully(ctx, "new collector settings");
    }
}

impl Handler<Reload> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: Reload, ctx: &mut Context<Self>) {
        self.settings.tags = m.tags;
        self.settings.sinks = m.sinks;
        let restart =
            *m.collectors != self.settings.collectors || m.upload_hosts != self.settings.upload_hosts;
        self.settings.collectors = *m.collectors;
        self.settings.upload_hosts = m.upload_hosts;
        if restart {
            self.restart_gracefully(ctx, "configuration reloaded");
        }
    }
}

impl Handler<ModuleEvent> for Supervisor {
    type Result = ();

    fn handle(&mut self, ev: ModuleEvent, ctx: &mut Context<Self>) {
        match ev {
            ModuleEvent::Verifying { version } => self.modules.verifying(&version),
            ModuleEvent::Rejected { version, error } => {
                tracing::error!(module = %version, error = %error, "Collector module rejected; it is not run.");
                self.modules.rejected(&version, &error);
                self.last_change = Some(Change::new("module", &version, "rejected", Some(error)));
            }
            ModuleEvent::DownloadFailed { version, error } => {
                tracing::warn!(module = %version, error = %error, "Collector module download failed; retrying at the next check-in.");
                self.modules.download_failed(&version, &error);
            }
            ModuleEvent::Installed(m) => {
                if self.modules.is_bad(&m.version) {
                    tracing::warn!(module = %m.version, "Not switching to a module marked bad.");
                    return;
                }
                tracing::info!(module = %m.version, "Collector module verified; switching to it.");
                self.modules.switch(m, Instant::now());
                self.policy = super::RestartPolicy::new(&self.settings.config);
                self.in_crash_loop = false;
                self.restart_gracefully(ctx, "new collector module");
            }
        }
    }
}

impl Handler<RecordChange> for Supervisor {
    type Result = ();

    fn handle(&mut self, RecordChange(c): RecordChange, _: &mut Context<Self>) {
        self.last_change = Some(c);
    }
}
