//! `vigil status`: asks the local status endpoint for `/status` and prints the one screen an
//! operator reads when paged, or with `--json` the raw answer.
//!
//! Exit codes: 0 healthy; 1 the endpoint cannot be reached or read (the message names the
//! address); 2 it answered and the agent is unhealthy (see [`assess`]); 78 invalid config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use vigil_actors::config::{ListenAddr, StatusConfig};

use crate::config;
use crate::format::{how, human_bytes, human_ms};
use crate::http_client::{self, Target};

/// Exit code when the agent answered and is not healthy.
const EXIT_UNHEALTHY: u8 = 2;

/// Bounds the connect and each read: a supervisor that cannot answer in this time is as good
/// as unreachable to someone who was paged.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    /// Status endpoint: IP:PORT, http://IP:PORT or unix:/path (default: status.listen of the config).
    #[arg(long)]
    addr: Option<String>,
    /// Print the raw /status JSON instead of the summary (the exit code is the same).
    #[arg(long)]
    json: bool,
    /// Config file (default: $VIGIL_CONFIG, else /etc/vigil/vigil.toml if it exists, else built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// File holding the bearer token (default: status.token_file of the config).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

pub fn main(args: Args) -> ExitCode {
    let (_, cfg) = match config::load_or_exit(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match run(&args, &cfg) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil status: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args, cfg: &vigil_actors::config::Config) -> Result<ExitCode, String> {
    let target = match &args.addr {
        Some(a) => Target::parse(a)?,
        None => default_target(&cfg.status)?,
    };
    let token_file = args
        .token_file
        .clone()
        .or_else(|| (!cfg.status.token_file.is_empty()).then(|| PathBuf::from(&cfg.status.token_file)));
    let token = match token_file {
        None => None,
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| format!("cannot read the token file {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
    };
    let resp = http_client::get(&target, "/status", token.as_deref(), TIMEOUT)
        .map_err(|e| format!("the agent is unreachable at {target}: {e}"))?;
    let body = String::from_utf8_lossy(&resp.body);
    match resp.code {
        200 => {}
        401 => {
            return Err(format!(
                "{target} refused the request (401): it needs the bearer token (--token-file or status.token_file{})",
                if token.is_some() { "; the one sent is wrong" } else { "" }
            ))
        }
        code => return Err(format!("{target} answered {code} to GET /status: {}", body.trim())),
    }
    let status: Value = serde_json::from_str(&body)
        .map_err(|e| format!("{target} answered GET /status with something that is not JSON ({e})"))?;
    let verdict = assess(&status);
    if args.json {
        println!("{}", body.trim_end());
    } else {
        print!("{}", render(&status, &target, &verdict));
    }
    Ok(if verdict.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_UNHEALTHY) })
}

/// Where `status.listen` is reached from this host.
fn default_target(status: &StatusConfig) -> Result<Target, String> {
    match status.listen_addr()? {
        ListenAddr::Disabled => {
            Err("the status endpoint is disabled (status.listen = \"\"); pass --addr if it runs elsewhere".into())
        }
        ListenAddr::Tcp(a) if a.port() == 0 => Err(format!(
            "status.listen is {a}: the agent picked a free port at start; pass --addr with the one in its log line `Status endpoint listening.`"
        )),
        ListenAddr::Tcp(a) => Ok(Target::for_listener(a)),
        ListenAddr::Unix(p) => Ok(Target::Unix(p)),
    }
}

