//! Where the collector died: the raw capture its crash handler writes
//! ([`crate::collector::crash_capture`]), parsed; the symbolized stack of a crash report
//! (CONTRACT §6); and its signature.
//!
//! Symbolizing (addresses to functions, files and lines, from the binary's DWARF) runs in
//! `vigil symbolize`, a short-lived child of the supervisor that gets the raw capture on
//! stdin and answers [`Symbolized`] as JSON: reading debug info of arbitrary binaries is
//! risky work, and must not be able to crash or stall the supervisor.

use serde::{Deserialize, Serialize};

/// One memory mapping of the dead process (`/proc/PID/maps`).
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
    /// Mapped executable (`x` in its permissions).
    pub executable: bool,
}

/// One thread of a capture of every thread (a hang).
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub tid: u64,
    pub name: String,
    pub frames: Vec<u64>,
    /// Frames past the ones written.
    pub omitted: usize,
}

/// What the crash handler wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub signal: i32,
    pub tid: u64,
    /// Where the signal struck (0 when unknown).
    pub pc: u64,
    pub thread: String,
    /// Return addresses as the unwinder found them, the handler's own frames first.
    pub frames: Vec<u64>,
    /// Frames of the crashing thread past the ones written.
    pub omitted: usize,
    /// `ptrace` (taken from outside by `vigil stack-dump`) or `in_process` (the handler).
    pub capture: String,
    /// Every thread, for a hang (empty for a crash).
    pub tasks: Vec<Task>,
    /// The stack of a panic (taken in the panic hook), not of a signal.
    pub panic: bool,
    pub maps: Vec<Mapping>,
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

impl Capture {
    /// Parses the handler's text; an error says what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<Capture, String> {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.lines();
        if lines.next() != Some("VIGIL-CRASH 1") {
            return Err("the crash socket held no capture".into());
        }
        let mut c = Capture {
            signal: 0,
            tid: 0,
            pc: 0,
            thread: String::new(),
            frames: Vec::new(),
            omitted: 0,
            capture: "in_process".into(),
            tasks: Vec::new(),
            panic: false,
            maps: Vec::new(),
        };
        let mut in_maps = false;
        let mut complete = false;
        for line in lines {
            if in_maps {
                if line == "end" {
                    complete = true;
                    break;
                }
                if let Some(m) = parse_map_line(line) {
                    c.maps.push(m);
                }
                continue;
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "signal" => {
                    c.signal = value.trim().parse().map_err(|_| format!("bad signal line {line:?}"))?
                }
                "tid" => c.tid = value.trim().parse().unwrap_or(0),
                "pc" => c.pc = hex(value).unwrap_or(0),
                "thread" => c.thread = value.trim().to_string(),
                "frame" => match c.tasks.last_mut() {
                    Some(t) => t.frames.extend(hex(value)),
                    None => c.frames.extend(hex(value)),
                },
                "omitted" => {
                    let n = value.trim().parse().unwrap_or(0);
                    match c.tasks.last_mut() {
                        Some(t) => t.omitted = n,
                        None => c.omitted = n,
                    }
                }
                "capture" => c.capture = value.trim().to_string(),
                "kind" => c.panic = value.trim() == "panic",
                "task" => {
                    let (tid, name) = value.split_once(' ').unwrap_or((value, ""));
                    c.tasks.push(Task {
                        tid: tid.trim().parse().unwrap_or(0),
                        name: name.trim().to_string(),
                        frames: Vec::new(),
                        omitted: 0,
                    });
                }
                "maps" => in_maps = true,
                _ => {}
            }
        }
        if !complete {
            return Err("the capture was cut short (the crash handler did not finish)".into());
        }
        Ok(c)
    }

    /// The frames from the faulting one outwards: the handler's own frames (and the
    /// kernel's signal trampoline) dropped, up to the frame at `pc`.
    pub fn crash_frames(&self) -> &[u64] {
        match self.frames.iter().position(|&ip| ip == self.pc) {
            Some(i) => &self.frames[i..],
            None => &self.frames,
        }
    }

    /// The mapping that holds `addr`.
    pub fn mapping(&self, addr: u64) -> Option<&Mapping> {
        self.maps.iter().find(|m| m.start <= addr && addr < m.end)
    }

    /// Where the file of `m` starts in memory (see [`image_base`]).
    pub fn load_base(&self, m: &Mapping) -> u64 {
        image_base(&self.maps, m)
    }
}

