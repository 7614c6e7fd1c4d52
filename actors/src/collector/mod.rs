//! The [`Collector`] trait and the one generic actor, [`CollectorActor`], that runs any
//! collector in the collector child.
//!
//! A collector is plain code: it owns whatever state it needs between collections (previous
//! counters for rates), and `collect` appends samples. It knows nothing of actix, pipes or
//! timers, so it is unit-tested by calling `collect` directly, against a fixture root.
//!
//! # One collection at a time, announced before it starts
//!
//! Every CollectorActor in the child shares one [`CollectionLock`]. A collection takes the
//! lock, writes `CollectionBegin{name}` to the supervisor (synchronously, so it is in the
//! pipe before any of the collector's code runs), collects, and writes `CollectionEnd` with
//! the samples. If the process dies in between, the last Begin without an End names the
//! collector that killed it; that attribution is exact because no two collections ever run
//! at once. I/O-bound collectors (dns, time_drift) await without blocking the thread, and
//! every collection is bounded by a timeout of one interval.
//!
//! A panic inside `collect` is caught, counted as that collection's error, and the
//! collector is rebuilt from its config (its state may be half-updated).

pub mod collectors;
pub mod crash_capture;
pub mod fault;
pub mod parent_link;
pub mod pid_stat;

use std::cell::RefCell;
use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use serde::{de::DeserializeOwned, Serialize};

use crate::collector::fault::{Fault, FaultKind, FaultWhen};
use crate::collector::parent_link::FrameWriter;
use crate::ipc::FromCollector;

pub use crate::sample::{Metric, Sample};

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Proc(String),
    /// The host lacks what this collector reads (a platform gap, not a failure).
    #[error("not supported on this host: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

impl From<procfs::ProcError> for CollectError {
    fn from(e: procfs::ProcError) -> Self {
        CollectError::Proc(e.to_string())
    }
}

/// What every collector's config table has besides its own keys.
pub trait CollectorConfig:
    Serialize + DeserializeOwned + Default + Clone + Debug + PartialEq + Send + Unpin + 'static
{
    /// `enabled = true|false` in `[collectors.NAME]`.
    fn enabled(&self) -> bool;

    /// Semantic problems as (key within the table, message); empty when valid.
    fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Where a collector reads from, and facts about the agent it may need.
#[derive(Debug, Clone)]
pub struct Env {
    /// Root of the filesystem to read `/proc` and `/sys` under: `/` on a live host, a
    /// fixture tree in tests.
    pub root: PathBuf,
    /// Host names of the upload URLs (the dns collector's default names).
    pub upload_hosts: Vec<String>,
}

impl Default for Env {
    fn default() -> Self {
        Self { root: PathBuf::from("/"), upload_hosts: Vec::new() }
    }
}

impl Env {
    /// `root` joined with an absolute path such as `/proc/stat`.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

/// A source of samples.
pub trait Collector: Sized + Unpin + 'static {
    /// The `[collectors.NAME]` table name and the `collector` label of its self metrics.
    const NAME: &'static str;
    /// Every metric it produces, with unit, kind and HELP text: `/metrics` names and converts
    /// its samples from this, and docs/metrics.md is checked against it. A sample whose name
    /// is not declared here is still exposed, unconverted, so nothing is hidden.
    const METRICS: &'static [Metric];
    type Config: CollectorConfig;

    fn new(config: &Self::Config, env: &Env) -> Self;

    /// One collection: append samples to `out`. Rates need two collections; the first
    /// one only records counters.
    fn collect(&mut self, out: &mut Vec<Sample>) -> impl Future<Output = Result<(), CollectError>>;
}

/// Serialises collections across all CollectorActors of the process.
pub type CollectionLock = Rc<tokio::sync::Mutex<()>>;
/// The child's stdout, shared by every actor that writes frames.
pub type SharedWriter = Rc<RefCell<FrameWriter>>;

/// What a CollectorActor needs besides its collector.
#[derive(Clone)]
pub struct CollectorContext {
    pub env: Env,
    pub interval: Duration,
    pub writer: SharedWriter,
    pub lock: CollectionLock,
    /// A `VIGIL_FAULT=…@collector:NAME` for this incarnation, if any.
    pub fault: Option<Fault>,
}

/// Stop collecting (the child is being reconfigured or shut down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopCollector;

/// Runs one collector every interval.
pub struct CollectorActor<C: Collector> {
    config: C::Config,
    /// `None` while a collection holds it.
    collector: Option<C>,
    ctx: CollectorContext,
    fault_fired: bool,
    /// Stop requested while a collection was running: stop when it ends, so its samples
    /// are still sent.
    stop_pending: bool,
}

impl<C: Collector> CollectorActor<C> {
    pub fn new(config: C::Config, ctx: CollectorContext) -> Self {
        let collector = C::new(&config, &ctx.env);
        Self { config, collector: Some(collector), ctx, fault_fired: false, stop_pending: false }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stop_pending {
            return;
        }
        let Some(mut collector) = self.collector.take() else {
            tracing::debug!(collector = C::NAME, "Previous collection still running; skipping this tick.");
            return;
        };
        let fault = match &self.ctx.fault {
            Some(f) if !self.fault_fired && f.when == FaultWhen::Collector(C::NAME.to_string()) => {
                self.fault_fired = true;
                Some(f.kind.clone())
            }
            _ => None,
        };
        let (lock, writer, timeout) = (self.ctx.lock.clone(), self.ctx.writer.clone(), self.ctx.interval);
        let fut = async move {
            let _guard = lock.lock().await;
            writer.borrow_mut().send(&FromCollector::CollectionBegin { collector: C::NAME.to_string() });
            let started = Instant::now();
            let mut out = Vec::new();
            let run = AssertUnwindSafe(async {
                if let Some(kind) = fault {
                    inject(kind);
                }
                collector.collect(&mut out).await
            })
            .catch_unwind();
            let (error, keep) = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(Ok(()))) => (None, true),
                Ok(Ok(Err(e))) => (Some(e.to_string()), true),
                Ok(Err(panic)) => (Some(panic_error(&panic)), false),
                Err(_) => (Some(format!("timed out after {:.1} s", timeout.as_secs_f64())), false),
            };
            let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            if let Some(e) = &error {
                tracing::warn!(collector = C::NAME, error = %e, "Collection failed.");
            }
            writer.borrow_mut().send(&FromCollector::CollectionEnd {
                collector: C::NAME.to_string(),
                ts_ms: chrono::Utc::now().timestamp_millis(),
                duration_ms,
                samples: out,
                error,
            });
            keep.then_some(collector)
        };
        ctx.spawn(fut.into_actor(self).map(|kept, this, ctx| {
            // A collector that panicked or timed out may hold half-updated state.
            this.collector = Some(kept.unwrap_or_else(|| C::new(&this.config, &this.ctx.env)));
            if this.stop_pending {
                ctx.stop();
            }
        }));
    }
}

