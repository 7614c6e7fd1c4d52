//! `vigil crashes list | show ID`: the crash reports in `DATA_DIR/crashes`, read with
//! [`crate::reports`], as a table or one report with its stderr tail byte for byte.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use crate::config;
use crate::format::{how, human_bytes, human_ms};
use crate::reports::{list, show, Entry, ShowError, Shown};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Config file (default: $VIGIL_CONFIG, else /etc/vigil/vigil.toml if it exists, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides agent.data_dir); the reports are in its `crashes/`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Print JSON (as `/crashes` and `/crashes/{id}` serve it) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// With `list`: one row per crash signature (or, without a stack, per way of dying), with
    /// counts, the innermost function of vigil's own code, first and last time and newest report.
    #[arg(long)]
    group: bool,
}

#[derive(clap::Subcommand)]
enum Action {
    /// List the reports, newest first (the default).
    List,
    /// Print one report: its fields, then its stderr tail byte for byte.
    Show {
        /// The report ID (first column of `vigil crashes list`).
        id: String,
        /// Print only the stderr tail, byte for byte (for piping).
        #[arg(long, conflicts_with = "json")]
        stderr: bool,
    },
}

pub fn main(args: Args) -> ExitCode {
    let (_, cfg) = match config::load_or_exit(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let dir = config::data_dir(args.data_dir.as_deref(), &cfg).join("crashes");
    let mut out = std::io::stdout().lock();
    let result = match args.action.unwrap_or(Action::List) {
        Action::List if args.group => cmd_group(&dir, args.json, &mut out),
        Action::List => cmd_list(&dir, args.json, &mut out),
        Action::Show { id, stderr } => cmd_show(&dir, &id, args.json, stderr, &mut out),
    };
    match result.and_then(|code| out.flush().map(|_| code).map_err(|e| format!("cannot write: {e}"))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil crashes: {e}");
            ExitCode::from(1)
        }
    }
}

fn cmd_list(dir: &Path, json: bool, out: &mut impl Write) -> Result<ExitCode, String> {
    let entries = list(dir).map_err(|e| format!("cannot list crash reports: {e}"))?;
    let w = |e: std::io::Error| format!("cannot write: {e}");
    if json {
        let v: Vec<Value> = entries.iter().map(Entry::to_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default()).map_err(w)?;
    } else if entries.is_empty() {
        writeln!(out, "No crash reports in {}.", dir.display()).map_err(w)?;
    } else {
        out.write_all(render_table(&entries).as_bytes()).map_err(w)?;
        writeln!(out, "\n{} report(s) in {}; `vigil crashes show ID` for one.", entries.len(), dir.display())
            .map_err(w)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The reports that share a signature (or, where no stack was taken, a way of dying).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Group {
    pub signature: Option<String>,
    /// `SIGSEGV`, `exit code 3`, …: how the newest of them ended.
    pub how: String,
    /// The innermost function of vigil's own code on the newest one's stack.
    pub function: Option<String>,
    pub count: usize,
    pub first: String,
    pub last: String,
    pub latest_report: String,
}

/// Groups `entries` (newest first) by signature, the biggest group first; corrupt reports
/// are left out (the plain list shows them).
pub fn group(entries: &[Entry]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (e, r) in entries.iter().filter_map(|e| e.typed().map(|r| (e, r))) {
        let how = how(r.exit.signal_name.as_deref(), r.exit.code.map(i64::from), r.exit.core_dumped);
        let sig = r.forensics.signature.clone();
        let same = |g: &&mut Group| g.signature == sig && (sig.is_some() || g.how == how);
        if let Some(g) = groups.iter_mut().find(|g| same(g)) {
            g.count += 1;
            // RFC 3339 in UTC, as vigil writes it: ordered as text.
            if r.exit.at < g.first {
                g.first = r.exit.at.clone();
            }
            if r.exit.at > g.last {
                g.last = r.exit.at.clone();
            }
            continue;
        }
        let f = &r.forensics;
        let stack = f
            .stack
            .as_deref()
            .or_else(|| f.threads.as_ref().and_then(|t| t.first()).map(|t| t.stack.as_slice()));
        groups.push(Group {
            signature: sig,
            how,
            function: stack.and_then(vigil_actors::supervisor::stack::innermost_own).map(str::to_string),
            count: 1,
            first: r.exit.at.clone(),
            last: r.exit.at.clone(),
            latest_report: e.id.clone(),
        });
    }
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| b.last.cmp(&a.last)));
    groups
}