/// Where the loaded image that mapping `m` belongs to starts in memory: the lowest of the
/// mappings of the same file that are contiguous with `m` (a loader maps an image's
/// segments side by side), less its file offset. Other mappings of the same file elsewhere
/// (the whole binary mapped again to read its debug info, say) are not part of the image.
pub fn image_base(maps: &[Mapping], m: &Mapping) -> u64 {
    let mut sorted: Vec<&Mapping> = maps.iter().filter(|o| o.path == m.path).collect();
    sorted.sort_by_key(|o| o.start);
    let Some(mut i) = sorted.iter().position(|o| o.start == m.start) else {
        return m.start.saturating_sub(m.offset);
    };
    while i > 0 && sorted[i - 1].end == sorted[i].start {
        i -= 1;
    }
    sorted[i].start.saturating_sub(sorted[i].offset)
}

/// One line of `/proc/PID/maps`.
pub fn parse_map_line(line: &str) -> Option<Mapping> {
    let mut it = line.split_whitespace();
    let range = it.next()?;
    let perms = it.next()?;
    let offset = hex(it.next()?)?;
    let _dev = it.next()?;
    let _inode = it.next()?;
    let path: Vec<&str> = it.collect();
    let path = path.join(" ");
    let (s, e) = range.split_once('-')?;
    Some(Mapping { start: hex(s)?, end: hex(e)?, offset, path, executable: perms.contains('x') })
}

/// One frame of a crash report's `stack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The file the code is in, by name (`vigil`, `libc.so.6`).
    pub module: Option<String>,
    pub address: String,
}

/// What `vigil symbolize` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Symbolized {
    pub thread: String,
    /// Innermost first, at most [`crate::collector::crash_capture::MAX_FRAMES`].
    pub stack: Vec<Frame>,
    pub frames_omitted: usize,
    /// How the stack was taken: `ptrace` or `in_process`.
    #[serde(default)]
    pub capture: String,
    /// Every thread, for a hang.
    #[serde(default)]
    pub threads: Vec<ThreadStack>,
}

/// One thread of a hang report's `threads` (CONTRACT §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadStack {
    pub name: String,
    pub stack: Vec<Frame>,
}

/// Whether `function` is vigil's own code (CONTRACT §6: under `vigil::` or
/// `vigil_actors::`, also as the self type of an impl: `<vigil_actors::…>::f`).
pub fn is_own(function: &str) -> bool {
    let f = function.trim_start_matches('<');
    f.starts_with("vigil::") || f.starts_with("vigil_actors::")
}

/// Where a panic's stack starts: the frames of the panic machinery (std's and core's
/// `panicking`, the hooks) dropped from the top, so the first frame is the code that panicked.
pub fn skip_panic_machinery(stack: &mut Vec<Frame>) {
    let machinery = |f: &str| {
        let f = f.trim_start_matches('<');
        ["std::panicking::", "core::panicking::", "std::sys::backtrace::", "rust_begin_unwind", "__rustc::"]
            .iter()
            .any(|p| f.starts_with(p))
            || f.starts_with("vigil_actors::collector::crash_capture::")
    };
    let mut last = None;
    for (i, f) in stack.iter().enumerate().take(64) {
        match f.function.as_deref() {
            Some(name) if machinery(name) => last = Some(i),
            Some(name) if is_own(name) => break,
            _ => {}
        }
    }
    if let Some(i) = last {
        stack.drain(..=i);
    }
}

