//! [`ChildProcess`]: one incarnation of the collector child, from spawn to reaped exit.
//!
//! It owns the three pipes and the process handle. Three tasks run for the whole life of the
//! child, so the child can never block on a full pipe:
//!
//! * stdout: bytes go through the frame [`Decoder`]; messages are forwarded to the
//!   Supervisor, non-frame text is logged as collector output;
//! * stderr: every chunk is appended to the byte-exact tail ([`StderrTail`]) kept for the
//!   crash report, and every line is logged as collector output;
//! * wait: the exit status (code, or signal and core-dump flag).
//!
//! [`ChildExited`] is sent once the status is known *and* both pipes reached EOF, so the
//! crash report holds the last byte the child wrote and every frame it sent came before the
//! exit event. A grandchild holding a pipe open cannot delay the report by more than
//! [`PIPE_DRAIN_GRACE`]. Stdout EOF while the process stays alive becomes
//! [`ChildStdoutClosed`] after [`STDOUT_EOF_GRACE`] (a dying process closes stdout a moment
//! before the kernel reports its exit, and that is not this event).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::ipc::{self, Decoded, Decoder, FromCollector, ToCollector};

/// How long to wait for the pipes after the exit status is known.
pub const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long stdout may be closed before a still-running child counts as having closed it.
pub const STDOUT_EOF_GRACE: Duration = Duration::from_millis(500);
/// Frames queued for the child's stdin before new ones are dropped (a hung child stops
/// reading; its heartbeats are then lost anyway).
const STDIN_QUEUE: usize = 64;
/// Log target of everything the collector writes.
pub const OUTPUT_TARGET: &str = "collector";

/// How to start the child.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    pub incarnation: u64,
    pub stderr_tail_bytes: usize,
    /// Give the child a crash socket on fd [`crate::collector::crash_capture::FD`] (the
    /// caller also sets `VIGIL_CRASH_FD`); what its crash handler writes there arrives in
    /// [`ChildExited::crash_capture`].
    pub crash_pipe: bool,
    /// Take the stack of a fatal signal from outside, with this helper (`vigil
    /// stack-dump`), when the crash handler asks for it.
    pub ptrace: Option<PtraceHelper>,
}

/// How the crash handler's request for a capture from outside is served.
#[derive(Debug, Clone)]
pub struct PtraceHelper {
    /// The `vigil` binary whose `stack-dump` takes the stack.
    pub program: PathBuf,
    /// When ptrace fails, let the handler unwind in process (`auto`); otherwise the report
    /// gets the failure as its `stack_error` (`ptrace`).
    pub fallback: bool,
}

/// How long the helper may take to capture a dying thread's stack; past it the handler is
/// told to go on without it.
pub const PTRACE_WITHIN: Duration = Duration::from_millis(1000);

/// The most a crash capture may hold (the frames and the dead process's memory map).
const CRASH_CAPTURE_MAX: usize = 4 << 20;

/// How the process ended, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
}

impl From<std::process::ExitStatus> for ExitInfo {
    fn from(s: std::process::ExitStatus) -> Self {
        Self { code: s.code(), signal: s.signal(), core_dumped: s.core_dumped() }
    }
}

/// The last `cap` bytes written to stderr, byte-exact, plus the total count.
#[derive(Debug)]
pub struct StderrTail {
    buf: VecDeque<u8>,
    cap: usize,
    total: u64,
}

impl StderrTail {
    pub fn new(cap: usize) -> Self {
        Self { buf: VecDeque::with_capacity(cap.min(64 * 1024)), cap, total: 0 }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if bytes.len() >= self.cap {
            self.buf.clear();
            self.buf.extend(&bytes[bytes.len() - self.cap..]);
            return;
        }
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(bytes);
    }

    pub fn bytes(&self) -> Vec<u8> {
        let (a, b) = self.buf.as_slices();
        [a, b].concat()
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

/// A message from the child, forwarded to the Supervisor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChildMessage {
    pub incarnation: u64,
    pub received: Instant,
    pub msg: FromCollector,
}

/// The child's stdout reached EOF and the process is still running.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChildStdoutClosed {
    pub incarnation: u64,
    pub pid: u32,
}

