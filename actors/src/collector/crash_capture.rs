//! In-process crash capture for the collector child (CONTRACT §6 "Where it died",
//! `supervisor.stack_capture = "in_process"`).
//!
//! A Rust process killed by SIGSEGV prints nothing. [`install`] puts a handler on every fatal
//! signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP) that runs on an alternate stack
//! of its own (so a stack overflow, which faults on the guard page, can still be reported),
//! walks the crashing thread's stack with the unwinder already linked into every Rust binary
//! (`_Unwind_Backtrace`, which steps through the kernel's signal frame into the faulting
//! code), and writes what it found to the crash socket the supervisor handed down
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
//! With `VIGIL_CRASH_MODE` `auto` or `ptrace`, the handler first asks for the stack to be
//! taken from outside: it writes `VIGIL-PTRACE TID SIGNAL PC SP FP` (the registers from its
//! signal context) and waits on the socket (poll, at most 3 s) while the supervisor's
//! `vigil stack-dump` helper attaches with ptrace and unwinds it; one byte answers: taken
//! (die now), unwind here (`auto` after a refused attach), or give up (`ptrace`).
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

/// The environment variable naming the crash socket's file descriptor in the collector.
pub const FD_ENV: &str = "VIGIL_CRASH_FD";
/// The environment variable saying how stacks are taken (`supervisor.stack_capture`):
/// `auto` and `ptrace` make the handler ask the supervisor to take the stack from outside
/// first; `in_process` (or unset) makes it unwind itself at once.
pub const MODE_ENV: &str = "VIGIL_CRASH_MODE";
/// The first line the handler writes when it asks for a capture from outside:
/// `VIGIL-PTRACE TID SIGNAL PC SP FP`; the supervisor answers one byte on the same socket.
pub const ASK_PTRACE: &str = "VIGIL-PTRACE";
/// The answer: the stack was taken from outside; die now.
pub const TAKEN: u8 = b'y';
/// The answer: it could not be; unwind in process.
pub const UNWIND_HERE: u8 = b'i';
/// The answer: it could not be, and no in-process capture is wanted (`ptrace` only).
pub const GIVE_UP: u8 = b'x';
/// How long the handler waits for the answer at most (the supervisor answers within its
/// own, shorter deadline; this only covers a supervisor that is gone).
const ANSWER_WITHIN_MS: i64 = 3000;
/// The descriptor the supervisor puts the crash socket on.
pub const FD: i32 = 3;
/// Frames written at most.
pub const MAX_FRAMES: usize = 256;
/// The alternate signal stack of the thread that installs the handler.
const ALT_STACK_BYTES: usize = 256 * 1024;

/// The fatal signals that get a stack.
pub const SIGNALS: [i32; 6] =
    [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT, libc::SIGTRAP];

static CRASH_FD: AtomicI32 = AtomicI32::new(-1);
/// 0: unwind in process; 1: ask for ptrace, unwind here if refused (`auto`); 2: ptrace only.
static MODE: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// Where this thread's last panic happened (`FILE:LINE:COL`) and its backtrace, for the
    /// code that catches it.
    static PANIC_AT: std::cell::RefCell<Option<(String, std::backtrace::Backtrace)>> =
        const { std::cell::RefCell::new(None) };
}

/// The last panic's raw stack (`tid`, thread name, return addresses), written to the crash
/// pipe if the process then exits (a panic that ends it exits with 101).
static LAST_PANIC: std::sync::Mutex<Option<(u64, String, Vec<u64>)>> = std::sync::Mutex::new(None);

