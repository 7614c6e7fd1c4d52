//! `GET /`: the status page. One self-contained HTML document rendered on the server from
//! what `/status` publishes, the ring of the last deaths and the newest crash report: no
//! script, no external asset, readable with JavaScript off; it reloads itself every
//! [`REFRESH_SECS`]. Every value that comes from outside vigil's code (host name, tags, names,
//! errors, stack frames, stderr) goes through [`esc`], and the answer carries a
//! Content-Security-Policy that forbids scripts outright, so nothing reflected can run.
//!
//! It costs nothing when no one looks: it is rendered per request on an endpoint worker from
//! data that is published anyway; nothing per sample is kept for it.

use std::fmt::Write as _;

use vigil_actors::supervisor::deaths::Death;
use vigil_actors::supervisor::stack::frame_lines;
use vigil_actors::supervisor::StatusSnapshot;
use vigil_actors::upload::SinkStatus;

use crate::format::{human_bytes, human_ms};

/// The page reloads itself this often.
pub const REFRESH_SECS: u32 = 10;
/// The answer's Content-Security-Policy: inline styles only; no script, no fetch, no frame.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// Lines of the newest crash report's stderr tail shown (the whole tail is one link away).
pub const STDERR_LINES: usize = 40;
/// How long the page waits for the crash directory before it is sent without the newest report.
pub const DISK_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);
/// Frames of the newest crash's stack shown.
pub const STACK_FRAMES: usize = 64;

/// Mark colours, picked per signature (or per signal where no stack was taken).
const PALETTE: [&str; 8] =
    ["#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The span of the second, close-up timeline.
pub const RECENT_MS: i64 = 10 * 60_000;

/// The newest crash report, as the page shows it.
pub struct LatestCrash {
    pub id: String,
    pub report: Option<vigil_actors::supervisor::crash_report::CrashReport>,
    pub stderr: Vec<u8>,
}

/// Everything the page shows.
pub struct Page<'a> {
    pub status: &'a StatusSnapshot,
    pub sinks: &'a [SinkStatus],
    pub deaths: &'a [Death],
    pub latest: Option<&'a LatestCrash>,
    /// Why the newest report could not be read in time, instead of it.
    pub disk_error: Option<&'a str>,
    pub now_ms: i64,
}

/// `s` escaped for HTML text and for attribute values in double or single quotes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What a death's mark is coloured by: its signature, else how it ended.
pub fn colour_key(d: &Death) -> String {
    d.signature.clone().unwrap_or_else(|| d.how())
}

