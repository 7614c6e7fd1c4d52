//! Small formatting helpers shared by the operator commands (`vigil status`, `vigil crashes`)
//! and anything else that shows durations, sizes or how a process ended to a person.

/// `1234` → `1.2 s`; `7384000` → `2h 03m 04s`; below a second, milliseconds.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h) {
        (0, 0) => format!("{m}m {s:02}s"),
        (0, _) => format!("{h}h {m:02}m {s:02}s"),
        _ => format!("{d}d {h:02}h {m:02}m"),
    }
}

/// `1536` → `1.5 KiB`; small counts stay exact (`812 B`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// How the collector ended, in a few words: `SIGSEGV`, `SIGSEGV (core)`, `exit 3`.
pub fn how(signal_name: Option<&str>, code: Option<i64>, core_dumped: bool) -> String {
    match (signal_name, code) {
        (Some(s), _) if core_dumped => format!("{s} (core dumped)"),
        (Some(s), _) => s.to_string(),
        (None, Some(c)) => format!("exit {c}"),
        (None, None) => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_and_bytes() {
        assert_eq!(how(Some("SIGSEGV"), None, false), "SIGSEGV");
        assert_eq!(how(Some("SIGABRT"), None, true), "SIGABRT (core dumped)");
        assert_eq!(how(None, Some(101), false), "exit 101");
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 20), "1.0 MiB");
    }
}