fn cmd_group(dir: &Path, json: bool, out: &mut impl Write) -> Result<ExitCode, String> {
    let entries = list(dir).map_err(|e| format!("cannot list crash reports: {e}"))?;
    let groups = group(&entries);
    let w = |e: std::io::Error| format!("cannot write: {e}");
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&groups).unwrap_or_default()).map_err(w)?;
        return Ok(ExitCode::SUCCESS);
    }
    if groups.is_empty() {
        writeln!(out, "No crash reports in {}.", dir.display()).map_err(w)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows =
        vec![["COUNT", "SIGNATURE", "HOW", "FUNCTION", "FIRST", "LAST", "NEWEST REPORT"].map(String::from)];
    for g in &groups {
        rows.push([
            g.count.to_string(),
            g.signature.clone().unwrap_or_else(|| "-".into()),
            g.how.clone(),
            g.function.clone().unwrap_or_else(|| "-".into()),
            g.first.clone(),
            g.last.clone(),
            g.latest_report.clone(),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    out.write_all(s.as_bytes()).map_err(w)?;
    let total: usize = groups.iter().map(|g| g.count).sum();
    writeln!(out, "\n{total} report(s) in {} group(s) in {}.", groups.len(), dir.display()).map_err(w)?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_show(
    dir: &Path,
    id: &str,
    json: bool,
    stderr_only: bool,
    out: &mut impl Write,
) -> Result<ExitCode, String> {
    let shown = show(dir, id).map_err(|e| match e {
        ShowError::InvalidId => format!("`{id}` is not a crash report ID (see `vigil crashes list`)"),
        ShowError::NotFound => format!("no crash report `{id}` in {}", dir.display()),
        ShowError::Unreadable(why) => format!("crash report `{id}` in {}: {why}", dir.display()),
    })?;
    let w = |e: std::io::Error| format!("cannot write: {e}");
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&shown.to_json()).unwrap_or_default()).map_err(w)?;
    } else if stderr_only {
        out.write_all(&shown.stderr).map_err(w)?;
    } else {
        out.write_all(render_header(&shown, dir).as_bytes()).map_err(w)?;
        out.write_all(&shown.stderr).map_err(w)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `vigil crashes list` table, one row per report; corrupt ones say so in place of
/// their fields.
pub fn render_table(entries: &[Entry]) -> String {
    let header =
        ["ID", "TIME", "REASON", "SIGNAL/EXIT", "IN FLIGHT", "INCARNATION", "STDERR"].map(String::from);
    // A corrupt report has only its ID and why; its text runs past the columns.
    let rows: Vec<Result<[String; 7], (String, String)>> = entries
        .iter()
        .map(|e| {
            let stderr = e.stderr_bytes.map_or("missing".to_string(), human_bytes);
            match (e.typed(), &e.report) {
                (Some(r), _) => Ok([
                    e.id.clone(),
                    r.exit.at.clone(),
                    r.exit.reason.clone(),
                    how(r.exit.signal_name.as_deref(), r.exit.code.map(i64::from), r.exit.core_dumped),
                    r.exit.collector_in_flight.clone().unwrap_or_else(|| "-".into()),
                    r.incarnation.to_string(),
                    stderr,
                ]),
                (None, Err(why)) => Err((e.id.clone(), why.clone())),
                (None, Ok(_)) => Err((e.id.clone(), "not a crash report".into())),
            }
        })
        .collect();
    let mut widths = header.clone().map(|c| c.chars().count());
    for r in &rows {
        match r {
            Ok(cells) => {
                for (w, c) in widths.iter_mut().zip(cells) {
                    *w = (*w).max(c.chars().count());
                }
            }
            Err((id, _)) => widths[0] = widths[0].max(id.chars().count()),
        }
    }
    let mut s = String::new();
    for r in std::iter::once(Ok(header.clone())).chain(rows) {
        let line = match r {
            Ok(cells) => {
                cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ")
            }
            Err((id, why)) => format!("{id:<w$}  !! {why}", w = widths[0]),
        };
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// `vigil crashes show` before the stderr bytes: the report's fields and where it is stored.
fn render_header(shown: &Shown, dir: &Path) -> String {
    let e = &shown.entry;
    let mut s = String::new();
    let mut field = |k: &str, v: String| s.push_str(&format!("{k:<20} {v}\n"));
    field("id", e.id.clone());
    if let Some(r) = e.typed() {
        field("time", r.exit.at.clone());
        field("reason", r.exit.reason.clone());
        if let Some(sig) = r.exit.signal {
            let name = r.exit.signal_name.clone().unwrap_or_default();
            field(
                "signal",
                format!("{name} ({sig}){}", if r.exit.core_dumped { ", core dumped" } else { "" }),
            );
        }
        if let Some(c) = r.exit.code {
            field("exit code", c.to_string());
        }
        if let Some(d) = &r.exit.detail {
            field("detail", d.clone());
        }
        if let Some(oom) = r.exit.oom_killed {
            field("oom killed", if oom { "yes (the kernel's OOM killer)".into() } else { "no".to_string() });
        }
        if let Some(p) = &r.forensics.panic {
            field("panic", format!("{} at {}", p.message, p.location));
        }
        field("collector in flight", r.exit.collector_in_flight.clone().unwrap_or_else(|| "-".into()));
        field("pid", r.pid.to_string());
        field("incarnation", r.incarnation.to_string());
        field("lived", human_ms(r.exit.uptime_ms));
        field("version", r.version.clone());
        field(
            "stderr",
            format!(
                "last {} of {} written",
                human_bytes(r.stderr_kept_bytes),
                human_bytes(r.stderr_total_bytes)
            ),
        );
    }
    field("files", format!("{0}/{1}.json, {0}/{1}.stderr", dir.display(), e.id));
    if let Some(r) = e.typed() {
        s.push_str(&render_stack(&r.forensics));
    }
    s.push_str(&format!("--- stderr ({} bytes, byte-exact) ---\n", shown.stderr.len()));
    s
}

/// Where it died: `#N function (file:line) module`, `#0` innermost, `??` for what the
/// debug info does not say (CONTRACT §6); or why there is no stack.
fn render_stack(f: &vigil_actors::supervisor::crash_report::Forensics) -> String {
    let mut s = String::new();
    if let Some(err) = &f.stack_error {
        s.push_str(&format!("{:<20} {err}\n", "stack"));
    }
    let how = f.capture.as_deref().unwrap_or("??");
    let sig = f.signature.as_deref().unwrap_or("-");
    // A hang: every thread, each as a stack of its own.
    for t in f.threads.iter().flatten() {
        s.push_str(&format!("--- stack of thread {} (hung; captured {how}, signature {sig}) ---\n", t.name));
        push_frames(&mut s, &t.stack);
    }
    let Some(stack) = &f.stack else { return s };
    let thread = f.thread.as_deref().unwrap_or("??");
    s.push_str(&format!("--- stack of thread {thread} (captured {how}, signature {sig}) ---\n"));
    push_frames(&mut s, stack);
    if f.frames_omitted > 0 {
        s.push_str(&format!("… {} more frames omitted\n", f.frames_omitted));
    }
    s
}

fn push_frames(s: &mut String, stack: &[vigil_actors::supervisor::stack::Frame]) {
    s.push_str(&vigil_actors::supervisor::stack::frame_lines(stack));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_actors::supervisor::crash_report::{self, CrashReport};

    fn report(id: &str, signal: Option<i32>, code: Option<i32>) -> CrashReport {
        CrashReport {
            id: id.into(),
            version: "0.1.0".into(),
            pid: 42,
            incarnation: 3,
            exit: crash_report::LastExit {
                at: "2026-11-27T04:00:00Z".into(),
                reason: if signal.is_some() { "signaled" } else { "exited" }.into(),
                code,
                signal,
                signal_name: signal.map(vigil_actors::signals::signal_name),
                core_dumped: false,
                uptime_ms: 1500,
                collector_in_flight: Some("dns".into()),
                crash_report: Some(id.into()),
                detail: None,
                oom_killed: None,
            },
            stderr_total_bytes: 5,
            stderr_kept_bytes: 5,
            forensics: Default::default(),
        }
    }

    #[test]
    fn lists_newest_first_with_corrupt_reports_marked() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = ("20260101T000000.000Z-1", "20260102T000000.000Z-2", "20260103T000000.000Z-3");
        crash_report::write(dir.path(), &report(a, Some(11), None), b"\xffa").unwrap();
        crash_report::write(dir.path(), &report(b, None, Some(3)), b"bb").unwrap();
        std::fs::write(dir.path().join(format!("{c}.json")), b"{ torn").unwrap();
        let entries = list(dir.path()).unwrap();
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [c, b, a]);
        assert!(entries[0].report.as_ref().unwrap_err().contains("not a crash report"));
        assert_eq!(entries[0].stderr_bytes, None);
        assert_eq!(entries[2].stderr_bytes, Some(2));
        assert_eq!(entries[2].to_json()["signal_name"], "SIGSEGV");
        assert_eq!(entries[2].to_json()["stderr_bytes"], 2);
        assert!(entries[0].to_json()["error"].is_string());

        let table = render_table(&entries);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID ") && lines[0].contains("SIGNAL/EXIT"), "{table}");
        assert!(lines[1].starts_with(c) && lines[1].contains("!! not a crash report"), "{table}");
        assert!(lines[2].contains("exit 3") && lines[2].contains("dns"), "{table}");
        assert!(lines[3].contains("SIGSEGV") && lines[3].contains("signaled"), "{table}");
    }

    #[test]
    fn show_refuses_ids_that_are_not_report_names() {
        let dir = tempfile::tempdir().unwrap();
        let crashes = dir.path().join("crashes");
        std::fs::create_dir(&crashes).unwrap();
        std::fs::write(dir.path().join("secret.json"), b"{}").unwrap();
        for bad in ["../secret", "..", "a/b", "a\0b", "", ".hidden", "/etc/passwd"] {
            assert_eq!(show(&crashes, bad).err(), Some(ShowError::InvalidId), "{bad:?}");
        }
        assert_eq!(show(&crashes, "20260101T000000.000Z-1").err(), Some(ShowError::NotFound));
        let id = "20260101T000000.000Z-9";
        crash_report::write(&crashes, &report(id, Some(11), None), b"x\xfe\n").unwrap();
        let s = show(&crashes, id).unwrap();
        assert_eq!(s.stderr, b"x\xfe\n");
        let j = s.to_json();
        assert_eq!(j["stderr"], "x\u{fffd}\n");
        assert_eq!(j["stderr_lossy"], true);
        let header = render_header(&s, &crashes);
        assert!(header.contains("SIGSEGV (11)") && header.ends_with("byte-exact) ---\n"), "{header}");
    }

    #[test]
    fn group_counts_by_signature_or_by_how_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let with_sig = |id: &str, sig: &str| {
            let mut r = report(id, Some(11), None);
            r.exit.at = format!("2026-11-27T04:00:0{}Z", &id[id.len() - 1..]);
            r.forensics.signature = Some(sig.into());
            r
        };
        let ids: Vec<String> = (1..=6).map(|n| format!("20260101T00000{n}.000Z-{n}")).collect();
        crash_report::write(dir.path(), &with_sig(&ids[0], "aaaa"), b"").unwrap();
        crash_report::write(dir.path(), &with_sig(&ids[1], "bbbb"), b"").unwrap();
        crash_report::write(dir.path(), &with_sig(&ids[2], "aaaa"), b"").unwrap();
        crash_report::write(dir.path(), &report(&ids[3], None, Some(3)), b"").unwrap();
        crash_report::write(dir.path(), &report(&ids[4], None, Some(3)), b"").unwrap();
        crash_report::write(dir.path(), &report(&ids[5], Some(6), None), b"").unwrap();
        let groups = group(&list(dir.path()).unwrap());
        let summary: Vec<(Option<&str>, &str, usize, &str)> = groups
            .iter()
            .map(|g| (g.signature.as_deref(), g.how.as_str(), g.count, g.latest_report.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                // Equal counts: the one seen last first.
                (Some("aaaa"), "SIGSEGV", 2, ids[2].as_str()),
                (None, "exit 3", 2, ids[4].as_str()),
                (Some("bbbb"), "SIGSEGV", 1, ids[1].as_str()),
                (None, "SIGABRT", 1, ids[5].as_str()),
            ]
        );
        let a = &groups[0];
        assert_eq!((a.first.as_str(), a.last.as_str()), ("2026-11-27T04:00:01Z", "2026-11-27T04:00:03Z"));
    }
}