fn colour(key: &str) -> &'static str {
    // FNV-1a: the same key gets the same colour on every page and every host.
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    PALETTE[(h % PALETTE.len() as u64) as usize]
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
th{background:#eee}.tag{display:inline-block;background:#e4e9f2;border-radius:3px;padding:0 .4em;margin-right:.3em}\
.state-running,.state-ok{color:#1a7f37;font-weight:bold}.state-backoff,.state-starting,.state-error{color:#b35900;font-weight:bold}\
.state-crash_loop,.state-quarantined,.state-stopped,.state-stopping{color:#c00;font-weight:bold}\
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow:auto;max-height:30em}\
.bar{width:16em;height:.9em;background:#e5e5e5;border:1px solid #bbb;display:inline-block;vertical-align:middle}\
.fill{height:100%;background:#4a7bd0}.spool{white-space:nowrap}.muted{color:#777}svg text{font-size:11px;fill:#555}";

/// The whole page.
pub fn render(p: &Page) -> String {
    let s = p.status;
    let c = &s.collector;
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
<meta name=\"viewport\" content=\"width=device-width\">\
<title>vigil on {host}</title><style>{STYLE}</style></head><body>\n\
<h1>vigil on <span id=\"host\">{host}</span></h1>\n<p>version {version} · supervisor pid {pid} · up {up}</p>\n<p id=\"tags\">",
        host = esc(&s.host),
        version = esc(&s.version),
        pid = s.pid,
        up = human_ms(s.uptime_ms),
    );
    if s.tags.is_empty() {
        h.push_str("<span class=\"muted\">no agent tags</span>");
    }
    for (k, v) in &s.tags {
        let _ = write!(h, "<span class=\"tag\">{}={}</span>", esc(k), esc(v));
    }
    h.push_str("</p>\n");

    // The collector process.
    let state = c.state.as_str();
    let _ = write!(
        h,
        "<h2>Collector</h2>\n<table id=\"collector\"><tr><th>state</th><td class=\"state-{state}\">{state}</td></tr>\
<tr><th>pid</th><td>{pid}</td></tr><tr><th>incarnation</th><td>{inc}</td></tr>\
<tr><th>up</th><td>{up}</td></tr><tr><th>restarts</th><td>{restarts}</td></tr><tr><th>heartbeat RTT</th><td>{rtt}</td></tr>",
        pid = c.pid.map_or("–".into(), |p| p.to_string()),
        inc = c.incarnation,
        up = c.uptime_ms.map_or("–".into(), human_ms),
        restarts = c.restarts,
        rtt = c.heartbeat.rtt_ms.map_or("–".into(), |ms| format!("{ms:.2} ms")),
    );
    if let Some(ms) = c.next_restart_in_ms {
        let _ = write!(h, "<tr><th>next restart in</th><td>{}</td></tr>", human_ms(ms));
    }
    if let Some(e) = &c.last_exit {
        let how = crate::format::how(e.signal_name.as_deref(), e.code.map(i64::from), e.core_dumped);
        let _ = write!(
            h,
            "<tr><th>last exit</th><td>{at}: {reason}, {how} after {lived}{inflight}{report}</td></tr>",
            at = esc(&e.at),
            reason = esc(&e.reason),
            how = esc(&how),
            lived = human_ms(e.uptime_ms),
            inflight = e
                .collector_in_flight
                .as_deref()
                .map(|n| format!(", in <b>{}</b>", esc(n)))
                .unwrap_or_default(),
            report = e
                .crash_report
                .as_deref()
                .map(|r| format!(", report <a href=\"/crashes/{0}\">{0}</a>", esc(r)))
                .unwrap_or_default(),
        );
    }
    if let Some(e) = &c.spawn_error {
        let _ = write!(h, "<tr><th>cannot start</th><td>{}</td></tr>", esc(e));
    }
    h.push_str("</table>\n");

    timeline(&mut h, p);
    collectors(&mut h, s);
    sinks(&mut h, p.sinks);
    latest_crash(&mut h, p.latest, p.disk_error);
    let _ = writeln!(
        h,
        "<p class=\"muted\">Rendered {} · JSON at <a href=\"/status\">/status</a> · \
<a href=\"/metrics\">/metrics</a> · <a href=\"/crashes\">/crashes</a></p>\n</body></html>",
        esc(&rfc3339(p.now_ms))
    );
    h
}

/// The crash timelines: the last 24 h with the hourly counts as bars below, then the last
/// [`RECENT_MS`], where a crash loop's restarts and the backoff before each are apart. One mark per death,
/// coloured by signature (or by signal where no stack was taken), the backoff drawn after it.
fn timeline(h: &mut String, p: &Page) {
    let day: Vec<&Death> =
        p.deaths.iter().filter(|d| d.at_ms >= p.now_ms - DAY_MS && d.at_ms <= p.now_ms + 60_000).collect();
    let recent: Vec<&Death> = day.iter().copied().filter(|d| d.at_ms >= p.now_ms - RECENT_MS).collect();
    let per_hour = vigil_actors::supervisor::deaths::per_hour(day.iter().map(|d| d.at_ms), p.now_ms);
    let _ = writeln!(h, "<h2>Crashes, last 24 h: <span id=\"crash-total\">{}</span></h2>", day.len());
    strip(h, "timeline", p.now_ms, DAY_MS, 4, &day, Some(&per_hour));
    let _ = writeln!(h, "<h2>Last 10 minutes: <span id=\"crash-recent\">{}</span></h2>", recent.len());
    strip(h, "timeline-recent", p.now_ms, RECENT_MS, 5, &recent, None);
    // The legend: each colour, what it stands for, how many.
    let mut keys: Vec<(String, usize)> = Vec::new();
    for d in &day {
        let k = colour_key(d);
        match keys.iter_mut().find(|(key, _)| *key == k) {
            Some((_, n)) => *n += 1,
            None => keys.push((k, 1)),
        }
    }
    keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if day.is_empty() {
        h.push_str("<p class=\"muted\">No crashes in the last 24 hours.</p>\n");
    } else {
        h.push_str("<p id=\"legend\">");
        for (k, n) in &keys {
            let _ = write!(
                h,
                "<span class=\"tag\"><span style=\"color:{}\">●</span> {} × {n}</span>",
                colour(k),
                esc(k)
            );
        }
        h.push_str(" <span class=\"muted\">(yellow: the backoff before the restart)</span></p>\n");
    }
}

/// One timeline SVG over the `span_ms` before `now_ms` in `grid` labelled parts, with the
/// hourly bars when given.
fn strip(
    h: &mut String,
    id: &str,
    now_ms: i64,
    span_ms: i64,
    grid: i64,
    deaths: &[&Death],
    bars: Option<&[u32]>,
) {
    const W: f64 = 960.0;
    const LEFT: f64 = 40.0;
    const PLOT: f64 = W - LEFT - 10.0;
    let from = now_ms - span_ms;
    let x = |ms: i64| LEFT + PLOT * ((ms - from).clamp(0, span_ms) as f64 / span_ms as f64);
    let height = if bars.is_some() { 150 } else { 90 };
    let axis = height - 10;
    let _ = write!(
        h,
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\" role=\"img\" aria-label=\"crash timeline\">\n\
<rect x=\"{LEFT}\" y=\"10\" width=\"{PLOT}\" height=\"60\" fill=\"#fff\" stroke=\"#ccc\"/>\n"
    );
    for i in 0..=grid {
        let gx = LEFT + PLOT * i as f64 / grid as f64;
        let ago = span_ms * (grid - i) / grid;
        let label = match ago {
            0 => "now".to_string(),
            a if a % 3_600_000 == 0 => format!("-{}h", a / 3_600_000),
            a => format!("-{}m", a / 60_000),
        };
        let _ = writeln!(
            h,
            "<line x1=\"{gx:.1}\" y1=\"10\" x2=\"{gx:.1}\" y2=\"{axis}\" stroke=\"#e3e3e3\"/>\
<text x=\"{gx:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            height - 2
        );
    }
    // Backoff first, so the marks are drawn over it.
    for d in deaths {
        if let Some(delay) = d.restart_delay_ms.filter(|&ms| ms > 0) {
            let (x0, x1) = (x(d.at_ms), x(d.at_ms + delay as i64));
            let _ = writeln!(
                h,
                "<rect class=\"backoff\" x=\"{x0:.2}\" y=\"36\" width=\"{:.2}\" height=\"8\" fill=\"#f2c94c\" opacity=\"0.7\"/>",
                (x1 - x0).max(1.0)
            );
        }
    }
    for d in deaths {
        let key = colour_key(d);
        let mut title = format!("{} {}", rfc3339(d.at_ms), d.how());
        if let Some(c) = &d.collector {
            let _ = write!(title, " in {c}");
        }
        if let Some(sig) = &d.signature {
            let _ = write!(title, ", signature {sig}");
        }
        if let Some(ms) = d.restart_delay_ms {
            let _ = write!(title, ", restarted after {}", human_ms(ms));
        }
        let _ = writeln!(
            h,
            "<circle class=\"crash\" cx=\"{:.2}\" cy=\"40\" r=\"5\" fill=\"{}\" data-at=\"{}\" data-how=\"{}\" data-key=\"{}\"><title>{}</title></circle>",
            x(d.at_ms),
            colour(&key),
            d.at_ms,
            esc(&d.how()),
            esc(&key),
            esc(&title)
        );
    }
    let _ = write!(h, "<text x=\"2\" y=\"44\">deaths</text>");
    if let Some(per_hour) = bars {
        let max = per_hour.iter().copied().max().unwrap_or(0).max(1);
        for (i, &n) in per_hour.iter().enumerate() {
            let bh = 50.0 * n as f64 / max as f64;
            let bx = LEFT + PLOT * i as f64 / per_hour.len() as f64;
            let _ = writeln!(
                h,
                "<rect class=\"hour\" data-count=\"{n}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#9db4de\"><title>{n} crashes</title></rect>",
                bx + 1.0,
                135.0 - bh,
                PLOT / per_hour.len() as f64 - 2.0,
            );
        }
        let _ = write!(h, "<text x=\"2\" y=\"130\">per h</text><text x=\"2\" y=\"92\">{max}</text>");
    }
    h.push_str("\n</svg>\n");
}

fn collectors(h: &mut String, s: &StatusSnapshot) {
    h.push_str(
        "<h2>Collectors</h2>\n<table id=\"collectors\"><tr><th>name</th><th>state</th><th>last duration</th>\
<th>collections</th><th>samples</th><th>errors</th><th>crashes</th><th>last error</th></tr>\n",
    );
    for e in &s.collectors {
        let state = if let Some(until) = &e.quarantined_until {
            format!("{} until {}", e.state, esc(until))
        } else {
            e.state.to_string()
        };
        let _ = writeln!(
            h,
            "<tr class=\"collector\"><td>{name}</td><td class=\"state-{cls}\">{state}</td><td>{dur}</td><td>{coll}</td>\
<td>{samples}</td><td>{errors}</td><td>{crashes}</td><td>{err}</td></tr>",
            name = esc(&e.name),
            cls = e.state,
            dur = e.last_duration_ms.map_or("–".into(), |ms| format!("{ms:.2} ms")),
            coll = e.collections,
            samples = e.samples,
            errors = e.errors,
            crashes = e.crashes,
            err = e.last_error.as_deref().map(esc).unwrap_or_default(),
        );
    }
    h.push_str("</table>\n");
}

fn sinks(h: &mut String, sinks: &[SinkStatus]) {
    h.push_str("<h2>Uploads</h2>\n");
    if sinks.is_empty() {
        h.push_str("<p class=\"muted\">No sinks configured ([[upload]]).</p>\n");
        return;
    }
    h.push_str(
        "<table id=\"sinks\"><tr><th>name</th><th>type</th><th>connected</th><th>spool</th><th>sent batches</th>\
<th>dropped</th><th>last error</th></tr>\n",
    );
    for st in sinks {
        let pct = if st.spool_max_bytes == 0 {
            0.0
        } else {
            (100.0 * st.spool_bytes as f64 / st.spool_max_bytes as f64).min(100.0)
        };
        let drops: Vec<String> =
            st.dropped.iter().filter(|(_, &n)| n > 0).map(|(k, n)| format!("{} {n}", esc(k))).collect();
        let _ = writeln!(
            h,
            "<tr class=\"sink\"><td>{name}</td><td>{kind}</td><td>{conn}</td>\
<td class=\"spool\"><span class=\"bar\" title=\"{pct:.1} %\"><span class=\"fill\" style=\"display:block;width:{pct:.1}%\"></span></span> \
{used} of {max} ({batches} batches)</td><td>{sent}</td><td>{drops}</td><td>{err}</td></tr>",
            name = esc(&st.name),
            kind = esc(st.kind),
            conn = if st.connected { "yes" } else { "no" },
            used = human_bytes(st.spool_bytes),
            max = human_bytes(st.spool_max_bytes),
            batches = st.spooled_batches,
            sent = st.sent_batches,
            drops = if drops.is_empty() { "none".into() } else { drops.join(", ") },
            err = st.last_error.as_deref().map(esc).unwrap_or_default(),
        );
    }
    h.push_str("</table>\n");
}

fn latest_crash(h: &mut String, latest: Option<&LatestCrash>, disk_error: Option<&str>) {
    h.push_str("<h2>Latest crash report</h2>\n");
    if let Some(why) = disk_error {
        let _ = writeln!(h, "<p id=\"latest-crash-error\">Not shown: {}.</p>", esc(why));
        return;
    }
    let Some(l) = latest else {
        h.push_str("<p class=\"muted\">No crash reports.</p>\n");
        return;
    };
    let id = esc(&l.id);
    let _ = write!(h, "<p id=\"latest-crash\"><a href=\"/crashes/{id}\">{id}</a>");
    let Some(r) = &l.report else {
        h.push_str(": cannot be read (see <code>vigil crashes show</code>)</p>\n");
        return;
    };
    let e = &r.exit;
    let how = crate::format::how(e.signal_name.as_deref(), e.code.map(i64::from), e.core_dumped);
    let _ = write!(h, ": {} {}, {} after {}", esc(&e.at), esc(&e.reason), esc(&how), human_ms(e.uptime_ms));
    if let Some(c) = &e.collector_in_flight {
        let _ = write!(h, ", in <b>{}</b>", esc(c));
    }
    if let Some(sig) = &r.forensics.signature {
        let _ = write!(h, ", signature <code>{}</code>", esc(sig));
    }
    h.push_str("</p>\n");
    if let Some(p) = &r.forensics.panic {
        let _ = writeln!(h, "<p>panicked at {}: {}</p>", esc(&p.location), esc(&p.message));
    }
    let f = &r.forensics;
    let stack =
        f.stack.as_deref().or_else(|| f.threads.as_ref().and_then(|t| t.first()).map(|t| t.stack.as_slice()));
    match (stack, &f.stack_error) {
        (Some(stack), _) => {
            let shown = &stack[..stack.len().min(STACK_FRAMES)];
            let _ = write!(h, "<pre id=\"stack\">{}", esc(&frame_lines(shown)));
            let more = stack.len() - shown.len() + f.frames_omitted;
            if more > 0 {
                let _ = write!(h, "… {more} more frames");
            }
            h.push_str("</pre>\n");
        }
        (None, Some(why)) => {
            let _ = writeln!(h, "<p>No stack: {}</p>", esc(why));
        }
        (None, None) => {}
    }
    let text = String::from_utf8_lossy(&l.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(STDERR_LINES)..];
    let _ = write!(
        h,
        "<p>stderr, last {} of {} lines (<a href=\"/crashes/{id}/stderr\">all, byte for byte</a>):</p><pre id=\"stderr\">",
        tail.len(),
        lines.len()
    );
    for line in tail {
        h.push_str(&esc(line));
        h.push('\n');
    }
    h.push_str("</pre>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_text_and_both_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn the_same_signature_gets_the_same_colour() {
        assert_eq!(colour("abc123"), colour("abc123"));
        let distinct: std::collections::BTreeSet<_> =
            ["SIGSEGV", "SIGABRT", "exit 3", "unresponsive"].map(colour).into();
        assert!(distinct.len() >= 3, "{distinct:?}");
    }

    #[test]
    fn markup_from_outside_is_escaped_everywhere() {
        let bad = "<script>alert(1)</script>\"'&";
        let mut status = crate::endpoint::metrics::tests::snapshot();
        status.host = bad.into();
        status.tags.insert(bad.into(), bad.into());
        status.collectors[0].last_error = Some(bad.into());
        let mut sink = crate::endpoint::metrics::tests::sink();
        sink.name = bad.into();
        sink.last_error = Some(bad.into());
        let now = 1_800_000_000_000;
        let deaths = [Death {
            at_ms: now - 60_000,
            incarnation: 1,
            reason: "signaled".into(),
            signal_name: Some(bad.into()),
            code: None,
            signature: Some(bad.into()),
            collector: Some(bad.into()),
            restart_delay_ms: Some(500),
            crash_report: Some("r1".into()),
        }];
        let latest =
            LatestCrash { id: bad.into(), report: None, stderr: format!("ok\n{bad}\n").into_bytes() };
        let html = render(&Page {
            status: &status,
            sinks: &[sink],
            deaths: &deaths,
            latest: Some(&latest),
            disk_error: None,
            now_ms: now,
        });
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains(bad));
        // Every occurrence is the escaped form.
        let escaped = esc(bad);
        assert!(html.matches(escaped.as_str()).count() >= 8, "{html}");
        // With the report readable, its stack and stderr lines are escaped too.
        let id = "20260101T000000.000Z-1";
        let report: vigil_actors::supervisor::crash_report::CrashReport = serde_json::from_value(serde_json::json!({
            "id": id, "version": "v", "pid": 2, "incarnation": 1, "at": "t", "reason": "signaled", "code": null,
            "signal": 11, "signal_name": "SIGSEGV", "core_dumped": false, "uptime_ms": 5,
            "collector_in_flight": bad, "crash_report": id, "stderr_total_bytes": 1, "stderr_kept_bytes": 1,
            "stack": [{"function": bad, "file": bad, "line": 1, "module": "vigil", "address": "0x1"}]
        }))
        .unwrap();
        let latest =
            LatestCrash { id: id.into(), report: Some(report), stderr: format!("{bad}\n").into_bytes() };
        let html = render(&Page {
            status: &status,
            sinks: &[],
            deaths: &[],
            latest: Some(&latest),
            disk_error: None,
            now_ms: now,
        });
        assert!(!html.contains("<script") && !html.contains(bad), "{html}");
        assert!(html.contains(&format!("#0 {escaped} ({escaped}:1) vigil")), "{html}");
    }

    #[test]
    fn the_timelines_show_each_death_and_its_backoff() {
        let status = crate::endpoint::metrics::tests::snapshot();
        let now = 1_800_000_000_000;
        let death = |ago_ms: i64, sig: Option<&str>| Death {
            at_ms: now - ago_ms,
            incarnation: 1,
            reason: "signaled".into(),
            signal_name: Some("SIGSEGV".into()),
            code: None,
            signature: sig.map(str::to_string),
            collector: None,
            restart_delay_ms: Some(4_000),
            crash_report: None,
        };
        // Two in the last 10 minutes, one 5 h ago, one older than a day (not drawn).
        let deaths = [
            death(25 * HOUR_MS, None),
            death(5 * HOUR_MS, None),
            death(90_000, Some("ab")),
            death(1_000, Some("ab")),
        ];
        let html = render(&Page {
            status: &status,
            sinks: &[],
            deaths: &deaths,
            latest: None,
            disk_error: None,
            now_ms: now,
        });
        assert!(
            html.contains("<span id=\"crash-total\">3</span>")
                && html.contains("<span id=\"crash-recent\">2</span>"),
            "{html}"
        );
        assert_eq!(html.matches("class=\"crash\"").count(), 3 + 2);
        assert_eq!(html.matches("class=\"backoff\"").count(), 3 + 2);
        assert!(html.contains("data-count=\"2\"") && html.contains("data-count=\"1\""), "{html}");
        assert!(html.contains("ab × 2") && html.contains("SIGSEGV × 1"), "{html}");
    }
}
