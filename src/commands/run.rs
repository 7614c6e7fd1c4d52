//! `vigil run`: the supervisor process. Wires the Supervisor actor, the status endpoint and
//! the stop signals together on one actix System whose thread lives as long as the process
//! (the collector's PR_SET_PDEATHSIG is tied to the thread that spawned it).
//!
//! Start-up order matters: everything that can fail because of the operator's input (the
//! config, the log file, the data dir, a live pidfile) is checked while the terminal is
//! still attached, then `--daemon` forks (before any thread exists), then the runtime starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::commands::daemon::{self, Readiness};
use crate::commands::reload;
use crate::config;
use crate::endpoint::{ConfigInfo, Live};
use actix::AsyncContext;
use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use vigil_actors::config::Config;
use vigil_actors::supervisor::{Shutdown, Supervisor, SupervisorSettings};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Config file (default: $VIGIL_CONFIG, else /etc/vigil/vigil.toml if it exists, else built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides agent.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log file (overrides agent.log_file); default stderr.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Detach from the terminal and run in the background (needs --pidfile and a log file).
    #[arg(long, requires = "pidfile")]
    daemon: bool,
    /// Write the process id here once the status endpoint is up; refuse to start while the
    /// process it names is alive. Removed at exit.
    #[arg(long)]
    pidfile: Option<PathBuf>,
}

pub fn main(args: RunArgs) -> ExitCode {
    let (source, cfg) = match config::load_or_exit(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let log_file = args
        .log_file
        .clone()
        .or_else(|| (!cfg.agent.log_file.is_empty()).then(|| PathBuf::from(&cfg.agent.log_file)));
    if args.daemon && log_file.is_none() {
        eprintln!(
            "vigil: --daemon needs agent.log_file or --log-file: a daemon's stderr is /dev/null, so its log would be lost"
        );
        return ExitCode::from(crate::EXIT_CONFIG);
    }
    // Filled in the daemon once it has forked; the parent waits for its verdict.
    let mut readiness = None;
    let code = match run(args, source, cfg, log_file, &mut readiness) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Fatal error.");
            match readiness.take() {
                Some(r) => r.failed(&format!("{e:#}")),
                None => eprintln!("vigil: {e:#}"),
            }
            ExitCode::from(1)
        }
    };
    // The last lines are in the log's queue: let them out (unless its disk is frozen).
    crate::logging::flush(std::time::Duration::from_secs(2));
    code
}

