//! `vigil stack-dump` (internal): takes the stacks of another process from outside, with
//! ptrace, and prints them as a raw crash capture ([`vigil_actors::supervisor::stack::Capture`],
//! the same text the in-process handler writes, with `capture ptrace`).
//!
//! The supervisor runs it as a short-lived child with a deadline (CONTRACT §6,
//! `supervisor.stack_capture`): after a fatal signal, while the collector's crash handler
//! waits (`--tid`, with the registers where the signal struck), and before the SIGKILL of a
//! hung collector (`--all`: every thread). Capturing from outside does not trust the dying
//! process's memory to run the unwinder in it; a helper (not the supervisor) is the tracer
//! so that the supervisor's own `waitpid` of the collector never sees a ptrace stop, and if
//! the helper dies or is killed at its deadline, the kernel detaches it.
//!
//! Each thread is attached with `PTRACE_SEIZE` + `PTRACE_INTERRUPT` (no SIGSTOP is sent, so
//! the collector's parent sees no stop either), its stack is unwound with framehop from the
//! `.eh_frame` of the files mapped in the process (libc included), reading the stack with
//! `process_vm_readv` a page at a time, and it is detached again. An attach that fails
//! (ptrace not permitted, or another tracer such as `strace -p` already attached) is an
//! error on stderr and exit 2, which the supervisor puts in the report's `stack_error`.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::process::ExitCode;

use vigil_actors::collector::crash_capture::MAX_FRAMES;
use vigil_actors::supervisor::stack::Mapping;

/// Frames counted past the ones written (for `frames_omitted` of a deep recursion).
const COUNT_FRAMES_AT_MOST: usize = 200_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The process.
    #[arg(long)]
    pid: i32,
    /// The thread that got the fatal signal (with --signal, --pc, --sp, --bp from its
    /// signal context).
    #[arg(long)]
    tid: Option<i32>,
    #[arg(long, default_value_t = 0)]
    signal: i32,
    #[arg(long, value_parser = parse_hex, default_value = "0")]
    pc: u64,
    #[arg(long, value_parser = parse_hex, default_value = "0")]
    sp: u64,
    #[arg(long, value_parser = parse_hex, default_value = "0")]
    bp: u64,
    /// Every thread of the process (a hang), each with the registers where it stopped.
    #[arg(long)]
    all: bool,
}

fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

pub fn main(args: Args) -> ExitCode {
    match dump(&args) {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Threads this helper traces; detached when dropped (also on an early error), each with
/// the signal it was about to get, if a signal stop came instead of the interrupt.
struct Attached(Vec<(i32, i32)>);

impl Drop for Attached {
    fn drop(&mut self) {
        for &(tid, sig) in &self.0 {
            // SAFETY: PTRACE_DETACH of a thread we attached.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, sig as usize) };
        }
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Who traces `tid` already (`TracerPid` of its status), if anyone.
fn tracer_of(pid: i32, tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("TracerPid:"))?;
    line.split_whitespace().nth(1)?.parse().ok().filter(|&p| p != 0)
}

impl Attached {
    /// Attaches `tid` and waits until it is stopped.
    fn attach(&mut self, pid: i32, tid: i32) -> Result<(), String> {
        // SAFETY: plain ptrace requests on a thread id.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize) } != 0 {
            let e = errno();
            let why = match tracer_of(pid, tid) {
                Some(t) => format!("it is already traced by pid {t}"),
                None if e.raw_os_error() == Some(libc::EPERM) => {
                    "ptrace is not permitted here (needs CAP_SYS_PTRACE, or kernel.yama.ptrace_scope at most 1)".into()
                }
                None => e.to_string(),
            };
            return Err(format!("cannot ptrace thread {tid} of pid {pid}: {e}: {why}"));
        }
        self.0.push((tid, 0));
        // SAFETY: as above, on a thread we now trace.
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) } != 0 {
            return Err(format!("cannot stop thread {tid}: {}", errno()));
        }
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own tracee.
            let w = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
            if w == tid {
                if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    self.0.pop();
                    return Err(format!("thread {tid} ended while being stopped"));
                }
                if libc::WIFSTOPPED(status) {
                    // An interrupt stop says PTRACE_EVENT_STOP; anything else is a signal
                    // it was about to get, given back on detach.
                    if (status >> 16) != libc::PTRACE_EVENT_STOP {
                        if let Some(last) = self.0.last_mut() {
                            last.1 = libc::WSTOPSIG(status);
                        }
                    }
                    return Ok(());
                }
            } else if w < 0 && errno().raw_os_error() != Some(libc::EINTR) {
                return Err(format!("cannot wait for thread {tid}: {}", errno()));
            }
        }
    }
}