/// Records where each panic happens (for the collector that catches it) and the panicking
/// thread's stack (for a panic that ends the process), then lets the previous hook (std's:
/// the message on stderr) run as before.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(at) = info.location() {
            let at = format!("{}:{}:{}", at.file(), at.line(), at.column());
            let bt = std::backtrace::Backtrace::force_capture();
            PANIC_AT.with(|p| *p.borrow_mut() = Some((at, bt)));
        }
        if CRASH_FD.load(Ordering::SeqCst) >= 0 {
            let mut frames: (Vec<u64>, usize) = (Vec::with_capacity(64), 0);
            // SAFETY: `frames` outlives the call; `push_frame` only appends to it.
            unsafe { _Unwind_Backtrace(push_frame, (&mut frames as *mut (Vec<u64>, usize)).cast()) };
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u64;
            let name = std::thread::current().name().unwrap_or("").to_string();
            let name = std::fs::read_to_string("/proc/thread-self/comm")
                .map(|s| s.trim().to_string())
                .unwrap_or(name);
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = Some((tid, name, frames.0));
            }
        }
        previous(info);
    }));
}

/// The place and backtrace of this thread's last panic, once.
pub fn take_panic() -> Option<(String, std::backtrace::Backtrace)> {
    PANIC_AT.with(|p| p.borrow_mut().take())
}

/// The place of this thread's last panic, once.
pub fn take_panic_location() -> Option<String> {
    take_panic().map(|(at, _)| at)
}

/// The unwinder's callback for a panic: every frame into the Vec.
extern "C" fn push_frame(ctx: *mut libc::c_void, arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `(Vec, count)` pair the hook passed; `ctx` the unwinder's.
    let (frames, _) = unsafe { &mut *(arg as *mut (Vec<u64>, usize)) };
    let ip = unsafe { _Unwind_GetIP(ctx) } as u64;
    if ip == 0 || frames.len() >= MAX_FRAMES + 64 {
        return 5;
    }
    frames.push(ip);
    0
}

/// At exit (`exit(3)`, which a panic out of `main` and `VIGIL_FAULT=panic` end in): the
/// last panic's stack to the crash socket. The supervisor reads it only for exit code 101.
extern "C" fn write_last_panic() {
    let fd = CRASH_FD.load(Ordering::SeqCst);
    let Some((tid, name, frames)) = LAST_PANIC.lock().ok().and_then(|mut l| l.take()) else { return };
    if fd < 0 || ENTERED.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut out = Out { fd, buf: [0; 1024], len: 0 };
    out.bytes(b"VIGIL-CRASH 1\ncapture in_process\nkind panic\nsignal 0\ntid ");
    out.dec(tid);
    out.bytes(b"\npc 0\nthread ");
    out.bytes(name.as_bytes());
    out.bytes(b"\n");
    for ip in frames {
        out.bytes(b"frame ");
        out.hex(ip);
        out.bytes(b"\n");
    }
    out.bytes(b"maps\n");
    out.file(b"/proc/self/maps\0", 1 << 20);
    out.bytes(b"end\n");
    out.flush();
}

static ENTERED: AtomicBool = AtomicBool::new(false);

/// Installs the handlers when the supervisor handed down a crash socket (`VIGIL_CRASH_FD`);
/// returns whether it did. Call it on the thread the collectors run on, before they start:
/// that thread gets a large alternate stack (other threads keep the one std gives them).
pub fn install() -> bool {
    let Some(fd) = std::env::var(FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()) else { return false };
    // SAFETY: fcntl on a descriptor number only queries it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return false;
    }
    CRASH_FD.store(fd, Ordering::SeqCst);
    let mode = match std::env::var(MODE_ENV).as_deref() {
        Ok("auto") => 1,
        Ok("ptrace") => 2,
        _ => 0,
    };
    MODE.store(mode, Ordering::SeqCst);
    // SAFETY: registering a plain extern "C" fn.
    unsafe { libc::atexit(write_last_panic) };
    if mode != 0 {
        // Under Yama's ptrace_scope 1, only an ancestor may trace us: let the supervisor's
        // helper (its child, our sibling) do it. Without Yama this is refused, harmlessly.
        // SAFETY: prctl with plain integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::getppid() as libc::c_ulong, 0, 0, 0) };
    }
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
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = dump_handler as *const () as usize;
        // On the thread's own stack, not SA_ONSTACK: std gives every thread it spawns a small
        // alternate stack (for its guard-page handler), too small for the unwinder; a hung
        // thread's own stack has room.
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(dump_signal(), &sa, std::ptr::null_mut());
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