/// The child is gone and reaped; everything it wrote has been read.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChildExited {
    pub incarnation: u64,
    pub pid: u32,
    pub exit: ExitInfo,
    /// When the kernel reported the exit (before the pipes were drained).
    pub exited_at: Instant,
    pub uptime: Duration,
    pub stderr_tail: Vec<u8>,
    pub stderr_total: u64,
    /// The raw capture of the crash (empty when nothing): what `vigil stack-dump` took from
    /// outside, or what the collector's crash handler wrote to the crash socket.
    pub crash_capture: Vec<u8>,
    /// Why the capture from outside failed, when it did.
    pub capture_error: Option<String>,
}

/// Where a ChildProcess reports.
#[derive(Clone)]
pub struct ChildEvents {
    pub message: Recipient<ChildMessage>,
    pub stdout_closed: Recipient<ChildStdoutClosed>,
    pub exited: Recipient<ChildExited>,
}

/// Send a frame to the child's stdin.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendToChild(pub ToCollector);

/// Close the child's stdin: the collector's signal to flush and exit 0.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseStdin;

/// SIGKILL the child if it has not been reaped yet.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill;

#[derive(Message)]
#[rtype(result = "()")]
enum PipeEvent {
    StdoutEof,
    StderrEof,
    CrashEof(Vec<u8>, Option<String>),
    Exited(ExitInfo, Instant),
    WaitFailed(String),
}

/// One incarnation of the collector process.
pub struct ChildProcess {
    incarnation: u64,
    pid: u32,
    started: Instant,
    events: ChildEvents,
    /// Dropping this closes the child's stdin (the writer task ends and drops the pipe).
    stdin_tx: Option<mpsc::Sender<Vec<u8>>>,
    tail: Rc<RefCell<StderrTail>>,
    /// Set by the wait task in the same poll that reaped the child, so `Kill` never signals
    /// a pid that may already belong to another process.
    reaped: Rc<Cell<bool>>,
    exit: Option<(ExitInfo, Instant)>,
    stdout_eof: bool,
    stderr_eof: bool,
    /// The crash socket reached EOF (true from the start without one).
    crash_eof: bool,
    crash_capture: Vec<u8>,
    capture_error: Option<String>,
    ptrace: Option<PtraceHelper>,
    reported: bool,
    /// Spawn parts handed to `started`.
    pending: Option<Pending>,
}

struct Pending {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    crash: Option<tokio::net::UnixStream>,
}

impl ChildProcess {
    /// Spawns the child on the calling thread and starts the actor.
    ///
    /// Call this from a thread that lives as long as the process (the System's main
    /// thread): PR_SET_PDEATHSIG fires when the *thread* that forked the child exits.
    pub fn spawn(spec: SpawnSpec, events: ChildEvents) -> std::io::Result<(Addr<ChildProcess>, u32)> {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // A socket rather than a pipe: the handler may ask for a capture from outside and
        // wait for the answer on it. Both ends are close-on-exec.
        let crash = if spec.crash_pipe { Some(std::os::unix::net::UnixStream::pair()?) } else { None };
        let crash_w = crash.as_ref().map(|(_, w)| std::os::fd::AsRawFd::as_raw_fd(w));
        // SAFETY: only async-signal-safe calls (prctl, getppid, setpgid) and no allocation
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the supervisor, even if it is SIGKILLed.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    // No allocation between fork and exec: a plain errno.
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                // Own process group: a Ctrl-C at the terminal reaches the supervisor only,
                // which then stops the collector gracefully.
                libc::setpgid(0, 0);
                // The crash socket on its fixed descriptor (dup2 clears close-on-exec; on the
                // same number it must be cleared by hand).
                if let Some(w) = crash_w {
                    let target = crate::collector::crash_capture::FD;
                    if w == target {
                        libc::fcntl(w, libc::F_SETFD, 0);
                    } else if libc::dup2(w, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        // Our copy of the write end goes now: the pipe reads EOF when the child is gone.
        let crash = match crash {
            Some((r, w)) => {
                drop(w);
                r.set_nonblocking(true)?;
                Some(tokio::net::UnixStream::from_std(r)?)
            }
            None => None,
        };
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("child pipes missing after spawn"));
        };
        let actor = ChildProcess {
            incarnation: spec.incarnation,
            pid,
            started: Instant::now(),
            events,
            stdin_tx: None,
            tail: Rc::new(RefCell::new(StderrTail::new(spec.stderr_tail_bytes))),
            reaped: Rc::new(Cell::new(false)),
            exit: None,
            stdout_eof: false,
            stderr_eof: false,
            crash_eof: crash.is_none(),
            crash_capture: Vec::new(),
            capture_error: None,
            ptrace: spec.ptrace,
            reported: false,
            pending: Some(Pending { child, stdin, stdout, stderr, crash }),
        };
        Ok((actor.start(), pid))
    }