/// The other process's memory, read a page at a time and kept.
struct Memory {
    pid: i32,
    pages: HashMap<u64, Option<Box<[u8; 4096]>>>,
}

impl Memory {
    fn page(&mut self, at: u64) -> Option<&[u8; 4096]> {
        let pid = self.pid;
        self.pages
            .entry(at)
            .or_insert_with(|| {
                let mut buf = Box::new([0u8; 4096]);
                let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 4096 };
                let remote = libc::iovec { iov_base: at as *mut libc::c_void, iov_len: 4096 };
                // SAFETY: reads into our own buffer of the stated length.
                let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
                (n == 4096).then_some(buf)
            })
            .as_deref()
    }

    fn read_u64(&mut self, addr: u64) -> Result<u64, ()> {
        let mut bytes = [0u8; 8];
        for (i, b) in bytes.iter_mut().enumerate() {
            let a = addr.checked_add(i as u64).ok_or(())?;
            *b = self.page(a & !4095).ok_or(())?[(a & 4095) as usize];
        }
        Ok(u64::from_le_bytes(bytes))
    }

    fn read(&mut self, range: Range<u64>) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let mut a = range.start;
        while a < range.end {
            let page = self.page(a & !4095)?;
            let from = (a & 4095) as usize;
            let to = ((range.end - (a & !4095)).min(4096)) as usize;
            out.extend_from_slice(&page[from..to]);
            a = (a & !4095) + 4096;
        }
        Some(out)
    }
}

fn read_maps(pid: i32) -> Result<(String, Vec<Mapping>), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("cannot read /proc/{pid}/maps: {e}"))?;
    let maps = text.lines().filter_map(vigil_actors::supervisor::stack::parse_map_line).collect();
    Ok((text, maps))
}

/// Turns one mapped file's unwind sections into a framehop module.
///
/// `file_base`: where the file's first byte is mapped (its lowest mapping's start minus
/// that mapping's offset).
fn module_of(name: &str, data: &[u8], file_base: u64, avma: Range<u64>) -> Option<framehop::Module<Vec<u8>>> {
    use object::{Object, ObjectSection, ObjectSegment};
    let file = object::File::parse(data).ok()?;
    // The file's own addresses to memory: its first loaded segment (the lowest file offset)
    // sits at `file_base` + that offset.
    let first = file.segments().min_by_key(|s| s.file_range().0)?;
    let bias = (file_base + first.file_range().0).wrapping_sub(first.address());
    let section = |n: &str| file.section_by_name(n);
    let range = |s: &object::Section| s.address()..s.address() + s.size();
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = section(".eh_frame_hdr");
    let info = framehop::ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: section(".text").map(|s| range(&s)),
        got_svma: section(".got").map(|s| range(&s)),
        eh_frame_svma: eh_frame.as_ref().map(range),
        eh_frame: eh_frame.as_ref().and_then(|s| s.data().ok()).map(<[u8]>::to_vec),
        eh_frame_hdr_svma: eh_frame_hdr.as_ref().map(range),
        eh_frame_hdr: eh_frame_hdr.as_ref().and_then(|s| s.data().ok()).map(<[u8]>::to_vec),
        debug_frame: section(".debug_frame").and_then(|s| s.data().ok()).map(<[u8]>::to_vec),
        ..Default::default()
    };
    Some(framehop::Module::new(name.to_string(), avma, bias, info))
}

#[cfg(target_arch = "x86_64")]
type Unwinder = framehop::x86_64::UnwinderX86_64<Vec<u8>>;

/// One unwinder over every executable file mapping of the process (and its vDSO).
#[cfg(target_arch = "x86_64")]
fn unwinder(pid: i32, maps: &[Mapping], mem: &mut Memory) -> Unwinder {
    use framehop::Unwinder as _;
    let mut u = Unwinder::new();
    let mut seen = std::collections::HashSet::new();
    for exec in maps.iter().filter(|m| m.executable) {
        if !seen.insert(exec.path.clone()) {
            continue;
        }
        let avma = exec.start
            ..maps
                .iter()
                .filter(|m| m.executable && m.path == exec.path)
                .map(|m| m.end)
                .max()
                .unwrap_or(exec.end);
        let name = exec.path.rsplit('/').next().unwrap_or(&exec.path);
        let file_base = vigil_actors::supervisor::stack::image_base(maps, exec);
        if exec.path == "[vdso]" {
            if let Some(bytes) = mem.read(exec.start..exec.end) {
                if let Some(m) = module_of(name, &bytes, exec.start, avma) {
                    u.add_module(m);
                }
            }
            continue;
        }
        if !exec.path.starts_with('/') {
            continue;
        }
        // The file as the process sees it (its mount namespace; also a deleted, replaced
        // binary after an upgrade).
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", exec.start, exec.end);
        let file = std::fs::File::open(&path)
            .or_else(|_| std::fs::File::open(exec.path.trim_end_matches(" (deleted)")));
        let Ok(file) = file else { continue };
        // SAFETY: a read-only private map of a file this helper only reads; the helper is
        // short-lived and a file changed under it gives a wrong stack, not unsafety in the
        // supervisor.
        let Ok(data) = (unsafe { memmap2::Mmap::map(&file) }) else { continue };
        if let Some(m) = module_of(name, &data, file_base, avma) {
            u.add_module(m);
        }
    }
    u
}

