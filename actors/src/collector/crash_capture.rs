//! In-process crash capture for the collector child (CONTRACT §6 "Where it died",
//! `supervisor.stack_capture = "in_process"`).
//!
//! A Rust process killed by SIGSEGV prints nothing. [`install`] puts a handler on every fatal
//! signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP) that runs on an alternate stack
//! of its own (so a stack overflow, which faults on the guard page, can still be reported),
//! walks the crashing thread's stack with the unwinder already linked into every Rust binary
//! (`_Unwind_Backtrace`, which steps through the kernel's signal frame into the faulting
//! code), and writes what it found to the crash pipe the supervisor handed down
//! (`VIGIL_CRASH_FD`), never to stderr, so the stderr tail stays byte-exact:
//!
//! ```text
//! VIGIL-CRASH 1
//! signal 11
//! tid 4242
//! pc 0x55d0c0ffee00
//! thread vigil
//! frame 0x55d0c0ffee00
//! frame 0x55d0c0ffe123
//! maps
//! <the contents of /proc/self/maps>
//! end
//! ```
//!
//! Then it re-raises the signal with the default action restored, so the process dies of
//! exactly the signal it got (the supervisor still sees `signaled`, signal 11). Addresses are
//! turned into functions, files and lines by the supervisor's symbolizer (`vigil symbolize`,
//! a short-lived child of the supervisor: symbolizing must not be able to crash it).
//!
//! Everything the handler does is async-signal-safe: raw `read`/`write`/`open` syscalls, a
//! buffer on the (alternate) stack, no allocation, no lock. The unwinder is the one exception
//! the whole industry makes (it may take the loader's lock on its first use): if the crash
//! happened inside the loader itself the handler can block, and the supervisor's heartbeat
//! then reports the collector `unresponsive` instead.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The environment variable naming the crash pipe's file descriptor in the collector.
pub const FD_ENV: &str = "VIGIL_CRASH_FD";
/// The descriptor the supervisor puts the crash pipe on.
pub const FD: i32 = 3;
/// Frames written at most.
pub const MAX_FRAMES: usize = 256;
/// The alternate signal stack of the thread that installs the handler.
const ALT_STACK_BYTES: usize = 256 * 1024;

/// The fatal signals that get a stack.
pub const SIGNALS: [i32; 6] =
    [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT, libc::SIGTRAP];

static CRASH_FD: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    /// Where this thread's last panic happened (`FILE:LINE:COL`), for the code that
    /// catches it.
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records where each panic happens, then lets the previous hook (std's: the message on
/// stderr) run as before: a panic that a collector's guard catches keeps its place in that
/// collector's `last_error`.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(at) = info.location() {
            let at = format!("{}:{}:{}", at.file(), at.line(), at.column());
            PANIC_AT.with(|p| *p.borrow_mut() = Some(at));
        }
        previous(info);
    }));
}

/// The place of this thread's last panic, once.
pub fn take_panic_location() -> Option<String> {
    PANIC_AT.with(|p| p.borrow_mut().take())
}
static ENTERED: AtomicBool = AtomicBool::new(false);

/// Installs the handlers when the supervisor handed down a crash pipe (`VIGIL_CRASH_FD`);
/// returns whether it did. Call it on the thread the collectors run on, before they start:
/// that thread gets a large alternate stack (other threads keep the one std gives them).
pub fn install() -> bool {
    let Some(fd) = std::env::var(FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()) else { return false };
    // SAFETY: fcntl on a descriptor number only queries it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return false;
    }
    CRASH_FD.store(fd, Ordering::SeqCst);
    // SAFETY: mmap of fresh anonymous memory, handed to sigaltstack, never unmapped (the
    // thread it serves lives as long as the process).
    unsafe {
        let stack = libc::mmap(
            std::ptr::null_mut(),
            ALT_STACK_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if stack != libc::MAP_FAILED {
            let ss = libc::stack_t { ss_sp: stack, ss_flags: 0, ss_size: ALT_STACK_BYTES };
            libc::sigaltstack(&ss, std::ptr::null_mut());
        }
        for sig in SIGNALS {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    true
}

/// A line buffer on the stack that writes to the crash pipe when full.
struct Out {
    fd: i32,
    buf: [u8; 1024],
    len: usize,
}

impl Out {
    fn flush(&mut self) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: writing our own buffer to a descriptor.
            let n = unsafe { libc::write(self.fd, self.buf[off..self.len].as_ptr().cast(), self.len - off) };
            if n <= 0 {
                if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                break;
            }
            off += n as usize;
        }
        self.len = 0;
    }

    fn bytes(&mut self, b: &[u8]) {
        for &c in b {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = c;
            self.len += 1;
        }
    }

    fn dec(&mut self, mut n: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&d[i..]);
    }

    fn hex(&mut self, mut n: u64) {
        let mut d = [0u8; 16];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b"0123456789abcdef"[(n & 0xf) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        self.bytes(b"0x");
        self.bytes(&d[i..]);
    }

    /// Copies a file (from /proc) into the output, at most `max` bytes.
    fn file(&mut self, path: &[u8], max: usize) {
        // SAFETY: `path` is NUL-terminated by every caller; plain open/read/close.
        unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return;
            }
            let mut chunk = [0u8; 512];
            let mut copied = 0;
            while copied < max {
                let n = libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len());
                if n <= 0 {
                    break;
                }
                let n = (n as usize).min(max - copied);
                self.bytes(&chunk[..n]);
                copied += n;
            }
            libc::close(fd);
        }
    }
}

