//! One pass over every `/proc/<pid>/stat`, read into one reused buffer and split in place:
//! the collectors that scan processes take a handful of fields, and a full parse of the 52
//! fields (what `procfs::process::Stat` does, with a `String` for `comm` and every field
//! converted) was most of their user time. The kernel's cost (open, format, close) stays:
//! it is the floor docs/performance.md measures against.
//!
//! Layout (proc(5)): `pid (comm) state f4 f5 …`. `comm` may contain spaces and parentheses,
//! so it ends at the **last** `)`; the fields after it are separated by single spaces.

use std::io::{self, Read};
use std::path::Path;

/// One process's stat line.
pub struct StatLine<'a> {
    /// `comm`: the executable name the kernel keeps (at most 15 bytes), as bytes.
    pub comm: &'a [u8],
    /// The state letter (`R`, `S`, `D`, …).
    pub state: u8,
    /// The fields from `ppid` (field 4) on.
    rest: &'a [u8],
}

impl<'a> StatLine<'a> {
    /// Splits a stat line; `None` when it has no `(comm) state` part.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        let open = line.iter().position(|&b| b == b'(')?;
        let close = line.iter().rposition(|&b| b == b')')?;
        let comm = line.get(open + 1..close)?;
        let after = line.get(close + 2..)?; // ") "
        let state = *after.first()?;
        let rest = after.get(2..).unwrap_or_default();
        Some(Self { comm, state, rest })
    }

    /// Field `n` as proc(5) numbers them (1 = pid, 3 = state; `n` ≥ 4), as an unsigned
    /// number; `None` when missing or not a number.
    pub fn field(&self, n: usize) -> Option<u64> {
        let f = self.rest.split(|&b| b == b' ').nth(n.checked_sub(4)?)?;
        let f = f.strip_suffix(b"\n").unwrap_or(f);
        std::str::from_utf8(f).ok()?.parse().ok()
    }
}

/// Calls `each(pid, line)` for every process under `proc_dir` whose stat could be read and
/// split. A process that exits between the listing and the read is skipped; the count of
/// processes skipped for any other reason is returned. Only listing `proc_dir` is an error.
pub fn for_each(proc_dir: &Path, mut each: impl FnMut(u32, &StatLine)) -> io::Result<usize> {
    let mut path = proc_dir.to_path_buf();
    let mut buf = Vec::with_capacity(1024);
    let mut unreadable = 0;
    for entry in std::fs::read_dir(proc_dir)?.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).and_then(|n| n.parse().ok())
        else {
            continue;
        };
        path.push(&name);
        path.push("stat");
        buf.clear();
        let read = std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut buf));
        path.pop();
        path.pop();
        match read {
            Ok(_) => match StatLine::parse(&buf) {
                Some(line) => each(pid, &line),
                None => unreadable += 1,
            },
            // Exited after the listing: ENOENT, or ESRCH from a reaped task.
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(_) => unreadable += 1,
        }
    }
    Ok(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_after_a_comm_with_spaces_and_parentheses() {
        let line = b"4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 23 0 0 20 0 3 0 987 123456 412 18446744073709551615\n";
        let s = StatLine::parse(line).unwrap();
        assert_eq!(s.comm, b"a) b (c)");
        assert_eq!(s.state, b'S');
        assert_eq!(s.field(4), Some(1), "ppid");
        assert_eq!(s.field(14), Some(17), "utime");
        assert_eq!(s.field(15), Some(23), "stime");
        assert_eq!(s.field(20), Some(3), "num_threads");
        assert_eq!(s.field(22), Some(987), "starttime");
        assert_eq!(s.field(24), Some(412), "rss");
        assert_eq!(s.field(8), None, "tty_pgrp -1 is not unsigned");
        assert_eq!(s.field(99), None);
        assert_eq!(s.field(3), None, "the state is not a numbered field here");
    }

    #[test]
    fn damaged_lines_are_none_not_panics() {
        for line in [&b""[..], b"1 (x", b"1 x) S", b"1 (x)", b"1 (x) ", b")(", b"1 (x)S"] {
            let s = StatLine::parse(line);
            if let Some(s) = s {
                let _ = s.field(20);
            }
        }
        assert!(StatLine::parse(b"1 (x)").is_none());
        assert_eq!(StatLine::parse(b"1 (x) R").unwrap().field(4), None);
    }

    #[test]
    fn live_proc_lists_this_process() {
        let me = std::process::id();
        let mut seen = None;
        for_each(Path::new("/proc"), |pid, line| {
            if pid == me {
                seen = Some((line.state, line.field(20)));
            }
        })
        .unwrap();
        let (state, threads) = seen.expect("this process is listed");
        assert!(b"RS".contains(&state), "main thread {}", state as char);
        assert!(threads.unwrap() >= 2, "the harness's main thread and this test's");
        // The tasks of this process: the one reading is running.
        let mut running = 0;
        for_each(Path::new("/proc/self/task"), |_, line| running += usize::from(line.state == b'R')).unwrap();
        assert!(running >= 1);
    }
}
