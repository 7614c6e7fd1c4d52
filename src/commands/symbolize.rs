//! `vigil symbolize` (internal): reads a raw crash capture on stdin
//! ([`vigil_actors::supervisor::stack::Capture`]) and prints the symbolized stack as JSON
//! ([`vigil_actors::supervisor::stack::Symbolized`]).
//!
//! The supervisor runs it as a short-lived child with a deadline, so that reading the debug
//! info of whatever binaries the dead collector had mapped (large, possibly damaged or
//! replaced by an upgrade) can neither crash nor stall the supervisor.
//!
//! Each address is looked up in the file that was mapped there: its DWARF (the release
//! profile keeps `debug = 1`: functions, inlined frames, files and lines) gives the frames,
//! innermost inlined function first; where there is no DWARF (Debian's libc6), the symbol
//! table gives the function. Addresses are turned into the file's own addresses with the
//! load base of its lowest mapping (position-independent files) or used as they are (fixed
//! executables). Return addresses (every frame but the faulting one) are looked up one byte
//! earlier, inside the call that returns there.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vigil_actors::collector::crash_capture::MAX_FRAMES;
use vigil_actors::supervisor::stack::{Capture, Frame, Symbolized, ThreadStack};

pub fn main() -> ExitCode {
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut raw) {
        eprintln!("vigil symbolize: cannot read stdin: {e}");
        return ExitCode::from(1);
    }
    let capture = match Capture::parse(&raw) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil symbolize: {e}");
            return ExitCode::from(1);
        }
    };
    let out = symbolize(&capture);
    println!("{}", serde_json::to_string(&out).unwrap_or_default());
    ExitCode::SUCCESS
}

/// One mapped file, opened once.
struct Module {
    path: String,
    loader: Option<addr2line::Loader>,
    /// The function symbols of its separate debug file (start, size, name), read the first
    /// time the file itself names nothing.
    debug: Option<Vec<(u64, u64, String)>>,
    /// Whether addresses in it are relative to where it was loaded (ET_DYN).
    relocatable: bool,
}

impl Module {
    /// The function covering `probe` in the separate debug file's symbol table (Debian's
    /// libc6-dbg: the same addresses, and the internal functions, such as `__strlen_avx2`,
    /// that the library's own dynamic symbols leave out). Only its symbol table is read:
    /// parsing libc's compressed DWARF would cost more than the rest of the stack.
    fn debug_symbol(&mut self, probe: u64) -> Option<String> {
        let path = &self.path;
        let symbols = self.debug.get_or_insert_with(|| function_symbols(Path::new(path)));
        let i = symbols.partition_point(|(start, _, _)| *start <= probe).checked_sub(1)?;
        let (start, size, name) = &symbols[i];
        (probe < start + (*size).max(1)).then(|| addr2line::demangle_auto(name.into(), None).into_owned())
    }
}

fn open_module(path: &str) -> Module {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let relocatable = elf_type(path) != Some(2);
    Module { path: path.to_string(), loader: addr2line::Loader::new(path).ok(), debug: None, relocatable }
}

/// The frames (inlined ones first) at `probe` in one file's debug info, else its symbol
/// table; `function` is `None` where neither names it.
fn frames_at(loader: &addr2line::Loader, probe: u64, module: &str, address: &str) -> Vec<Frame> {
    let mut found = Vec::new();
    if let Ok(mut it) = loader.find_frames(probe) {
        while let Ok(Some(f)) = it.next() {
            let function = f.function.as_ref().and_then(|n| n.demangle().ok()).map(|s| s.into_owned());
            let (file, line) = match &f.location {
                Some(l) => (l.file.map(short_path), l.line),
                None => (None, None),
            };
            found.push(Frame { function, file, line, module: Some(module.into()), address: address.into() });
        }
    }
    if found.iter().all(|f| f.function.is_none()) {
        let symbol = loader.find_symbol(probe).map(|s| addr2line::demangle_auto(s.into(), None).into_owned());
        match found.first_mut() {
            Some(f) => f.function = symbol,
            None => found.push(Frame {
                function: symbol,
                file: None,
                line: None,
                module: Some(module.into()),
                address: address.into(),
            }),
        }
    }
    found
}

/// The function symbols of `path`'s separate debug file, sorted by address (empty without one).
fn function_symbols(path: &Path) -> Vec<(u64, u64, String)> {
    use object::{Object, ObjectSymbol};
    let Some(debug) = debug_file(path) else { return Vec::new() };
    let Ok(file) = std::fs::File::open(debug) else { return Vec::new() };
    // SAFETY: a read-only map of a file this short-lived helper only reads.
    let Ok(map) = (unsafe { memmap2::Mmap::map(&file) }) else { return Vec::new() };
    let Ok(obj) = object::File::parse(&*map) else { return Vec::new() };
    let mut v: Vec<(u64, u64, String)> = obj
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
        .collect();
    v.sort();
    v
}

