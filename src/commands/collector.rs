//! `vigil collector`: the child process. Refuses a terminal on stdin (it speaks a binary
//! protocol there), sets up logging and fault injection, and runs the ParentLink actor until
//! the supervisor closes stdin.

use std::io::IsTerminal;
use std::process::ExitCode;

use actix::Actor;
use vigil_actors::collector::fault::Fault;
use vigil_actors::collector::parent_link::ParentLink;

pub fn main() -> ExitCode {
    if std::io::stdin().is_terminal() {
        eprintln!(
            "vigil collector: stdin is a terminal. This process is started by `vigil run` and speaks \
             a binary protocol on stdin/stdout; run `vigil run` (or `vigil once`) instead."
        );
        return ExitCode::from(1);
    }
    crate::logging::init_collector();
    // The collector's main thread has a name of its own (started through /proc/self/exe it
    // would be "exe"): crash reports and `top` say which process is which.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"vigil-collector".as_ptr() as libc::c_ulong, 0, 0, 0) };
    // Before any collector runs: a fatal signal from here on leaves its stack in the crash
    // pipe the supervisor handed down (CONTRACT §6).
    vigil_actors::collector::crash_capture::install();
    vigil_actors::collector::crash_capture::install_panic_hook();
    let incarnation: u64 = std::env::var("VIGIL_INCARNATION").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let fault = match Fault::from_env() {
        Ok(f) => f.filter(|f| f.applies_to(incarnation)),
        Err(e) => {
            tracing::error!(error = %e, "Ignoring an invalid VIGIL_FAULT.");
            None
        }
    };
    // Started as a check-in module, this executable was verified and installed as the version
    // the supervisor names; its Hello reports that version (docs/checkins.md).
    let version = std::env::var(vigil_actors::supervisor::module::VERSION_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vigil_actors::VERSION.to_string());
    let system = actix_rt::System::new();
    system.block_on(async {
        ParentLink::new(version, fault).start();
    });
    let code = system.run_with_code().unwrap_or(1);
    tracing::info!(code, "Collector exiting.");
    // Exit here rather than unwinding the runtime: a blocking stdin read may still be parked.
    std::process::exit(code)
}