fn run(
    args: RunArgs,
    source: config::Source,
    mut cfg: Config,
    log_file: Option<PathBuf>,
    readiness: &mut Option<Readiness>,
) -> anyhow::Result<i32> {
    // The daemon works in /, so every path the operator gave relative to the working
    // directory is made absolute first (the foreground agent logs the same absolute paths).
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let abs = |p: &Path| cwd.join(p);
    let log_file = log_file.map(|p| abs(&p));
    let pidfile = args.pidfile.as_deref().map(abs);
    reload::absolutize(&mut cfg, &cwd);
    let previous = match &pidfile {
        Some(p) => daemon::check_pidfile(p)?,
        None => daemon::Previous::None,
    };
    let log =
        crate::logging::init_supervisor(cfg.agent.log_level, cfg.agent.log_format, log_file.as_deref())?;
    let data_dir = abs(&config::data_dir(args.data_dir.as_deref(), &cfg));
    make_private_dir(&data_dir)?;
    let listen = cfg.status.listen_addr().map_err(anyhow::Error::msg)?;
    let token = reload::status_token(&cfg.status.token_file)?;
    let checkin_key = match cfg.checkin.url.as_str() {
        "" => None,
        _ => Some(
            vigil_actors::supervisor::module::PublicKey::read(std::path::Path::new(
                &cfg.checkin.public_key_file,
            ))
            .map_err(anyhow::Error::msg)
            .context("cannot read checkin.public_key_file")?,
        ),
    };
    // The built-in collector is this very executable, through /proc/self/exe: it names the
    // file this process was started from even after an upgrade replaced (or deleted) the one
    // at our path, so supervisor and collector stay the same version until a restart.
    let program = match Path::new("/proc/self/exe") {
        p if p.exists() => p.to_path_buf(),
        _ => std::env::current_exe().context("cannot find the vigil executable to run as the collector")?,
    };
    if args.daemon {
        let log_path = log.path().unwrap_or(Path::new("the log"));
        *readiness = Some(daemon::detach(log_path)?);
    }
    // From here on no line waits for the log's destination (after the fork: threads do
    // not survive it).
    log.start_thread().context("cannot start the log thread")?;
    crate::logging::exit_on_panic();
    if let (daemon::Previous::Stale(old), Some(p)) = (&previous, &pidfile) {
        tracing::warn!(pidfile = %p.display(), old = %old, "Replacing a stale pidfile (its process is gone).");
    }
    // Read systemd's variables, and take them out of the environment the collector inherits
    // (systemd accepts notifications from the main process only). Still one thread here.
    let notify = vigil_actors::supervisor::sd_notify::SdNotify::from_env(std::process::id())
        .context("cannot use NOTIFY_SOCKET")?
        .map(Arc::new);
    for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(k);
    }
    tracing::info!(
        version = vigil_actors::VERSION,
        pid = std::process::id(),
        config = %source,
        data_dir = %data_dir.display(),
        "Supervisor starting."
    );
    let settings = SupervisorSettings {
        config: cfg.supervisor.clone(),
        data_dir,
        program,
        args: vec!["collector".into()],
        env: vec![(crate::logging::CHILD_LEVEL_ENV.into(), cfg.agent.log_level.as_str().into())],
        version: vigil_actors::VERSION.to_string(),
        host: reload::host_name(&cfg),
        collectors: cfg.collectors.clone(),
        tags: cfg.agent.tags.clone(),
        upload_hosts: reload::upload_hosts(&cfg),
        sinks: Vec::new(),
        notify,
    };
    let host = reload::host_name(&cfg);
    let uploads = cfg.upload.clone();
    let tags = cfg.agent.tags.clone();
    let config_info = ConfigInfo { source: source.to_string(), loaded_at: reload::now(), reload_error: None };
    let cli = (args.config.clone(), args.data_dir.clone(), args.log_file.is_some());
    let current = cfg.clone();
    let checkin = cfg.checkin.clone();
    let base_collectors = cfg.collectors.clone();
    // A series not refreshed for three intervals has stopped (a container gone, a collector
    // quarantined or down); the floor allows for a round of slow collections at short intervals.
    let stale_after = cfg.collectors.stale_after();

    let system = actix_rt::System::new();
    let started: anyhow::Result<Option<daemon::Pidfile>> = system.block_on(async move {
        // Bind the status endpoint before the first collector is spawned: a port in use is
        // a fatal start-up error and must not leave a child behind.
        let mut settings = settings;
        let mut agent_id = String::new();
        if !uploads.is_empty() || checkin_key.is_some() {
            agent_id = vigil_actors::upload::protocol::agent_id(&settings.data_dir)
                .with_context(|| format!("cannot read or create {}/agent_id", settings.data_dir.display()))?;
        }
        let upload_token_file = uploads
            .iter()
            .find(|u| u.kind == vigil_actors::config::SinkType::Vigil && !u.token_file.is_empty())
            .map(|u| std::path::PathBuf::from(&u.token_file));
        let sink_ctx = reload::SinkContext {
            data_dir: settings.data_dir.clone(),
            agent_id: agent_id.clone(),
            checkins: checkin_key.is_some(),
        };
        let configured: Vec<_> =
            uploads.into_iter().map(|u| (u.clone(), sink_ctx.start(u, &host, &tags))).collect();
        let sinks: Vec<_> = configured.iter().map(|(_, h)| h.clone()).collect();
        settings.sinks = sinks.clone();
        let ctx = actix::Context::<Supervisor>::new();
        let supervisor = ctx.address();
        if let Some(public_key) = checkin_key {
            vigil_actors::supervisor::checkin::start(vigil_actors::supervisor::checkin::CheckinSettings {
                config: checkin,
                public_key,
                data_dir: settings.data_dir.clone(),
                agent_id,
                host: host.clone(),
                version: vigil_actors::VERSION.to_string(),
                base_collectors,
                supervisor: supervisor.clone(),
                sinks: sinks.iter().map(|s| s.addr().clone().recipient()).collect(),
                upload_token_file,
            });
        }
        let crash_dir = settings.crash_dir();
        let data_dir = settings.data_dir.clone();
        let (sup, feed) = Supervisor::new(settings).context("cannot start the supervisor's disk thread")?;
        let live = Arc::new(Live::new(sinks, config_info, stale_after));
        let server = crate::endpoint::start(&listen, token.clone(), crash_dir, feed.clone(), live.clone())?;
        if let Some((_, addr)) = &server {
            tracing::info!(addr = %addr, "Status endpoint listening.");
        }
        let mut running = reload::Running {
            cli_config: cli.0,
            cli_data_dir: cli.1,
            cli_log_file: cli.2,
            cwd,
            current,
            data_dir,
            host: host.clone(),
            sink_ctx,
            sinks: configured,
            supervisor: supervisor.clone(),
            live,
            feed,
            server: server.map(|(h, _)| h),
            status_token: token,
        };
        // Written once the endpoint answers, and before the first collector exists.
        let pidfile = pidfile.map(|p| daemon::Pidfile::write(&p, std::process::id())).transpose()?;
        ctx.run(sup);
        inject_supervisor_fault(&supervisor)?;
        for (kind, name) in [(SignalKind::terminate(), "SIGTERM"), (SignalKind::interrupt(), "SIGINT")] {
            let mut stream = signal(kind).with_context(|| format!("cannot handle {name}"))?;
            let sup = supervisor.clone();
            actix_rt::spawn(async move {
                while stream.recv().await.is_some() {
                    sup.do_send(Shutdown { signal: name });
                }
            });
        }
        // SIGHUP reopens the log file (logrotate) and reloads the configuration; its default
        // action would kill the supervisor without stopping the collector.
        let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        actix_rt::spawn(async move {
            while hup.recv().await.is_some() {
                reopen_log(&log);
                running.reload().await;
            }
        });
        Ok(pidfile)
    });
    // Dropped (so removed) when this function returns, however it returns.
    let _pidfile = started?;
    if let Some(r) = readiness.take() {
        r.ready();
    }
    let code = system.run_with_code().context("supervisor event loop failed")?;
    Ok(code)
}