/// A line buffer on the stack that writes to the crash socket when full.
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

/// The stack pointer and frame pointer where the signal struck (0 when unknown).
///
/// SAFETY: as [`fault_pc`].
unsafe fn fault_sp_fp(ctx: *mut libc::c_void) -> (u64, u64) {
    if ctx.is_null() {
        return (0, 0);
    }
    let uc = ctx as *const libc::ucontext_t;
    #[cfg(target_arch = "x86_64")]
    {
        let g = &(*uc).uc_mcontext.gregs;
        (g[libc::REG_RSP as usize] as u64, g[libc::REG_RBP as usize] as u64)
    }
    #[cfg(target_arch = "aarch64")]
    {
        ((*uc).uc_mcontext.sp, (*uc).uc_mcontext.regs[29])
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = uc;
        (0, 0)
    }
}

/// Asks the supervisor to take this thread's stack from outside and waits for its answer
/// (one byte; `None` when none came in time).
///
/// SAFETY: async-signal-safe calls only; `ctx` as for [`fault_pc`].
unsafe fn ask_for_ptrace(fd: i32, sig: i32, ctx: *mut libc::c_void) -> Option<u8> {
    let mut out = Out { fd, buf: [0; 1024], len: 0 };
    let (sp, fp) = fault_sp_fp(ctx);
    out.bytes(ASK_PTRACE.as_bytes());
    out.bytes(b" ");
    out.dec(libc::gettid() as u64);
    out.bytes(b" ");
    out.dec(sig as u64);
    out.bytes(b" ");
    out.hex(fault_pc(ctx));
    out.bytes(b" ");
    out.hex(sp);
    out.bytes(b" ");
    out.hex(fp);
    out.bytes(b"\n");
    out.flush();
    let now_ms = || {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    };
    let until = now_ms() + ANSWER_WITHIN_MS;
    loop {
        let left = until - now_ms();
        if left <= 0 {
            return None;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let n = libc::poll(&mut p, 1, left as libc::c_int);
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue; // the tracer stopped us, or another signal: wait on
        }
        if n <= 0 {
            return None;
        }
        let mut answer = 0u8;
        let r = libc::read(fd, (&mut answer as *mut u8).cast(), 1);
        if r == 1 {
            return Some(answer);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// The signal that asks every thread of a hung collector for its stack, where ptrace is not
/// used (`in_process`): the first thread to get it writes the header, passes it on to every
/// other thread (`tgkill`), writes its own stack, waits for theirs (at most 800 ms), and ends
/// the capture with the memory map. The supervisor kills the collector 1 s after asking.
pub fn dump_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

static DUMP_STARTED: AtomicBool = AtomicBool::new(false);
static DUMP_LOCK: AtomicBool = AtomicBool::new(false);
static DUMP_DONE: AtomicI32 = AtomicI32::new(0);

fn now_ms() -> i64 {
    // SAFETY: clock_gettime into a local.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }
}

/// Runs `f` holding the dump's write lock (at most 500 ms of waiting for it), so that each
/// thread's section reaches the socket whole.
fn with_dump_lock(f: impl FnOnce()) {
    let until = now_ms() + 500;
    while DUMP_LOCK.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        if now_ms() > until {
            return;
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
    f();
    DUMP_LOCK.store(false, Ordering::Release);
}

/// The unwinder's callback for one thread of a dump: frames from `skip_until` (the
/// interrupted instruction) on, so the handler's own frames are left out.
extern "C" fn on_task_frame(ctx: *mut libc::c_void, arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `(Out, count, skip_until)` the dump passed; `ctx` the unwinder's.
    let (out, count, skip_until) = unsafe { &mut *(arg as *mut (Out, usize, u64)) };
    let ip = unsafe { _Unwind_GetIP(ctx) } as u64;
    if ip == 0 || *count >= MAX_FRAMES + 8 {
        return 5;
    }
    if *skip_until != 0 {
        if ip != *skip_until {
            return 0;
        }
        *skip_until = 0;
    }
    out.bytes(b"frame ");
    out.hex(ip);
    out.bytes(b"\n");
    *count += 1;
    0
}

/// Writes this thread's `task TID NAME` section and its frames.
fn dump_own_stack(fd: i32, ctx: *mut libc::c_void) {
    with_dump_lock(|| {
        let mut state = (Out { fd, buf: [0; 1024], len: 0 }, 0usize, 0u64);
        // SAFETY: gettid has no preconditions; the kernel's ucontext for this handler.
        let (tid, pc) = unsafe { (libc::gettid() as u64, fault_pc(ctx)) };
        state.0.bytes(b"task ");
        state.0.dec(tid);
        state.0.bytes(b" ");
        state.0.file(b"/proc/thread-self/comm\0", 64);
        state.2 = pc;
        // SAFETY: `state` outlives the call; the callback only appends to it.
        unsafe { _Unwind_Backtrace(on_task_frame, (&mut state as *mut (Out, usize, u64)).cast()) };
        if state.1 == 0 {
            // The interrupted instruction was not found on the way: every frame, then.
            state.2 = 0;
            // SAFETY: as above.
            unsafe { _Unwind_Backtrace(on_task_frame, (&mut state as *mut (Out, usize, u64)).cast()) };
        }
        state.0.flush();
    });
}

/// The other threads of this process, asked with `tgkill` to dump themselves; how many were.
fn ask_other_threads(sig: i32) -> i32 {
    let mut asked = 0;
    // SAFETY: open/getdents64/tgkill/close with our own buffers; no allocation.
    unsafe {
        let dir =
            libc::open(c"/proc/self/task".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if dir < 0 {
            return 0;
        }
        let (pid, me) = (libc::getpid(), libc::gettid());
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let mut off = 0usize;
            while off + 19 < n as usize {
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                let name = &buf[off + 19..off + reclen];
                let mut tid: i32 = 0;
                let mut digits = 0;
                for &b in name.iter().take_while(|&&b| b != 0) {
                    if !b.is_ascii_digit() {
                        digits = 0;
                        break;
                    }
                    tid = tid * 10 + i32::from(b - b'0');
                    digits += 1;
                }
                if digits > 0 && tid != me && libc::syscall(libc::SYS_tgkill, pid, tid, sig) == 0 {
                    asked += 1;
                }
                if reclen == 0 {
                    break;
                }
                off += reclen;
            }
        }
        libc::close(dir);
    }
    asked
}

extern "C" fn dump_handler(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let fd = CRASH_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    if DUMP_STARTED.swap(true, Ordering::SeqCst) {
        dump_own_stack(fd, ctx);
        DUMP_DONE.fetch_add(1, Ordering::SeqCst);
        return;
    }
    with_dump_lock(|| {
        let mut out = Out { fd, buf: [0; 1024], len: 0 };
        out.bytes(b"VIGIL-CRASH 1\ncapture in_process\nsignal 0\n");
        out.flush();
    });
    let asked = ask_other_threads(sig);
    dump_own_stack(fd, ctx);
    let until = now_ms() + 800;
    while DUMP_DONE.load(Ordering::SeqCst) < asked && now_ms() < until {
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 2_000_000 };
        // SAFETY: nanosleep with a local timespec.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
    with_dump_lock(|| {
        let mut out = Out { fd, buf: [0; 1024], len: 0 };
        out.bytes(b"maps\n");
        out.file(b"/proc/self/maps\0", 1 << 20);
        out.bytes(b"end\n");
        out.flush();
    });
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
    let mut unwind_here = fd >= 0 && !ENTERED.swap(true, Ordering::SeqCst);
    if unwind_here && MODE.load(Ordering::SeqCst) != 0 {
        // SAFETY: async-signal-safe; the kernel's ucontext.
        let answer = unsafe { ask_for_ptrace(fd, sig, ctx) };
        unwind_here = match answer {
            Some(UNWIND_HERE) => true,
            Some(_) => false,
            // No answer: a supervisor that is gone or stuck; `auto` still unwinds here.
            None => MODE.load(Ordering::SeqCst) == 1,
        };
    }
    if unwind_here {
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