/// The separate debug file of `path`, where one is installed: by its build ID under
/// `/usr/lib/debug/.build-id/`, else by its `.gnu_debuglink` name next to it, in `.debug/`
/// beside it, or under `/usr/lib/debug/` + its directory.
fn debug_file(path: &Path) -> Option<PathBuf> {
    use object::Object;
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: a read-only map of a file this short-lived helper only reads.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let obj = object::File::parse(&*map).ok()?;
    if let Ok(Some(id)) = obj.build_id() {
        if id.len() > 1 {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let p = PathBuf::from(format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let (name, _crc) = obj.gnu_debuglink().ok()??;
    let name = std::str::from_utf8(name).ok()?;
    let dir = path.parent()?;
    let under_debug = Path::new("/usr/lib/debug").join(dir.strip_prefix("/").unwrap_or(dir)).join(name);
    [dir.join(name), dir.join(".debug").join(name), under_debug]
        .into_iter()
        .find(|c| c.is_file() && c != path)
}

/// The ELF `e_type` of a file (2: a fixed-address executable, 3: position independent).
fn elf_type(path: &str) -> Option<u16> {
    let mut head = [0u8; 18];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    (head[..4] == *b"\x7fELF").then(|| u16::from_le_bytes([head[16], head[17]]))
}

pub fn symbolize(c: &Capture) -> Symbolized {
    let mut modules: HashMap<String, Module> = HashMap::new();
    let frames = c.crash_frames();
    let exact = frames.first().filter(|&&ip| ip == c.pc).is_some();
    let (mut stack, omitted) = symbolize_frames(c, frames, exact, c.omitted, &mut modules);
    if c.panic {
        vigil_actors::supervisor::stack::skip_panic_machinery(&mut stack);
    }
    // A hang's threads: each first frame is where the thread was stopped (an instruction
    // pointer, looked up as it is).
    // By thread ID: the main thread (the collectors') first, however they were written.
    let mut tasks: Vec<_> = c.tasks.iter().collect();
    tasks.sort_by_key(|t| t.tid);
    let threads = tasks
        .into_iter()
        .map(|t| ThreadStack {
            name: t.name.clone(),
            stack: symbolize_frames(c, &t.frames, true, t.omitted, &mut modules).0,
        })
        .collect();
    Symbolized {
        thread: c.thread.clone(),
        stack,
        frames_omitted: omitted,
        capture: c.capture.clone(),
        threads,
    }
}

/// Symbolizes one thread's frames (innermost first; `exact`: the first is the faulting
/// instruction, not a return address): at most [`MAX_FRAMES`], and how many were left out.
fn symbolize_frames(
    c: &Capture,
    frames: &[u64],
    exact: bool,
    omitted: usize,
    modules: &mut HashMap<String, Module>,
) -> (Vec<Frame>, usize) {
    let mut stack = Vec::new();
    for (i, &ip) in frames.iter().enumerate() {
        let address = format!("{ip:#x}");
        let Some(m) = c.mapping(ip) else {
            stack.push(Frame { function: None, file: None, line: None, module: None, address });
            continue;
        };
        let name = m.path.rsplit('/').next().unwrap_or(&m.path).to_string();
        let base = c.load_base(m);
        let module = modules.entry(m.path.clone()).or_insert_with(|| open_module(&m.path));
        // The faulting frame is the instruction itself; the others return there.
        let lookup = if i == 0 && exact { ip } else { ip.saturating_sub(1) };
        let probe = if module.relocatable { lookup.saturating_sub(base) } else { lookup };
        let mut found =
            module.loader.as_ref().map(|l| frames_at(l, probe, &name, &address)).unwrap_or_default();
        if found.iter().all(|f| f.function.is_none()) {
            if let Some(symbol) = module.debug_symbol(probe) {
                match found.first_mut() {
                    Some(f) => f.function = Some(symbol),
                    None => found.push(Frame {
                        function: Some(symbol),
                        file: None,
                        line: None,
                        module: Some(name.clone()),
                        address: address.clone(),
                    }),
                }
            }
        }
        if found.is_empty() {
            found.push(Frame { function: None, file: None, line: None, module: Some(name), address });
        }
        stack.extend(found);
    }
    let left_out = stack.len().saturating_sub(MAX_FRAMES) + omitted;
    stack.truncate(MAX_FRAMES);
    (stack, left_out)
}

/// Source paths as the repository names them (`actors/src/…`), not the build machine's
/// absolute path; paths of the standard library and dependencies stay as they are.
fn short_path(p: &str) -> String {
    for marker in ["/actors/src/", "/src/"] {
        if let Some(i) = p.find(marker) {
            let rest = &p[i + 1..];
            if !p.contains("/.cargo/") && !p.contains("/rustc/") {
                return rest.to_string();
            }
        }
    }
    p.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary symbolizes an address of one of its own functions.
    #[test]
    fn an_address_in_this_binary_names_its_function_file_and_line() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let ip = an_address_in_this_binary as *const () as u64;
        let raw = format!(
            "VIGIL-CRASH 1\nsignal 11\ntid 1\npc {ip:#x}\nthread t\nframe {ip:#x}\nmaps\n{maps}end\n"
        );
        let c = Capture::parse(raw.as_bytes()).unwrap();
        let s = symbolize(&c);
        let f = &s.stack[0];
        assert!(
            f.function.as_deref().unwrap_or_default().ends_with("an_address_in_this_binary"),
            "{:?}",
            s.stack
        );
        assert_eq!(f.file.as_deref(), Some("src/commands/symbolize.rs"), "{f:?}");
        assert!(f.line.is_some());
    }

    #[inline(never)]
    fn an_address_in_this_binary() {}
}