/// A stack as text, one `#N function (file:line) module` line per frame, `#0` innermost, `??`
/// for what the debug info does not say (CONTRACT §6): what `vigil crashes show` prints and
/// the OTLP sink sends as `exception.stacktrace`.
pub fn frame_lines(stack: &[Frame]) -> String {
    let mut s = String::new();
    for (i, fr) in stack.iter().enumerate() {
        let file = fr.file.as_deref().unwrap_or("??");
        let line = fr.line.map_or("??".to_string(), |l| l.to_string());
        s.push_str(&format!(
            "#{i} {} ({file}:{line}) {}\n",
            fr.function.as_deref().unwrap_or("??"),
            fr.module.as_deref().unwrap_or("??")
        ));
    }
    s
}

/// The innermost function of vigil's own code.
pub fn innermost_own(stack: &[Frame]) -> Option<&str> {
    stack.iter().filter_map(|f| f.function.as_deref()).find(|f| is_own(f))
}

/// The collector whose actor is on the stack, innermost first (`CollectorActor<…::NAME::Type>`
/// in a function name), if it is one of `names`.
pub fn collector_on_stack(stack: &[Frame], names: &[&str]) -> Option<String> {
    stack.iter().filter_map(|f| f.function.as_deref()).find_map(|f| {
        let (_, rest) = f.split_once("CollectorActor<")?;
        let ty = rest.split(['>', ',']).next()?;
        let mut segments = ty.rsplit("::");
        let _type_name = segments.next()?;
        let module = segments.next()?;
        names.contains(&module).then(|| module.to_string())
    })
}

/// How many of vigil's own innermost frames make the signature.
pub const SIGNATURE_FRAMES: usize = 3;

