//! The systemd notification protocol (`sd_notify(3)`), without libsystemd: one datagram of
//! `KEY=VALUE` lines to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for
//! the abstract namespace).
//!
//! The supervisor sends `READY=1` once the first collector has answered a heartbeat,
//! `WATCHDOG=1` every half `$WATCHDOG_USEC` from a timer on its own actor (so a supervisor
//! whose event loop is stuck stops feeding the watchdog and systemd restarts it), `STATUS=…`
//! when the collector's state changes, and `STOPPING=1` when asked to stop. Without
//! `$NOTIFY_SOCKET` nothing is sent and nothing fails.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where the notifications go, and the watchdog period systemd asked for.
#[derive(Debug)]
pub struct SdNotify {
    socket: UnixDatagram,
    target: Target,
    watchdog: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// Linux abstract namespace (`@name`, sent with a leading NUL byte).
    Abstract(Vec<u8>),
}

impl SdNotify {
    /// From the environment of this process: `None` when `$NOTIFY_SOCKET` is unset or empty.
    /// `pid` is this process's id, matched against `$WATCHDOG_PID` (a watchdog meant for
    /// another process is not ours to feed).
    pub fn from_env(pid: u32) -> io::Result<Option<SdNotify>> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(socket) = var("NOTIFY_SOCKET") else { return Ok(None) };
        let watchdog = watchdog_period(var("WATCHDOG_USEC").as_deref(), var("WATCHDOG_PID").as_deref(), pid);
        SdNotify::new(&socket, watchdog).map(Some)
    }

    /// To the socket named `socket` (a path or `@abstract`), with the given watchdog period.
    pub fn new(socket: &str, watchdog: Option<Duration>) -> io::Result<SdNotify> {
        let target = match socket.strip_prefix('@') {
            Some(name) => Target::Abstract(name.as_bytes().to_vec()),
            None if socket.starts_with('/') => Target::Path(socket.into()),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET={socket}: neither an absolute path nor @abstract"),
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        // A full receive queue must not stall the supervisor: the message is dropped instead.
        socket.set_nonblocking(true)?;
        Ok(SdNotify { socket, target, watchdog })
    }

    /// How often `WATCHDOG=1` is due (half of `WATCHDOG_USEC`), if systemd wants it.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (`KEY=VALUE` lines).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            Target::Path(p) => self.socket.send_to(state.as_bytes(), p).map(drop),
            Target::Abstract(name) => {
                #[cfg(target_os = "linux")]
                {
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    self.socket.send_to_addr(state.as_bytes(), &addr).map(drop)
                }
                #[cfg(not(target_os = "linux"))]
                {
                    let _ = name;
                    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets are Linux-only"))
                }
            }
        }
    }

    /// Like [`SdNotify::notify`], logging a failure instead of returning it.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            let what = state.lines().next().unwrap_or_default();
            tracing::warn!(error = %e, message = what, "Cannot notify systemd.");
        }
    }
}

/// Half of `WATCHDOG_USEC` when it is a positive number and `WATCHDOG_PID` is unset or `pid`.
fn watchdog_period(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<Duration> {
    if for_pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(pid)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_this_pid() {
        assert_eq!(watchdog_period(Some("30000000"), None, 5), Some(Duration::from_secs(15)));
        assert_eq!(watchdog_period(Some("30000000"), Some("5"), 5), Some(Duration::from_secs(15)));
        assert_eq!(watchdog_period(Some("30000000"), Some("6"), 5), None);
        assert_eq!(watchdog_period(Some("0"), None, 5), None);
        assert_eq!(watchdog_period(Some("soon"), None, 5), None);
        assert_eq!(watchdog_period(None, None, 5), None);
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = SdNotify::new(path.to_str().unwrap(), None).unwrap();
        n.notify("READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("vigil-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        SdNotify::new(&format!("@{name}"), None).unwrap().notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn relative_socket_names_are_refused() {
        assert!(SdNotify::new("notify.sock", None).is_err());
    }
}
