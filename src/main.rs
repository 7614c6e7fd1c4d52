//! `vigil`: parse the command line, load the config, run, map the outcome to an exit code
//! (0 success, 78 invalid configuration, 1 any other fatal error).

mod checkin_server;
mod collector;
mod config;
mod crashes;
mod daemon;
mod http_client;
mod keys;
mod logging;
mod metrics;
mod once;
mod receive;
mod run;
mod status;
mod status_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for an invalid configuration (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Host monitoring agent: a small supervisor and a crash-isolated collector child."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the supervisor (in the foreground unless --daemon).
    Run(run::RunArgs),
    /// The collector child; started by `vigil run`, speaks the IPC protocol on stdin/stdout.
    Collector,
    /// Run every enabled collector once in this process (rates over ~1 s) and print the samples.
    Once {
        /// Config file (default: $VIGIL_CONFIG, else /etc/vigil/vigil.toml if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print a JSON array of {name, tags, value} instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Query the local status endpoint: a summary (or --json); exit 0 healthy, 1 unreachable,
    /// 2 unhealthy.
    Status(status_cmd::Args),
    /// List crash reports (newest first) or show one: `vigil crashes [list | show ID]`.
    Crashes(crashes::Args),
    /// A local ingest server for the native protocol: WebSocket at /v1/ingest, one JSON line
    /// per accepted batch in FILE.
    Receive(receive::Args),
    /// Make an Ed25519 key pair for signing collector modules (PREFIX.key, PREFIX.pub).
    Keygen(keys::KeygenArgs),
    /// Sign a collector module: prints its manifest {version, url, sha256, signature}.
    SignModule(keys::SignArgs),
    /// Validate the configuration; print every error with file, line and column.
    CheckConfig {
        /// Config file (default: $VIGIL_CONFIG, else /etc/vigil/vigil.toml if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Collector => collector::main(),
        Command::Once { config, json } => once::main(config, json),
        Command::Status(args) => status_cmd::main(args),
        Command::Crashes(args) => crashes::main(args),
        Command::Receive(args) => receive::main(args),
        Command::CheckConfig { config } => check_config(config),
        Command::Keygen(args) => keys::keygen(args),
        Command::SignModule(args) => keys::sign_module(args),
    }
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    match config::load_or_exit(path.as_deref()) {
        Ok((source, cfg)) => {
            // `vigil run` reads the key at start; a key it cannot use is a config error here.
            if !cfg.checkin.url.is_empty() {
                let key = std::path::Path::new(&cfg.checkin.public_key_file);
                if let Err(e) = vigil_actors::module::PublicKey::read(key) {
                    eprintln!("{source}: `checkin.public_key_file`: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            println!("{source}: ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
