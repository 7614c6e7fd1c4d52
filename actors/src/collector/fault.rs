//! Fault injection for the collector child: `VIGIL_FAULT=KIND[@WHEN][xN]` (CONTRACT §8).
//!
//! Every fault is the real thing, not a simulation of its symptoms: `segv` writes through an
//! unmapped address so the kernel delivers SIGSEGV, `abort` calls abort(3), `panic` is a Rust
//! panic that is not caught, `hang` blocks the actor thread, `close-stdout` points fd 1 at
//! /dev/null so the supervisor's end of the pipe reads EOF while the process lives on.

use std::io::Write;
use std::time::Duration;

/// What goes wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    Segv,
    /// An invalid memory access inside libc (`strlen` on a bad pointer).
    SegvLibc,
    /// Unbounded recursion into the stack's guard page.
    StackOverflow,
    /// Allocates and touches memory until the kernel's OOM killer ends it (only under a
    /// memory limit).
    Oom,
    Abort,
    Panic,
    Hang,
    Exit(i32),
    Garbage,
    StderrFlood(u64),
    CloseStdout,
}

/// When it goes wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultWhen {
    /// This long after the collector started.
    After(Duration),
    /// During the named collector's next collection.
    Collector(String),
}

/// A parsed `VIGIL_FAULT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub when: FaultWhen,
    /// Only incarnations `1..=n` are affected; `None` means every incarnation.
    pub incarnations: Option<u64>,
}

impl Fault {
    /// Reads `VIGIL_FAULT`; `Ok(None)` when unset or empty.
    pub fn from_env() -> Result<Option<Fault>, String> {
        match std::env::var("VIGIL_FAULT") {
            Ok(v) if !v.trim().is_empty() => Fault::parse(v.trim()).map(Some),
            _ => Ok(None),
        }
    }

    /// Parses `KIND[@WHEN][xN]`.
    pub fn parse(spec: &str) -> Result<Fault, String> {
        let err = |why: &str| format!("VIGIL_FAULT={spec:?}: {why}");
        // `xN` is a suffix; KIND and WHEN may themselves contain `x` (e.g. `exit`), so only a
        // trailing `x<digits>` counts.
        let (body, incarnations) = match spec.rfind('x') {
            Some(i) if i + 1 < spec.len() && spec[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
                let n: u64 = spec[i + 1..].parse().map_err(|_| err("xN: N is not a number"))?;
                (&spec[..i], Some(n))
            }
            _ => (spec, None),
        };
        let (kind, when) = match body.split_once('@') {
            Some((k, w)) => (k, Some(w)),
            None => (body, None),
        };
        let kind = match kind.split_once(':') {
            None => match kind {
                "segv" => FaultKind::Segv,
                "segv-libc" => FaultKind::SegvLibc,
                "stack-overflow" => FaultKind::StackOverflow,
                "oom" => FaultKind::Oom,
                "abort" => FaultKind::Abort,
                "panic" => FaultKind::Panic,
                "hang" => FaultKind::Hang,
                "garbage" => FaultKind::Garbage,
                "close-stdout" => FaultKind::CloseStdout,
                other => return Err(err(&format!("unknown fault kind `{other}`"))),
            },
            Some(("exit", code)) => {
                FaultKind::Exit(code.parse().map_err(|_| err("exit:CODE needs an integer code"))?)
            }
            Some(("stderr-flood", n)) => {
                FaultKind::StderrFlood(n.parse().map_err(|_| err("stderr-flood:BYTES needs a byte count"))?)
            }
            Some((other, _)) => return Err(err(&format!("unknown fault kind `{other}`"))),
        };
        let when = match when {
            None => FaultWhen::After(Duration::ZERO),
            Some(w) => match w.strip_prefix("collector:") {
                Some(name) if !name.is_empty() => FaultWhen::Collector(name.to_string()),
                Some(_) => return Err(err("collector:NAME needs a name")),
                None => {
                    let secs: f64 = w.parse().map_err(|_| err("WHEN is SECS or collector:NAME"))?;
                    if !(secs.is_finite() && secs >= 0.0) {
                        return Err(err("WHEN seconds must be 0 or more"));
                    }
                    FaultWhen::After(Duration::from_secs_f64(secs))
                }
            },
        };
        Ok(Fault { kind, when, incarnations })
    }

    /// Whether this fault applies to the given incarnation (1-based).
    pub fn applies_to(&self, incarnation: u64) -> bool {
        self.incarnations.is_none_or(|n| incarnation <= n)
    }
}

/// A real invalid memory access: a write to an address in the never-mapped first page.
/// Rust's own SIGSEGV handler only handles stack-guard hits; for this address it restores
/// the default action and the fault re-executes, so the process dies of SIGSEGV.
pub fn segv() -> ! {
    let addr = 16usize as *mut u8;
    // SAFETY: deliberately unsound; this is the fault being injected.
    unsafe { std::ptr::write_volatile(addr, 1) };
    // Unreachable unless page zero is mapped; then die the same way.
    unsafe { libc::raise(libc::SIGSEGV) };
    std::process::abort()
}

/// A real invalid memory access inside a C library function called from Rust: libc's
/// `strlen` reading from an address in the never-mapped first page. The stack shows libc's
/// frame innermost, with this function right below it.
#[inline(never)]
pub fn segv_libc() -> ! {
    let bad = 16usize as *const libc::c_char;
    // SAFETY: deliberately unsound; this is the fault being injected.
    let n = unsafe { libc::strlen(std::hint::black_box(bad)) };
    std::hint::black_box(n);
    unsafe { libc::raise(libc::SIGSEGV) };
    std::process::abort()
}