/// SIGHUP: the last line goes to the old file, the next ones to a new file at the path.
/// `VIGIL_SUPERVISOR_FAULT=panic@SECS` (for tests and for operators who want to see it): the
/// Supervisor actor panics SECS after start, which must end the process with status 1.
fn inject_supervisor_fault(supervisor: &actix::Addr<Supervisor>) -> anyhow::Result<()> {
    let Ok(spec) = std::env::var("VIGIL_SUPERVISOR_FAULT") else { return Ok(()) };
    let secs = spec
        .strip_prefix("panic@")
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| anyhow::anyhow!("VIGIL_SUPERVISOR_FAULT={spec}: expected panic@SECS"))?;
    tracing::warn!(after_secs = secs, "VIGIL_SUPERVISOR_FAULT: the Supervisor will panic.");
    let sup = supervisor.clone();
    actix_rt::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await;
        sup.do_send(vigil_actors::supervisor::InjectPanic);
    });
    Ok(())
}

/// The log thread reopens the file (and logs how that went): opening a file can block.
fn reopen_log(log: &crate::logging::Log) {
    let Some(path) = log.path() else {
        tracing::info!("SIGHUP received; logging to stderr, so there is no log file to reopen.");
        return;
    };
    tracing::info!(log_file = %path.display(), "SIGHUP received; reopening the log file.");
    log.reopen();
}

/// Creates the data dir with mode 0700 (crash reports hold stderr tails, which can hold
/// secrets; the spool holds every sample). One that exists and is open to others is tightened
/// to 0700, with a warning.
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => {
                tracing::warn!(data_dir = %dir.display(), was = format!("{:04o}", mode & 0o7777), "The data dir was open to other users; tightened to 0700.")
            }
            Err(e) => {
                tracing::warn!(data_dir = %dir.display(), mode = format!("{:04o}", mode & 0o7777), error = %e, "The data dir is open to other users and cannot be tightened to 0700.")
            }
        }
    }
    Ok(())
}
