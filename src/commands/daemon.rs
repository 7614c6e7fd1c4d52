//! `vigil run --daemon` and `--pidfile`: detaching from the terminal, and the pidfile that
//! says which process is the running agent.
//!
//! # Detaching ([`detach`])
//!
//! One `fork` while the process still has a single thread (before the actix runtime or any
//! other thread exists), then `setsid` (a new session, no controlling terminal), `chdir /`
//! (no mount point kept busy) and stdin/stdout/stderr on `/dev/null`. The umask is kept. The
//! parent does not exit at once: it waits on a pipe until the daemon says `ok` (the status
//! endpoint is bound and the pidfile written) or sends the error that stopped it, and exits
//! 0 or 1 accordingly, so a start that fails is seen by whoever ran `vigil run --daemon`.
//! Everything that can be checked before the fork (the config, the log file, the data dir,
//! the pidfile) is checked before it, and reported on the terminal.
//!
//! # The pidfile ([`Pidfile`])
//!
//! Written atomically (a temporary file renamed over the path) once the status endpoint is
//! up, holding the process id and a newline; removed when the process ends normally
//! (SIGTERM, SIGINT, or a fatal error after start). A pidfile whose process is alive and
//! runs the same program stops a second agent from starting ([`check_pidfile`]); any other
//! pidfile is stale (left by a killed agent, or by one before a reboot) and is replaced.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// What an existing pidfile said, when it did not stop the start.
#[derive(Debug, PartialEq, Eq)]
pub enum Previous {
    /// No pidfile.
    None,
    /// A pidfile whose process is gone (or whose content is not a pid), to be replaced.
    Stale(String),
}

/// Refuses when `path` names a live vigil; otherwise says whether a stale pidfile is there.
pub fn check_pidfile(path: &Path) -> anyhow::Result<Previous> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Previous::None),
        Err(e) => return Err(e).with_context(|| format!("cannot read pidfile {}", path.display())),
    };
    let content = text.trim().to_string();
    if let Ok(pid) = content.parse::<i32>() {
        if pid > 0 && pid as u32 != std::process::id() && is_vigil(pid) {
            bail!("vigil is already running as pid {pid} (pidfile {}); not starting another", path.display());
        }
    }
    Ok(Previous::Stale(content))
}

/// Whether `pid` is alive and runs a program of our name (so a pid reused by another
/// program after a crash or a reboot does not block the start forever).
fn is_vigil(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    match (comm(&pid.to_string()), comm("self")) {
        (Some(theirs), Some(ours)) => theirs == ours,
        // Without /proc, trust the pid.
        _ => true,
    }
}

/// A pidfile this process wrote; removed when dropped (if it still names this process).
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    pid: u32,
}

impl Pidfile {
    /// Writes `pid` to `path` atomically: a temporary file in the same directory, renamed.
    pub fn write(path: &Path, pid: u32) -> anyhow::Result<Pidfile> {
        let name =
            path.file_name().with_context(|| format!("pidfile {} has no file name", path.display()))?;
        let tmp = path.with_file_name(format!(".{}.{pid}.tmp", name.to_string_lossy()));
        let result = (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(format!("{pid}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write pidfile {}", path.display()));
        }
        Ok(Pidfile { path: path.to_path_buf(), pid })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        // Another agent may have replaced it meanwhile (after deciding ours was stale).
        let ours = std::fs::read_to_string(&self.path).is_ok_and(|t| t.trim() == self.pid.to_string());
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(pidfile = %self.path.display(), error = %e, "Cannot remove the pidfile.");
            }
        }
    }
}

/// The daemon's end of the start-up pipe: tells the waiting parent how the start went.
#[derive(Debug)]
pub struct Readiness(File);

impl Readiness {
    /// The start succeeded; the parent exits 0.
    pub fn ready(mut self) {
        let _ = writeln!(self.0, "ok {}", std::process::id());
    }

    /// The start failed with `error`; the parent prints it and exits 1.
    pub fn failed(mut self, error: &str) {
        let _ = write!(self.0, "error {error}");
    }
}

/// Forks into the background. Returns in the daemon only; the parent waits for the
/// daemon's [`Readiness`] and exits with 0 or 1. `log` is named in the parent's message
/// when the daemon dies without a word.
pub fn detach(log: &Path) -> anyhow::Result<Readiness> {
    // fork copies only the calling thread: anything another thread held (a lock, a buffer)
    // would be lost in the child.
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
    anyhow::ensure!(threads == 1, "cannot detach: {threads} threads are already running (a bug)");
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors; close-on-exec keeps them from the collector.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create the start-up pipe");
    }
    // SAFETY: both descriptors were just created and are owned here only.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process is single-threaded (checked above), so the child is a full copy.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("cannot fork"),
        0 => {
            drop(rx);
            become_daemon()?;
            Ok(Readiness(File::from(tx)))
        }
        child => {
            drop(tx);
            std::process::exit(wait_for_daemon(File::from(rx), child, log))
        }
    }
}

/// In the child: own session, `/` as working directory, standard streams on /dev/null.
fn become_daemon() -> anyhow::Result<()> {
    // SAFETY: setsid has no preconditions; it fails only for a process group leader, which
    // a freshly forked child is not.
    if unsafe { libc::setsid() } == -1 {
        return Err(std::io::Error::last_os_error()).context("setsid failed");
    }
    std::env::set_current_dir("/").context("cannot chdir to /")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("cannot open /dev/null")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open until the end.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } == -1 {
            return Err(std::io::Error::last_os_error()).context("cannot redirect stdio to /dev/null");
        }
    }
    Ok(())
}

/// In the parent: the daemon's verdict as an exit code (printing the error, if any).
fn wait_for_daemon(mut rx: File, child: libc::pid_t, log: &Path) -> i32 {
    let mut said = String::new();
    let _ = rx.read_to_string(&mut said);
    if said.starts_with("ok") {
        return 0;
    }
    if let Some(error) = said.strip_prefix("error ") {
        eprintln!("vigil: {error}");
        return 1;
    }
    let mut status = 0;
    // SAFETY: reaping our own child if it has ended; WNOHANG never blocks.
    let how = match unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } {
        p if p == child && libc::WIFSIGNALED(status) => {
            format!(" (killed by {})", vigil_actors::signals::signal_name(libc::WTERMSIG(status)))
        }
        p if p == child && libc::WIFEXITED(status) => format!(" (exit code {})", libc::WEXITSTATUS(status)),
        _ => String::new(),
    };
    eprintln!(
        "vigil: the daemon (pid {child}) ended during start-up{how} without saying why; see {}",
        log.display()
    );
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_is_written_whole_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vigil.pid");
        let pf = Pidfile::write(&path, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        drop(pf);
        assert!(!path.exists());
    }

    #[test]
    fn a_pidfile_taken_over_by_another_agent_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vigil.pid");
        let pf = Pidfile::write(&path, 4242).unwrap();
        std::fs::write(&path, "4343\n").unwrap();
        drop(pf);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4343\n");
    }

    #[test]
    fn dead_and_foreign_pids_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vigil.pid");
        assert_eq!(check_pidfile(&path).unwrap(), Previous::None);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&path, format!("{dead}\n")).unwrap();
        assert_eq!(check_pidfile(&path).unwrap(), Previous::Stale(dead.to_string()));
        // pid 1 is alive, but it is not this program.
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(check_pidfile(&path).unwrap(), Previous::Stale("1".into()));
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(check_pidfile(&path).unwrap(), Previous::Stale("garbage".into()));
    }

    #[test]
    fn a_live_process_of_the_same_program_counts() {
        assert!(is_vigil(std::process::id() as i32));
    }
}
