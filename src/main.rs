//! `vigil`: parse the command line, load the config, run, map the outcome to an exit code
//! (0 success, 78 invalid configuration, 1 any other fatal error).

mod auth;
mod commands;
mod config;
mod endpoint;
mod format;
mod http_client;
mod logging;
mod reports;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for an invalid configuration (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

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
    Run(commands::run::RunArgs),
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
    Status(commands::status::Args),
    /// List crash reports (newest first) or show one: `vigil crashes [list | show ID]`.
    Crashes(commands::crashes::Args),
    /// A local ingest server for the native protocol: WebSocket at /v1/ingest, one JSON line
    /// per accepted batch in FILE.
    Receive(commands::receive::Args),
    /// Make an Ed25519 key pair for signing collector modules (PREFIX.key, PREFIX.pub).
    Keygen(commands::keys::KeygenArgs),
    /// Sign a collector module: prints its manifest {version, url, sha256, signature}.
    SignModule(commands::keys::SignArgs),
    /// Internal: symbolize a raw crash capture (stdin) into the stack of a crash report
    /// (JSON on stdout); run by the supervisor as a short-lived child.
    #[command(hide = true)]
    Symbolize,
    /// Internal: take a process's stacks from outside with ptrace (a dying thread, or every
    /// thread of a hung one) and print the raw capture; run by the supervisor.
    #[command(hide = true)]
    StackDump(commands::stack_dump::Args),
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
        Command::Run(args) => commands::run::main(args),
        Command::Collector => commands::collector::main(),
        Command::Once { config, json } => commands::once::main(config, json),
        Command::Status(args) => commands::status::main(args),
        Command::Crashes(args) => commands::crashes::main(args),
        Command::Receive(args) => commands::receive::main(args),
        Command::CheckConfig { config } => commands::check_config::main(config),
        Command::Symbolize => commands::symbolize::main(),
        Command::StackDump(args) => commands::stack_dump::main(args),
        Command::Keygen(args) => commands::keys::keygen(args),
        Command::SignModule(args) => commands::keys::sign_module(args),
    }
}