    fn maybe_report(&mut self, ctx: &mut Context<Self>, force: bool) {
        if self.reported {
            return;
        }
        let Some((exit, exited_at)) = self.exit else { return };
        if !(force || (self.stdout_eof && self.stderr_eof && self.crash_eof)) {
            return;
        }
        self.reported = true;
        let tail = self.tail.borrow();
        self.events.exited.do_send(ChildExited {
            incarnation: self.incarnation,
            pid: self.pid,
            exit,
            exited_at,
            uptime: exited_at.duration_since(self.started),
            stderr_tail: tail.bytes(),
            stderr_total: tail.total(),
            crash_capture: std::mem::take(&mut self.crash_capture),
            capture_error: self.capture_error.take(),
        });
        ctx.stop();
    }
}

impl Actor for ChildProcess {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(Pending { mut child, mut stdin, stdout, stderr, crash }) = self.pending.take() else {
            return;
        };
        let me = ctx.address();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
        self.stdin_tx = Some(tx);
        actix_rt::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if stdin.write_all(&frame).await.is_err() {
                    break;
                }
            }
            // Dropping `stdin` here closes the pipe.
        });

        let (inc, pid, message) = (self.incarnation, self.pid, self.events.message.clone());
        let out_addr = me.clone();
        actix_rt::spawn(async move {
            read_stdout(stdout, inc, pid, message).await;
            out_addr.do_send(PipeEvent::StdoutEof);
        });

        let tail = self.tail.clone();
        let err_addr = me.clone();
        actix_rt::spawn(async move {
            read_stderr(stderr, pid, tail).await;
            err_addr.do_send(PipeEvent::StderrEof);
        });

        if let Some(crash) = crash {
            let crash_addr = me.clone();
            let (pid, ptrace) = (self.pid, self.ptrace.clone());
            actix_rt::spawn(async move {
                let (got, error) = read_crash(crash, pid, ptrace).await;
                crash_addr.do_send(PipeEvent::CrashEof(got, error));
            });
        }

        let reaped = self.reaped.clone();
        actix_rt::spawn(async move {
            let ev = match child.wait().await {
                Ok(status) => {
                    reaped.set(true);
                    PipeEvent::Exited(status.into(), Instant::now())
                }
                Err(e) => PipeEvent::WaitFailed(e.to_string()),
            };
            me.do_send(ev);
        });
    }
}