/// Unbounded recursion until the thread's stack guard page: SIGSEGV on the guard page (the
/// crash handler runs on its alternate stack). Each level keeps a buffer live so the
/// compiler can neither turn it into a loop nor shrink the frames away.
#[inline(never)]
#[allow(unconditional_recursion)] // the point: it never returns
pub fn stack_overflow(depth: u64) -> u64 {
    let buf = std::hint::black_box([depth as u8; 512]);
    let below = stack_overflow(std::hint::black_box(depth + 1));
    below + u64::from(buf[(depth % 512) as usize])
}

/// Allocates memory 16 MiB at a time and touches every page (so it is really resident),
/// never freeing it, until the kernel kills the process: run it only under a memory limit
/// (a memory cgroup), where the OOM killer picks this process.
pub fn oom() -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 16 << 20];
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        held.push(std::hint::black_box(chunk));
    }
}

/// An uncaught panic on the main thread: the standard hook prints the message (and the
/// backtrace when RUST_BACKTRACE is set) to stderr, and the exit code is 101, as Rust does
/// for a panic that unwinds out of `main`. Done here because panics inside tokio tasks are
/// caught by the runtime and would never end the process.
pub fn panic_now() -> ! {
    let _ = std::panic::catch_unwind(|| panic_now_here());
    std::process::exit(101)
}

/// The panic itself, in a function of its own: a closure would be inlined into std's
/// `catch_unwind`, and the innermost frame of the report would then be named after std's
/// function rather than vigil's.
#[inline(never)]
fn panic_now_here() -> ! {
    panic!("VIGIL_FAULT=panic: injected panic")
}

/// Blocks the calling thread forever: the actor system on it stops answering.
pub fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Writes exactly `bytes` bytes of numbered lines to stderr (each line 64 bytes, the last one
/// cut to fit), so a reader can check that a tail is continuous.
pub fn flood_stderr(bytes: u64) {
    let mut err = std::io::stderr().lock();
    let mut left = bytes;
    let mut n = 0u64;
    let mut chunk = Vec::with_capacity(64 * 1024);
    while left > 0 {
        chunk.clear();
        while left > 0 && chunk.len() < 60 * 1024 {
            n += 1;
            let line = flood_line(n);
            let take = (line.len() as u64).min(left) as usize;
            chunk.extend_from_slice(&line.as_bytes()[..take]);
            left -= take as u64;
        }
        if err.write_all(&chunk).is_err() {
            return;
        }
    }
    let _ = err.flush();
}

/// Line `n` (1-based) of a stderr flood, 64 bytes with its newline.
pub fn flood_line(n: u64) -> String {
    format!("vigil stderr flood line {n:012} ..........................\n")
}

/// Points fd 1 at /dev/null: the pipe to the supervisor closes, and later writes succeed
/// into nothing (a plain close(1) could let the next open() reuse fd 1).
pub fn close_stdout() {
    let _ = std::io::stdout().flush();
    // SAFETY: plain fd syscalls on a path literal.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::dup2(fd, 1);
            libc::close(fd);
        } else {
            libc::close(1);
        }
    }
}

/// `len` random bytes that are not a frame (their magic would need a matching header CRC).
/// `len` random bytes ending in a newline, then two damaged frames that each cost only
/// themselves: one whose body fails its checksum, one whose body is not a message. The
/// supervisor must log the text, count the frames (`collector.dropped_frames`) and go on.
pub fn garbage(len: usize) -> Vec<u8> {
    use rand::RngExt;
    let mut rng = rand::rng();
    let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    if let Some(last) = v.last_mut() {
        *last = b'\n';
    }
    if let Ok(mut bad_crc) = crate::ipc::encode(&crate::ipc::FromCollector::HeartbeatAck { seq: 0 }) {
        if let Some(b) = bad_crc.get_mut(crate::ipc::HEADER_LEN) {
            *b ^= 0x01;
        }
        v.extend(bad_crc);
    }
    if let Ok(not_a_message) = crate::ipc::encode(&"not a message") {
        v.extend(not_a_message);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_of_the_contract() {
        let f = Fault::parse("segv@1.5x2").unwrap();
        assert_eq!(f.kind, FaultKind::Segv);
        assert_eq!(f.when, FaultWhen::After(Duration::from_millis(1500)));
        assert_eq!(f.incarnations, Some(2));
        assert!(f.applies_to(2) && !f.applies_to(3));

        assert_eq!(Fault::parse("exit:3").unwrap().kind, FaultKind::Exit(3));
        assert_eq!(Fault::parse("exit:3x1").unwrap().incarnations, Some(1));
        assert_eq!(Fault::parse("stderr-flood:3000000").unwrap().kind, FaultKind::StderrFlood(3_000_000));
        assert_eq!(Fault::parse("segv@collector:dns").unwrap().when, FaultWhen::Collector("dns".into()));
        let f = Fault::parse("hang").unwrap();
        assert_eq!(
            (f.kind, f.when, f.incarnations),
            (FaultKind::Hang, FaultWhen::After(Duration::ZERO), None)
        );
        assert_eq!(Fault::parse("close-stdout@0.2").unwrap().kind, FaultKind::CloseStdout);
        assert_eq!(Fault::parse("garbage").unwrap().kind, FaultKind::Garbage);
        assert_eq!(Fault::parse("panic@2x3").unwrap().incarnations, Some(3));
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        for bad in
            ["", "boom", "exit:", "exit:x", "segv@soon", "segv@-1", "stderr-flood:lots", "segv@collector:"]
        {
            let e = Fault::parse(bad).unwrap_err();
            assert!(e.contains("VIGIL_FAULT"), "{bad}: {e}");
        }
    }

    #[test]
    fn flood_lines_are_fixed_width() {
        assert_eq!(flood_line(1).len(), 64);
        assert_eq!(flood_line(999_999_999_999).len(), 64);
    }
}