/// The program counter where the signal struck.
///
/// SAFETY: `ctx` is the `ucontext_t` the kernel passed to an SA_SIGINFO handler.
unsafe fn fault_pc(ctx: *mut libc::c_void) -> u64 {
    if ctx.is_null() {
        return 0;
    }
    let uc = ctx as *const libc::ucontext_t;
    #[cfg(target_arch = "x86_64")]
    {
        (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] as u64
    }
    #[cfg(target_arch = "aarch64")]
    {
        (*uc).uc_mcontext.pc
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = uc;
        0
    }
}

#[allow(non_camel_case_types)]
type _Unwind_Trace_Fn = extern "C" fn(*mut libc::c_void, *mut libc::c_void) -> libc::c_int;

extern "C" {
    fn _Unwind_Backtrace(trace: _Unwind_Trace_Fn, arg: *mut libc::c_void) -> libc::c_int;
    fn _Unwind_GetIP(ctx: *mut libc::c_void) -> usize;
}

/// The unwinder's callback: one `frame` line per frame, up to [`MAX_FRAMES`].
extern "C" fn on_frame(ctx: *mut libc::c_void, arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `(Out, count)` pair `handler` passed; `ctx` the unwinder's.
    let (out, count) = unsafe { &mut *(arg as *mut (Out, usize)) };
    let ip = unsafe { _Unwind_GetIP(ctx) } as u64;
    if ip == 0 || *count >= MAX_FRAMES + 8 {
        return 5; // _URC_END_OF_STACK: stop
    }
    out.bytes(b"frame ");
    out.hex(ip);
    out.bytes(b"\n");
    *count += 1;
    0 // _URC_NO_REASON: go on
}

extern "C" fn handler(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let fd = CRASH_FD.load(Ordering::SeqCst);
    // A second fatal signal while capturing (the capture itself crashed): just die of it.
    if fd >= 0 && !ENTERED.swap(true, Ordering::SeqCst) {
        let mut state = (Out { fd, buf: [0; 1024], len: 0 }, 0usize);
        let out = &mut state.0;
        out.bytes(b"VIGIL-CRASH 1\nsignal ");
        out.dec(sig as u64);
        out.bytes(b"\ntid ");
        // SAFETY: gettid has no preconditions.
        out.dec(unsafe { libc::gettid() } as u64);
        out.bytes(b"\npc ");
        // SAFETY: the kernel's ucontext for this SA_SIGINFO handler.
        out.hex(unsafe { fault_pc(ctx) });
        out.bytes(b"\nthread ");
        out.file(b"/proc/thread-self/comm\0", 64);
        // SAFETY: `state` outlives the call; `on_frame` only appends to it.
        unsafe { _Unwind_Backtrace(on_frame, (&mut state as *mut (Out, usize)).cast()) };
        let out = &mut state.0;
        out.bytes(b"maps\n");
        out.file(b"/proc/self/maps\0", 1 << 20);
        out.bytes(b"end\n");
        out.flush();
    }
    // SA_RESETHAND restored the default action on entry; the signal is blocked while this
    // handler runs, so it is delivered (and kills the process) as the handler returns.
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(sig) };
}