/// Reads the crash socket to EOF (at most [`CRASH_CAPTURE_MAX`]). When the handler asks for
/// a capture from outside (its first line is
/// [`crate::collector::crash_capture::ASK_PTRACE`]), runs the helper while it waits, and
/// answers whether it got the stack; the helper's capture then replaces whatever follows.
async fn read_crash(
    mut sock: tokio::net::UnixStream,
    pid: u32,
    ptrace: Option<PtraceHelper>,
) -> (Vec<u8>, Option<String>) {
    use crate::collector::crash_capture::{ASK_PTRACE, GIVE_UP, TAKEN, UNWIND_HERE};
    let mut got = Vec::new();
    let mut taken: Option<Vec<u8>> = None;
    let mut error = None;
    let mut asked = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = CRASH_CAPTURE_MAX.saturating_sub(got.len());
                got.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        if asked || !got.starts_with(ASK_PTRACE.as_bytes()) {
            continue;
        }
        let Some(nl) = got.iter().position(|&b| b == b'\n') else { continue };
        asked = true;
        let line = String::from_utf8_lossy(&got[..nl]).into_owned();
        got.drain(..=nl);
        let answer = match &ptrace {
            None => UNWIND_HERE,
            Some(h) => {
                match crate::supervisor::stack::dump_crashed_thread(&h.program, pid, &line, PTRACE_WITHIN)
                    .await
                {
                    Ok(capture) => {
                        taken = Some(capture);
                        TAKEN
                    }
                    Err(e) if h.fallback => {
                        tracing::warn!(pid, error = %e, "Could not take the dying collector's stack with ptrace; it unwinds itself instead (in_process).");
                        UNWIND_HERE
                    }
                    Err(e) => {
                        error = Some(e);
                        GIVE_UP
                    }
                }
            }
        };
        let _ = sock.write_all(&[answer]).await;
    }
    (taken.unwrap_or(got), error)
}

/// Frames from the collector that were dropped, by why: oversized, bad checksum, a body
/// that is not a message. For `/status` `collector.dropped_frames` and `/metrics`.
static DROPPED_FRAMES: [std::sync::atomic::AtomicU64; 3] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 3];

/// The frames dropped since start, by reason (keys end in their unit).
pub fn dropped_frames() -> std::collections::BTreeMap<&'static str, u64> {
    use std::sync::atomic::Ordering::Relaxed;
    std::collections::BTreeMap::from([
        ("oversized_frames", DROPPED_FRAMES[0].load(Relaxed)),
        ("bad_checksum_frames", DROPPED_FRAMES[1].load(Relaxed)),
        ("undecodable_frames", DROPPED_FRAMES[2].load(Relaxed)),
    ])
}

fn count_dropped_frame(e: &ipc::FrameError) {
    let i = match e {
        ipc::FrameError::Oversized { .. } => 0,
        ipc::FrameError::BadChecksum => 1,
        ipc::FrameError::BadBody(_) => 2,
    };
    DROPPED_FRAMES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

async fn read_stdout(
    mut out: impl AsyncRead + Unpin,
    incarnation: u64,
    pid: u32,
    to: Recipient<ChildMessage>,
) {
    let mut dec = Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dec.feed(&buf[..n]);
        while let Some(item) = dec.next_item::<FromCollector>() {
            match item {
                Decoded::Message(msg) => {
                    to.do_send(ChildMessage { incarnation, received: Instant::now(), msg })
                }
                Decoded::Text(t) => log_output(pid, "stdout", &t),
                Decoded::Invalid(e) => {
                    count_dropped_frame(&e);
                    tracing::warn!(pid, incarnation, error = %e, "Bad frame from the collector; skipped (counted in collector.dropped_frames).")
                }
            }
        }
    }
    if let Some(rest) = dec.finish() {
        log_output(pid, "stdout", &rest);
    }
}

async fn read_stderr(mut err: impl AsyncRead + Unpin, pid: u32, tail: Rc<RefCell<StderrTail>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match err.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        tail.borrow_mut().push(chunk);
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&rest[..i]);
            log_output(pid, "stderr", &line);
            line.clear();
            rest = &rest[i + 1..];
        }
        line.extend_from_slice(rest);
        while line.len() >= ipc::DEFAULT_MAX_LINE {
            log_output(pid, "stderr", &line[..ipc::DEFAULT_MAX_LINE]);
            line.drain(..ipc::DEFAULT_MAX_LINE);
        }
    }
    if !line.is_empty() {
        log_output(pid, "stderr", &line);
    }
}

/// Logs one line of collector output. The collector filtered its own log by level already,
/// and a crash trace has no level, so this target is always enabled (see the binary's
/// logging setup).
fn log_output(pid: u32, stream: &'static str, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    tracing::info!(target: OUTPUT_TARGET, pid, stream, "{text}");
}

impl Handler<PipeEvent> for ChildProcess {
    type Result = ();