/// What is wrong: `problems` make the exit code 2, `warnings` are shown only.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// Unhealthy is what `/healthz` calls unhealthy (the collector process is not `running`),
/// and also: a collector quarantined (its metrics are missing until it is let out), or a
/// sink whose last attempt failed (`last_error` set: batches pile up in its spool). A
/// collection that failed (`error`) and a sink still making its first connection are
/// warnings: the agent itself works.
pub fn assess(s: &Value) -> Verdict {
    let mut v = Verdict::default();
    let c = &s["collector"];
    let state = c["state"].as_str().unwrap_or("unknown");
    if state != "running" {
        let mut why = format!("collector state is {state}");
        let e = &c["last_exit"];
        if e.is_object() {
            let reason = e["reason"].as_str().unwrap_or("?");
            why.push_str(&format!(
                " after {reason} ({})",
                how(e["signal_name"].as_str(), e["code"].as_i64(), e["core_dumped"].as_bool() == Some(true))
            ));
            if let Some(r) = e["crash_report"].as_str() {
                why.push_str(&format!(", crash report {r}"));
            }
        }
        if let Some(err) = c["spawn_error"].as_str() {
            why.push_str(&format!("; cannot start it: {err}"));
        }
        v.problems.push(why);
    }
    for col in s["collectors"].as_array().into_iter().flatten() {
        let name = col["name"].as_str().unwrap_or("?");
        match col["state"].as_str() {
            Some("quarantined") => v.problems.push(format!(
                "collector {name} is quarantined until {}",
                col["quarantined_until"].as_str().unwrap_or("?")
            )),
            Some("error") => v.warnings.push(format!(
                "collector {name} failed its last collection: {}",
                col["last_error"].as_str().unwrap_or("?")
            )),
            _ => {}
        }
    }
    let m = &c["module"];
    if let Some(st @ ("rejected" | "rolled_back")) = m["state"].as_str() {
        v.warnings.push(format!(
            "module {} was {}: {}",
            m["candidate"].as_str().unwrap_or("?"),
            st.replace('_', " "),
            m["error"].as_str().unwrap_or("?")
        ));
    }
    let ck = &s["checkin"];
    if let (Some(n @ 1..), Some(err)) = (ck["consecutive_failures"].as_u64(), ck["last_error"].as_str()) {
        v.warnings.push(format!("check-ins are failing ({n} in a row): {err}"));
    }
    for sink in s["uploads"].as_array().into_iter().flatten() {
        let name = sink["name"].as_str().unwrap_or("?");
        let backlog = sink["spooled_batches"].as_u64().unwrap_or(0);
        if let Some(err) = sink["last_error"].as_str() {
            v.problems.push(format!("sink {name} is failing ({backlog} batches spooled): {err}"));
        } else if sink["connected"].as_bool() != Some(true) {
            v.warnings.push(format!("sink {name} is not connected yet ({backlog} batches spooled)"));
        }
    }
    v
}

fn or_dash(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let mut widths = vec![0usize; rows.iter().map(Vec::len).max().unwrap_or(0)];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        s.push_str("  ");
        s.push_str(line.join("  ").trim_end());
        s.push('\n');
    }
    s
}

/// The human summary.
/// A one-line sparkline of `counts`: a blank for zero, then eight heights up to the largest.
pub fn sparkline(counts: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|&n| match n {
            0 => '·',
            n => BARS[((n * 8).div_ceil(max.max(1)) as usize).clamp(1, 8) - 1],
        })
        .collect()
}

/// The `n` most frequent crash signatures in `/status` `crash_counts`, as `SIG xCOUNT (how)`.
pub fn top_signatures(counts: &[Value], n: usize) -> Vec<String> {
    let mut by_sig: Vec<(String, u64, String)> = Vec::new();
    for k in counts {
        let Some(sig) = k["signature"].as_str() else { continue };
        let count = k["count"].as_u64().unwrap_or(0);
        let what = how(k["signal_name"].as_str(), k["code"].as_i64(), false);
        match by_sig.iter_mut().find(|(s, _, _)| s == sig) {
            Some(e) => e.1 += count,
            None => by_sig.push((sig.to_string(), count, what)),
        }
    }
    by_sig.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by_sig.into_iter().take(n).map(|(s, c, w)| format!("{s} x{c} ({w})")).collect()
}