/// A short stable hash (12 hex digits, FNV-1a) of the names of the innermost
/// [`SIGNATURE_FRAMES`] functions of vigil's own code: the same for the same crash across
/// incarnations, hosts and rebuilds (no addresses, files or lines in it). `None` without any.
pub fn signature(stack: &[Frame]) -> Option<String> {
    let own: Vec<&str> = stack
        .iter()
        .filter_map(|f| f.function.as_deref())
        .filter(|f| is_own(f))
        .take(SIGNATURE_FRAMES)
        .collect();
    if own.is_empty() {
        return None;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for name in own {
        for b in name.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Some(format!("{:012x}", h >> 16))
}

/// Runs `program ARGS` with `input` on stdin and returns its stdout, at most `within`; the
/// helper is killed when the time is up. `Err` says why not (its stderr when it failed).
async fn run_helper(
    program: &std::path::Path,
    args: &[String],
    input: Vec<u8>,
    within: std::time::Duration,
    what: &str,
) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncWriteExt;
    let work = async move {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the {what} {}: {e}", program.display()))?;
        let mut stdin = child.stdin.take().ok_or_else(|| format!("the {what} has no stdin"))?;
        let feed = async move {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let (_, out) = tokio::join!(feed, child.wait_with_output());
        let out = out.map_err(|e| format!("the {what} failed: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!("the {what} failed ({}): {}", out.status, err.trim()));
        }
        Ok(out.stdout)
    };
    match tokio::time::timeout(within, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("the {what} took longer than {} s; abandoned", within.as_secs_f64())),
    }
}

/// Runs `program symbolize` with the capture on stdin and reads its answer, at most
/// `within`. `Err` says why there is no stack.
pub async fn symbolize_in_helper(
    program: std::path::PathBuf,
    capture: Vec<u8>,
    within: std::time::Duration,
) -> Result<Symbolized, String> {
    let out = run_helper(&program, &["symbolize".into()], capture, within, "symbolizer").await?;
    serde_json::from_slice::<Symbolized>(&out)
        .map_err(|e| format!("the symbolizer's answer is unreadable: {e}"))
}

/// Takes the stack of the thread whose crash handler asked for it (`line`:
/// `VIGIL-PTRACE TID SIGNAL PC SP FP`) from outside, with `program stack-dump`: the raw
/// capture, or why not.
pub async fn dump_crashed_thread(
    program: &std::path::Path,
    pid: u32,
    line: &str,
    within: std::time::Duration,
) -> Result<Vec<u8>, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [_, tid, signal, pc, sp, fp] = f[..] else {
        return Err(format!("the crash handler's request is malformed: {line:?}"));
    };
    let args: Vec<String> = [
        "stack-dump",
        "--pid",
        &pid.to_string(),
        "--tid",
        tid,
        "--signal",
        signal,
        "--pc",
        pc,
        "--sp",
        sp,
        "--bp",
        fp,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_helper(program, &args, Vec::new(), within, "ptrace capture").await
}

/// Takes every thread's stack of a live (hung) process from outside, with `program
/// stack-dump --all`: the raw capture, or why not.
pub async fn dump_all_threads(
    program: std::path::PathBuf,
    pid: u32,
    within: std::time::Duration,
) -> Result<Vec<u8>, String> {
    let args = vec!["stack-dump".to_string(), "--pid".into(), pid.to_string(), "--all".into()];
    run_helper(&program, &args, Vec::new(), within, "ptrace capture").await
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "VIGIL-CRASH 1\nsignal 11\ntid 77\npc 0x5000\nthread vigil\n\
        frame 0x9000\nframe 0x7fff0010\nframe 0x5000\nframe 0x5100\nmaps\n\
        00004000-00006000 r-xp 00001000 08:01 12 /usr/bin/vigil\n\
        00003000-00004000 r--p 00000000 08:01 12 /usr/bin/vigil\n\
        7fff0000-7fff1000 r-xp 00000000 00:00 0 [vdso]\nend\n";

    #[test]
    fn a_capture_parses_and_starts_at_the_faulting_frame() {
        let c = Capture::parse(RAW.as_bytes()).unwrap();
        assert_eq!((c.signal, c.tid, c.pc, c.thread.as_str()), (11, 77, 0x5000, "vigil"));
        assert_eq!(c.crash_frames(), &[0x5000, 0x5100], "the handler's frames are dropped");
        let m = c.mapping(0x5000).unwrap();
        assert_eq!(m.path, "/usr/bin/vigil");
        assert_eq!(c.load_base(m), 0x3000);
        assert_eq!(c.maps.len(), 3);
        // The same file mapped again elsewhere (not contiguous) is not part of the image.
        let mut maps = c.maps.clone();
        maps.push(parse_map_line("00001000-00002000 r--p 00000000 08:01 12 /usr/bin/vigil").unwrap());
        assert_eq!(image_base(&maps, m), 0x3000);
    }

    #[test]
    fn a_cut_capture_is_an_error_not_a_stack() {
        let cut = &RAW[..RAW.len() - 4];
        assert!(Capture::parse(cut.as_bytes()).unwrap_err().contains("cut short"));
        assert!(Capture::parse(b"").is_err());
        assert!(Capture::parse(b"garbage\x00\xff").is_err());
    }

    fn frame(f: &str) -> Frame {
        Frame { function: Some(f.into()), file: None, line: None, module: None, address: "0x1".into() }
    }

    #[test]
    fn the_signature_hashes_the_innermost_own_names_only() {
        let a = vec![
            frame("strlen"),
            frame("vigil_actors::collector::fault::segv_libc"),
            frame("<vigil_actors::collector::CollectorActor<vigil_actors::collector::collectors::load::Load>>::tick"),
            frame("vigil_actors::x"),
            frame("vigil_actors::y"),
        ];
        let mut b = a.clone();
        b[0].address = "0x2".into();
        b[4] = frame("vigil_actors::other");
        b.insert(0, frame("__memcpy_avx"));
        let sig = signature(&a).unwrap();
        assert_eq!(sig.len(), 12);
        assert_eq!(signature(&b), Some(sig.clone()), "same innermost three of vigil's own frames");
        let c = vec![frame("vigil_actors::collector::fault::segv")];
        assert_ne!(signature(&c), Some(sig));
        assert_eq!(signature(&[frame("strlen")]), None);
        assert_eq!(innermost_own(&a), Some("vigil_actors::collector::fault::segv_libc"));
        assert_eq!(collector_on_stack(&a, &["cpu", "load"]), Some("load".into()));
        assert_eq!(collector_on_stack(&a, &["cpu"]), None, "only known collectors");
        assert_eq!(collector_on_stack(&c, &["load"]), None);
    }
}