/// Unwinds one thread from its registers: the frames (at most [`MAX_FRAMES`] + 8 written)
/// and how many more there were.
#[cfg(target_arch = "x86_64")]
fn unwind(u: &Unwinder, mem: &mut Memory, pc: u64, sp: u64, bp: u64) -> (Vec<u64>, usize) {
    use framehop::Unwinder as _;
    let mut cache = framehop::x86_64::CacheX86_64::new();
    let mut read = |a: u64| mem.read_u64(a);
    let regs = framehop::x86_64::UnwindRegsX86_64::new(pc, sp, bp);
    let mut it = u.iter_frames(pc, regs, &mut cache, &mut read);
    let (mut frames, mut more) = (Vec::new(), 0);
    while let Ok(Some(f)) = it.next() {
        if frames.len() < MAX_FRAMES + 8 {
            frames.push(f.address());
        } else {
            more += 1;
            if more >= COUNT_FRAMES_AT_MOST {
                break;
            }
        }
    }
    (frames, more)
}

#[cfg(target_arch = "x86_64")]
fn regs_of(tid: i32) -> Result<(u64, u64, u64), String> {
    // SAFETY: PTRACE_GETREGS fills a user_regs_struct of a stopped tracee.
    let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    if unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &mut r as *mut _ as usize) } != 0 {
        return Err(format!("cannot read the registers of thread {tid}: {}", errno()));
    }
    Ok((r.rip, r.rsp, r.rbp))
}

fn comm(pid: i32, tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn threads(pid: i32) -> Result<Vec<i32>, String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("pid {pid}: {e}"))?;
    let mut tids: Vec<i32> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
    Ok(tids)
}

#[cfg(target_arch = "x86_64")]
fn dump(a: &Args) -> Result<String, String> {
    use std::fmt::Write as _;
    let pid = a.pid;
    let mut attached = Attached(Vec::new());
    let mut out = String::from("VIGIL-CRASH 1\ncapture ptrace\n");
    let mut mem = Memory { pid, pages: HashMap::new() };
    if let Some(tid) = a.tid {
        attached.attach(pid, tid)?;
        let (maps_text, maps) = read_maps(pid)?;
        let u = unwinder(pid, &maps, &mut mem);
        let (frames, more) = unwind(&u, &mut mem, a.pc, a.sp, a.bp);
        drop(attached);
        let _ = write!(out, "signal {}\ntid {tid}\npc {:#x}\nthread {}\n", a.signal, a.pc, comm(pid, tid));
        for f in frames {
            let _ = writeln!(out, "frame {f:#x}");
        }
        let _ = writeln!(out, "omitted {more}");
        let _ = write!(out, "maps\n{maps_text}end\n");
        return Ok(out);
    }
    if !a.all {
        return Err("give --tid (a crash) or --all (a hang)".into());
    }
    // Stop every thread first (threads started meanwhile are attached in a second pass),
    // then unwind each where it stopped.
    let mut tids = Vec::new();
    for _ in 0..2 {
        for tid in threads(pid)? {
            if tids.contains(&tid) {
                continue;
            }
            match attached.attach(pid, tid) {
                Ok(()) => tids.push(tid),
                // A thread that ended meanwhile is not an error; any other failure is.
                Err(_) if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => {}
                Err(e) => return Err(e),
            }
        }
    }
    let (maps_text, maps) = read_maps(pid)?;
    let u = unwinder(pid, &maps, &mut mem);
    let _ = writeln!(out, "signal {}", a.signal);
    for &tid in &tids {
        let (pc, sp, bp) = regs_of(tid)?;
        let (frames, more) = unwind(&u, &mut mem, pc, sp, bp);
        let _ = writeln!(out, "task {tid} {}", comm(pid, tid));
        for f in frames {
            let _ = writeln!(out, "frame {f:#x}");
        }
        let _ = writeln!(out, "omitted {more}");
    }
    drop(attached);
    let _ = write!(out, "maps\n{maps_text}end\n");
    Ok(out)
}

#[cfg(not(target_arch = "x86_64"))]
fn dump(_: &Args) -> Result<String, String> {
    Err("capturing stacks with ptrace is implemented for x86_64 only".into())
}