/// A fault aimed at a collector fires inside its collection: crash kinds take the process
/// down (and the Begin frame names the collector), `panic` panics inside `collect` (and is
/// caught, as any collector panic), `hang` blocks the thread mid-collection.
fn inject(kind: FaultKind) {
    tracing::warn!(fault = ?kind, "Injecting fault (VIGIL_FAULT) inside a collection.");
    match kind {
        FaultKind::Panic => panic!("VIGIL_FAULT=panic: injected panic inside a collector"),
        FaultKind::Segv => crate::collector::fault::segv(),
        FaultKind::SegvLibc => crate::collector::fault::segv_libc(),
        FaultKind::StackOverflow => {
            crate::collector::fault::stack_overflow(0);
            std::process::abort()
        }
        FaultKind::Oom => crate::collector::fault::oom(),
        FaultKind::Abort => std::process::abort(),
        FaultKind::Hang => crate::collector::fault::hang(),
        FaultKind::Exit(code) => std::process::exit(code),
        FaultKind::StderrFlood(n) => {
            crate::collector::fault::flood_stderr(n);
            crate::collector::fault::segv()
        }
        FaultKind::CloseStdout => crate::collector::fault::close_stdout(),
        FaultKind::Garbage => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&crate::collector::fault::garbage(1024));
        }
    }
}

/// A caught panic as a collector's `last_error`: `panicked at FILE:LINE:COL: MESSAGE`
/// (CONTRACT §6), the place from the panic hook
/// ([`crate::collector::crash_capture::install_panic_hook`]).
/// The panic's backtrace is logged once per place (a collector that panics every tick
/// would otherwise fill the log with the same trace).
fn panic_error(p: &Box<dyn std::any::Any + Send>) -> String {
    static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let message = panic_message(p);
    match crate::collector::crash_capture::take_panic() {
        Some((at, backtrace)) => {
            let first = LOGGED
                .lock()
                .map(|mut l| {
                    !l.contains(&at) && {
                        l.push(at.clone());
                        true
                    }
                })
                .unwrap_or(false);
            if first {
                tracing::error!(
                    "A collector panicked at {at}: {message}; the panic was caught and the collector keeps running. Backtrace (logged once per place):\n{backtrace}"
                );
            }
            format!("panicked at {at}: {message}")
        }
        None => format!("panicked: {message}"),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl<C: Collector> Actor for CollectorActor<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tick(ctx);
        ctx.run_interval(self.ctx.interval, |this, ctx| this.tick(ctx));
    }
}

impl<C: Collector> Handler<StopCollector> for CollectorActor<C> {
    type Result = ();

    fn handle(&mut self, _: StopCollector, ctx: &mut Context<Self>) {
        if self.collector.is_some() {
            ctx.stop();
        } else {
            self.stop_pending = true;
        }
    }
}

/// Runs `collect` on a collector outside any actor (for `vigil once` and tests), catching
/// panics the way CollectorActor does.
pub async fn collect_guarded<C: Collector>(c: &mut C) -> Result<Vec<Sample>, CollectError> {
    let mut out = Vec::new();
    match AssertUnwindSafe(c.collect(&mut out)).catch_unwind().await {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(e),
        Err(p) => Err(CollectError::Other(panic_error(&p))),
    }
}

/// Helpers for the collectors' unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use super::{Env, Sample};

    /// An `Env` rooted at `tests/fixtures/NAME`.
    pub fn fixture(name: &str) -> Env {
        Env {
            root: format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR")).into(),
            ..Env::default()
        }
    }

    /// The value of the first sample called `name`; panics (listing the samples) if none.
    pub fn value(s: &[Sample], name: &str) -> f64 {
        s.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("{name} missing: {s:?}")).value
    }
}