    fn handle(&mut self, ev: PipeEvent, ctx: &mut Context<Self>) {
        match ev {
            PipeEvent::StdoutEof => {
                self.stdout_eof = true;
                if self.exit.is_none() {
                    ctx.run_later(STDOUT_EOF_GRACE, |this, _| {
                        if this.exit.is_none() {
                            this.events
                                .stdout_closed
                                .do_send(ChildStdoutClosed { incarnation: this.incarnation, pid: this.pid });
                        }
                    });
                }
            }
            PipeEvent::StderrEof => self.stderr_eof = true,
            PipeEvent::CrashEof(bytes, error) => {
                self.crash_eof = true;
                self.crash_capture = bytes;
                self.capture_error = error;
            }
            PipeEvent::Exited(info, at) => {
                self.exit = Some((info, at));
                self.stdin_tx = None;
                ctx.run_later(PIPE_DRAIN_GRACE, |this, ctx| {
                    if !this.reported {
                        tracing::warn!(
                            pid = this.pid,
                            "Collector exited but its pipes stayed open (a grandchild holds them?); reporting without waiting."
                        );
                    }
                    this.maybe_report(ctx, true)
                });
            }
            PipeEvent::WaitFailed(e) => {
                // Cannot happen for our own child short of a kernel oddity; kill it and report
                // an end with unknown status rather than keep a child we cannot watch.
                tracing::error!(pid = self.pid, error = %e, "Cannot wait for the collector; killing it.");
                self.kill();
                self.exit = Some((ExitInfo { code: None, signal: None, core_dumped: false }, Instant::now()));
                self.stdin_tx = None;
                ctx.run_later(PIPE_DRAIN_GRACE, |this, ctx| this.maybe_report(ctx, true));
            }
        }
        self.maybe_report(ctx, false);
    }
}

impl ChildProcess {
    fn kill(&self) {
        if !self.reaped.get() && self.pid != 0 {
            // SAFETY: the pid is ours and not yet reaped, so it cannot have been reused.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

impl Handler<SendToChild> for ChildProcess {
    type Result = ();

    fn handle(&mut self, SendToChild(msg): SendToChild, _: &mut Context<Self>) {
        let Some(tx) = &self.stdin_tx else { return };
        match ipc::encode(&msg) {
            Ok(frame) => {
                if tx.try_send(frame).is_err() {
                    tracing::debug!(pid = self.pid, "Collector stdin queue full; frame dropped.");
                }
            }
            Err(e) => tracing::error!(error = %e, "Cannot encode a frame for the collector."),
        }
    }
}

impl Handler<CloseStdin> for ChildProcess {
    type Result = ();

    fn handle(&mut self, _: CloseStdin, _: &mut Context<Self>) {
        self.stdin_tx = None;
    }
}

/// Ask the collector to write every thread's stack to its crash socket
/// ([`crate::collector::crash_capture::dump_signal`]): a hang's capture where ptrace is not
/// used.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DumpThreads;

impl Handler<DumpThreads> for ChildProcess {
    type Result = ();

    fn handle(&mut self, _: DumpThreads, _: &mut Context<Self>) {
        if !self.reaped.get() && self.pid != 0 {
            // SAFETY: the pid is ours and not yet reaped, so it cannot have been reused.
            unsafe { libc::kill(self.pid as libc::pid_t, crate::collector::crash_capture::dump_signal()) };
        }
    }
}

impl Handler<Kill> for ChildProcess {
    type Result = ();

    fn handle(&mut self, _: Kill, _: &mut Context<Self>) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::StderrTail;

    #[test]
    fn tail_keeps_exactly_the_last_bytes() {
        let mut t = StderrTail::new(10);
        t.push(b"0123");
        t.push(b"456789ab");
        assert_eq!(t.bytes(), b"23456789ab");
        t.push(b"cdefghijklmnop");
        assert_eq!(t.bytes(), b"ghijklmnop");
        assert_eq!(t.total(), 26);
        let mut z = StderrTail::new(0);
        z.push(b"abc");
        assert!(z.bytes().is_empty());
    }
}