pub fn render(s: &Value, target: &Target, verdict: &Verdict) -> String {
    let mut out = String::new();
    let health = if verdict.problems.is_empty() { "HEALTHY" } else { "UNHEALTHY" };
    out.push_str(&format!("vigil {} at {target}: {health}\n", or_dash(&s["version"])));
    for p in &verdict.problems {
        out.push_str(&format!("  ! {p}\n"));
    }
    for w in &verdict.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    out.push('\n');
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line(
        "supervisor",
        format!("pid {}, up {}", or_dash(&s["pid"]), human_ms(s["uptime_ms"].as_u64().unwrap_or(0))),
    );
    let c = &s["collector"];
    line(
        "collector",
        format!(
            "{}, pid {}, incarnation {}, restarts {}",
            or_dash(&c["state"]),
            or_dash(&c["pid"]),
            or_dash(&c["incarnation"]),
            or_dash(&c["restarts"])
        ),
    );
    if let Some(ms) = c["next_restart_in_ms"].as_u64() {
        line("next restart", format!("in {}", human_ms(ms)));
    }
    if let Some(e) = c["spawn_error"].as_str() {
        line("spawn error", e.to_string());
    }
    let m = &c["module"];
    if m.is_object() {
        let what = if m["builtin"].as_bool() == Some(true) { "built-in" } else { "signed module" };
        let mut text = format!("{} ({what}), {}", or_dash(&m["version"]), or_dash(&m["state"]));
        if let Some(v) = m["candidate"].as_str() {
            text.push_str(&format!(" {v}"));
        }
        if let Some(bad) = m["bad"].as_array().filter(|b| !b.is_empty()) {
            let bad: Vec<String> = bad.iter().map(or_dash).collect();
            text.push_str(&format!("; never again: {}", bad.join(", ")));
        }
        line("module", text);
    }
    let ck = &s["checkin"];
    if ck.is_object() {
        let mut text = format!("last ok {}", ck["last_ok_at"].as_str().unwrap_or("never"));
        if let Some(err) = ck["last_error"].as_str() {
            text.push_str(&format!(", failing: {err}"));
        }
        if let Some(ch) = ck["last_change"].as_object() {
            text.push_str(&format!(
                "; last change {} {} {}",
                ch.get("kind").map(or_dash).unwrap_or_default(),
                ch.get("id").map(or_dash).unwrap_or_default(),
                ch.get("outcome").map(or_dash).unwrap_or_default()
            ));
        }
        line("check-in", text);
    }
    let hb = &c["heartbeat"];
    let ack = hb["last_ack_ms_ago"].as_u64().map_or("never".into(), |ms| format!("{} ago", human_ms(ms)));
    let rtt = hb["rtt_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.2} ms"));
    line("heartbeat", format!("last ack {ack}, rtt {rtt}"));
    let e = &c["last_exit"];
    if e.is_object() {
        let mut how_ = match (e["signal_name"].as_str(), e["signal"].as_i64(), e["code"].as_i64()) {
            (Some(name), Some(n), _) => format!("{name} (signal {n})"),
            (Some(name), None, _) => name.to_string(),
            (None, _, Some(code)) => format!("exit code {code}"),
            _ => "-".into(),
        };
        if e["core_dumped"].as_bool() == Some(true) {
            how_.push_str(", core dumped");
        }
        line(
            "last exit",
            format!(
                "{}, {how_}, at {}, lived {}",
                or_dash(&e["reason"]),
                or_dash(&e["at"]),
                human_ms(e["uptime_ms"].as_u64().unwrap_or(0))
            ),
        );
        if let Some(d) = e["detail"].as_str() {
            line("", d.to_string());
        }
        if let Some(name) = e["collector_in_flight"].as_str() {
            line("", format!("collector {name} was collecting"));
        }
        match (e["crash_report"].as_str(), s["crash_dir"].as_str()) {
            (Some(id), Some(dir)) => {
                line("crash report", id.to_string());
                line("", format!("{dir}/{id}.json"));
                line("", format!("{dir}/{id}.stderr"));
            }
            (Some(id), None) => line("crash report", format!("{id} (`vigil crashes show {id}`)")),
            (None, _) => {}
        }
    } else {
        line("last exit", "none".into());
    }
    let counts: Vec<String> = c["crash_counts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            format!(
                "{} {} x{}",
                or_dash(&k["reason"]),
                how(k["signal_name"].as_str(), k["code"].as_i64(), false),
                or_dash(&k["count"])
            )
        })
        .collect();
    if !counts.is_empty() {
        line("crashes", counts.join(", "));
    }
    let hourly: Vec<u64> =
        c["crashes_per_hour"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    if !hourly.is_empty() {
        let total: u64 = hourly.iter().sum();
        line(
            "crashes 24 h",
            format!("{} {total} (per hour, oldest first; now at the right)", sparkline(&hourly)),
        );
    }
    let sigs = top_signatures(c["crash_counts"].as_array().map(Vec::as_slice).unwrap_or(&[]), 5);
    if !sigs.is_empty() {
        line("signatures", sigs.join(", "));
    }

    out.push_str("\ncollectors\n");
    let mut rows = vec![["NAME", "STATE", "LAST RUN", "SAMPLES", "ERRORS", "CRASHES", "LAST ERROR"]
        .map(String::from)
        .to_vec()];
    for col in s["collectors"].as_array().into_iter().flatten() {
        let mut state = or_dash(&col["state"]);
        if let Some(until) = col["quarantined_until"].as_str() {
            state = format!("{state} until {until}");
        }
        rows.push(vec![
            or_dash(&col["name"]),
            state,
            col["last_duration_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.1} ms")),
            or_dash(&col["samples"]),
            or_dash(&col["errors"]),
            or_dash(&col["crashes"]),
            or_dash(&col["last_error"]),
        ]);
    }
    out.push_str(&table(&rows));

    let sinks = s["uploads"].as_array().cloned().unwrap_or_default();
    if sinks.is_empty() {
        out.push_str("\nuploads: none (data stays local)\n");
    } else {
        out.push_str("\nuploads\n");
        let mut rows = vec![["NAME", "TYPE", "CONNECTED", "SENT", "BACKLOG", "DROPPED", "LAST ERROR"]
            .map(String::from)
            .to_vec()];
        for k in &sinks {
            rows.push(vec![
                or_dash(&k["name"]),
                or_dash(&k["type"]),
                if k["connected"].as_bool() == Some(true) { "yes" } else { "no" }.into(),
                or_dash(&k["sent_batches"]),
                format!(
                    "{} batches, {}",
                    or_dash(&k["spooled_batches"]),
                    human_bytes(k["spool_bytes"].as_u64().unwrap_or(0))
                ),
                or_dash(&k["dropped_samples"]),
                or_dash(&k["last_error"]),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(state: &str) -> Value {
        json!({
            "version": "0.1.0", "pid": 10, "uptime_ms": 7_384_000u64, "crash_dir": "/var/lib/vigil/crashes",
            "collector": {
                "state": state, "pid": 11, "incarnation": 2, "restarts": 1, "next_restart_in_ms": null,
                "heartbeat": { "last_ack_ms_ago": 120, "rtt_ms": 0.31 },
                "last_exit": { "at": "2026-11-27T04:00:00Z", "reason": "signaled", "code": null,
                               "signal": 11, "signal_name": "SIGSEGV", "core_dumped": false,
                               "uptime_ms": 1500, "collector_in_flight": "dns",
                               "crash_report": "20261127T040000.000Z-9" },
                "crash_counts": [ { "reason": "signaled", "signal_name": "SIGSEGV", "code": null, "count": 1 } ]
            },
            "collectors": [
                { "name": "cpu", "state": "ok", "last_duration_ms": 0.4, "samples": 5, "errors": 0, "crashes": 0, "last_error": null },
                { "name": "dns", "state": "error", "last_duration_ms": 2.0, "samples": 0, "errors": 1, "crashes": 1, "last_error": "timeout" }
            ],
            "uploads": []
        })
    }

    #[test]
    fn running_with_failed_collections_is_healthy_with_warnings() {
        let v = assess(&status("running"));
        assert!(v.problems.is_empty(), "{v:?}");
        assert_eq!(v.warnings, ["collector dns failed its last collection: timeout"]);
    }

    #[test]
    fn not_running_quarantined_or_a_failing_sink_is_unhealthy() {
        let mut s = status("backoff");
        s["collectors"][1]["state"] = json!("quarantined");
        s["collectors"][1]["quarantined_until"] = json!("2026-11-27T05:00:00Z");
        s["uploads"] = json!([
            { "name": "main", "type": "vigil", "connected": false, "spooled_batches": 3, "spool_bytes": 2048, "last_error": "connection refused" },
            { "name": "new", "type": "remote_write", "connected": false, "spooled_batches": 0, "spool_bytes": 0, "last_error": null }
        ]);
        let v = assess(&s);
        assert_eq!(
            v.problems,
            [
                "collector state is backoff after signaled (SIGSEGV), crash report 20261127T040000.000Z-9",
                "collector dns is quarantined until 2026-11-27T05:00:00Z",
                "sink main is failing (3 batches spooled): connection refused",
            ]
        );
        assert_eq!(v.warnings, ["sink new is not connected yet (0 batches spooled)"]);
        let text = render(&s, &Target::Unix("/run/v.sock".into()), &v);
        assert!(
            text.starts_with("vigil 0.1.0 at unix:/run/v.sock: UNHEALTHY\n  ! collector state"),
            "{text}"
        );
        assert!(text.contains("quarantined until 2026-11-27T05:00:00Z"), "{text}");
        assert!(text.contains("3 batches, 2.0 KiB") && text.contains("connection refused"), "{text}");
    }

    #[test]
    fn the_summary_names_the_signal_and_the_report_files() {
        let s = status("running");
        let text = render(&s, &Target::parse("127.0.0.1:9779").unwrap(), &assess(&s));
        assert!(text.starts_with("vigil 0.1.0 at http://127.0.0.1:9779: HEALTHY\n"), "{text}");
        for want in [
            "supervisor    pid 10, up 2h 03m 04s",
            "collector     running, pid 11, incarnation 2, restarts 1",
            "heartbeat     last ack 120 ms ago, rtt 0.31 ms",
            "last exit     signaled, SIGSEGV (signal 11), at 2026-11-27T04:00:00Z, lived 1.5 s",
            "collector dns was collecting",
            "crash report  20261127T040000.000Z-9",
            "/var/lib/vigil/crashes/20261127T040000.000Z-9.stderr",
            "crashes       signaled SIGSEGV x1",
            "uploads: none",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let dns = text.lines().find(|l| l.trim_start().starts_with("dns ")).unwrap();
        assert!(dns.contains("error") && dns.ends_with("timeout"), "{dns}");
    }

    #[test]
    fn module_and_checkin_trouble_is_shown_and_warned_about() {
        let mut s = status("running");
        s["collector"]["module"] = json!({"version": "1.0", "builtin": false, "state": "rolled_back",
            "candidate": "2.0", "error": "crash loop after the switch", "bad": ["2.0"]});
        s["checkin"] = json!({"url": "http://127.0.0.1:1/v1/checkin", "last_ok_at": null,
            "consecutive_failures": 3, "last_error": "connection refused",
            "last_change": {"kind": "module", "id": "2.0", "outcome": "rolled_back"}});
        let v = assess(&s);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert!(
            v.warnings.iter().any(|w| w.contains("module 2.0 was rolled back: crash loop")),
            "{:?}",
            v.warnings
        );
        assert!(
            v.warnings.iter().any(|w| w.contains("check-ins are failing (3 in a row)")),
            "{:?}",
            v.warnings
        );
        let out = render(&s, &Target::Tcp("127.0.0.1:9779".parse().unwrap()), &v);
        assert!(
            out.contains("module        1.0 (signed module), rolled_back 2.0; never again: 2.0"),
            "{out}"
        );
        assert!(out.contains("check-in      last ok never, failing: connection refused; last change module 2.0 rolled_back"), "{out}");
    }

    #[test]
    fn sparkline_and_top_signatures() {
        assert_eq!(sparkline(&[0, 1, 2, 8, 0]), "·▁▂█·");
        assert_eq!(sparkline(&[0; 3]), "···");
        let counts = vec![
            json!({"reason": "signaled", "signal_name": "SIGSEGV", "code": null, "signature": "aa", "count": 2}),
            json!({"reason": "signaled", "signal_name": "SIGABRT", "code": null, "signature": "bb", "count": 5}),
            json!({"reason": "exited", "signal_name": null, "code": 3, "signature": null, "count": 9}),
            json!({"reason": "unresponsive", "signal_name": "SIGKILL", "code": null, "signature": "aa", "count": 1}),
        ];
        assert_eq!(top_signatures(&counts, 5), vec!["bb x5 (SIGABRT)", "aa x3 (SIGSEGV)"]);
        assert_eq!(top_signatures(&counts, 1).len(), 1);
    }

    #[test]
    fn durations() {
        assert_eq!(human_ms(0), "0 ms");
        assert_eq!(human_ms(1500), "1.5 s");
        assert_eq!(human_ms(61_000), "1m 01s");
        assert_eq!(human_ms(7_384_000), "2h 03m 04s");
        assert_eq!(human_ms(90_061_000), "1d 01h 01m");
    }

    #[test]
    fn default_address_follows_status_listen() {
        let default_target =
            |l: &str| default_target(&StatusConfig { listen: l.into(), ..Default::default() });
        assert_eq!(default_target("0.0.0.0:9779"), Ok(Target::Tcp("127.0.0.1:9779".parse().unwrap())));
        assert_eq!(default_target("unix:/run/v.sock"), Ok(Target::Unix("/run/v.sock".into())));
        assert!(default_target("").unwrap_err().contains("disabled"));
        assert!(default_target("127.0.0.1:0").unwrap_err().contains("--addr"));
    }
}
