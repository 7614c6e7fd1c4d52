//! `/metrics`: the Prometheus text exposition (format 0.0.4) of the latest samples and of the
//! agent's own figures (CONTRACT §5).
//!
//! Two layers:
//!
//! * [`Exposition`] knows the text format and nothing of vigil: it groups samples into
//!   families (one `# HELP` and `# TYPE` each), sanitizes names, escapes label values, and
//!   renders in a fixed order (families by name, series by labels), so two scrapes of the
//!   same state are byte-identical.
//! * [`render`] knows vigil: it maps every native sample name to its exposition name
//!   ([`samples`], from each collector's declared `METRICS`) and turns the status snapshot and the sinks' status into the agent's own
//!   families.
//!
//! # Naming rule
//!
//! A collector sample `NAME` is exposed as `vigil_NAME` in base units with the unit as a
//! suffix, as Prometheus expects: milliseconds become `_seconds` (divided by 1000),
//! utilisation percentages become `_ratio` (divided by 100, so 1 is 100 %), per-second rates
//! say `_per_second`, byte counts end in `_bytes`. Every sample is a gauge (rates are
//! computed by the collector, not left to `rate()`); the agent's counters end in `_total`.
//! The table is [`samples`], built from the collectors' own declarations; docs/metrics.md lists it for operators, and a test keeps the two
//! in step. A name missing from the table (a new collector's) is still exposed, as
//! `vigil_NAME` without conversion, so nothing is silently hidden.
//!
//! Samples carry no timestamps: Prometheus stamps them at scrape time, which keeps its
//! staleness handling working. Instead, a series whose latest value is older than
//! `stale_after` (a collector quarantined, a container gone) is left out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use vigil_actors::collector::collectors::METRICS as COLLECTOR_METRICS;
pub use vigil_actors::sample::{metric_name, Kind};
use vigil_actors::supervisor::{Latest, SeriesKey, State, StatusSnapshot};
use vigil_actors::upload::SinkStatus;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Family {
    help: String,
    kind: Kind,
    /// Series by their (sanitized, sorted) labels; a repeated series keeps its last value.
    series: BTreeMap<Vec<(String, String)>, f64>,
}

/// Families of samples on their way to the text format.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Adds one sample. The family is created by its first sample, whose `kind` and `help`
    /// it keeps: a later sample of the same name joins it whatever it says. Labels with an
    /// empty value are left out (Prometheus reads them as absent anyway); of two labels that
    /// sanitize to the same name, the first is kept.
    pub fn add(&mut self, name: &str, kind: Kind, help: &str, labels: &[(&str, &str)], value: f64) {
        let family = self.families.entry(metric_name(name)).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
        });
        let mut clean: Vec<(String, String)> = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            let Some(k) = label_name(k) else { continue };
            if v.is_empty() || clean.iter().any(|(have, _)| *have == k) {
                continue;
            }
            clean.push((k, v.to_string()));
        }
        clean.sort();
        family.series.insert(clean, value);
    }

    /// The text format: families by name, each with its HELP and TYPE once, then its series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
            for (labels, value) in &f.series {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }
}

/// A valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`), or
/// `None` for an empty one.
pub fn label_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let mut out = metric_name(name);
    while out.starts_with("__") {
        out.remove(0);
    }
    Some(out)
}

/// `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: `\` → `\\`, newline → `\n` (quotes stay).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the text format spells it (`NaN`, `+Inf`, `-Inf`, else the shortest
/// decimal that reads back as the same f64).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// How one native sample name (CONTRACT §4) is exposed.
pub struct Exposed {
    pub native: &'static str,
    pub name: String,
    /// Multiplied into the value to reach the base unit.
    pub scale: f64,
    pub help: &'static str,
}

/// Every collector metric, as its collector declares it (`Collector::METRICS`, listed by
/// the registry): its exposition name, unit conversion and HELP text.
pub fn samples() -> Vec<Exposed> {
    COLLECTOR_METRICS
        .iter()
        .flat_map(|(_, metrics)| metrics.iter())
        .map(|m| Exposed { native: m.name, name: m.exposition_name(), scale: m.unit.scale(), help: m.help })
        .collect()
}

/// Self metrics the supervisor records per collection; `/metrics` shows the same figures
/// from the status snapshot instead (`vigil_collector_*{collector}`).
const FROM_STATUS: &[&str] = &["collector_duration_ms", "collector_samples_total", "collector_errors_total"];

/// Everything one scrape shows.
pub struct Scrape<'a> {
    pub status: &'a StatusSnapshot,
    pub sinks: &'a [SinkStatus],
    pub latest: &'a [(std::sync::Arc<SeriesKey>, Latest)],
    /// Milliseconds since the epoch, now.
    pub now_ms: i64,
    /// Series whose latest value is older than this are left out.
    pub stale_after: Duration,
    /// Supervisor log lines dropped because the log's destination stalled.
    pub log_lines_dropped: u64,
}

/// The exposition of one scrape.
pub fn render(s: &Scrape) -> String {
    let mut e = Exposition::default();
    agent_families(&mut e, s.status);
    e.add(
        "vigil_log_lines_dropped_total",
        Kind::Counter,
        "Supervisor log lines dropped because the log's destination stalled (a frozen disk).",
        &[],
        s.log_lines_dropped as f64,
    );
    e.add(
        "vigil_crash_reports_pending",
        Kind::Gauge,
        "Crash reports held in memory, not yet on disk.",
        &[],
        s.status.collector.pending_crash_reports as f64,
    );
    for (&key, &n) in &s.status.collector.dropped_frames {
        let reason = key.strip_suffix("_frames").unwrap_or(key);
        e.add(
            "vigil_collector_dropped_frames_total",
            Kind::Counter,
            "Frames from the collector dropped, by reason (oversized, bad_checksum, undecodable).",
            &[("reason", reason)],
            n as f64,
        );
    }
    for sink in s.sinks {
        sink_families(&mut e, sink);
    }
    let all = samples();
    let table: BTreeMap<&str, &Exposed> = all.iter().map(|x| (x.native, x)).collect();
    let oldest = s.now_ms.saturating_sub(s.stale_after.as_millis() as i64);
    for (series, latest) in s.latest {
        let (name, tags) = &**series;
        if latest.ts_ms < oldest || FROM_STATUS.contains(&name.as_str()) {
            continue;
        }
        let labels: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match table.get(name.as_str()) {
            Some(x) => e.add(&x.name, Kind::Gauge, x.help, &labels, latest.value * x.scale),
            None => {
                let kind = if name.ends_with("_total") { Kind::Counter } else { Kind::Gauge };
                let help = format!("Sample {name} as collected (no exposition name of its own yet).");
                e.add(&format!("vigil_{name}"), kind, &help, &labels, latest.value);
            }
        }
    }
    e.render()
}

fn agent_families(e: &mut Exposition, st: &StatusSnapshot) {
    use Kind::{Counter, Gauge};
    let c = &st.collector;
    e.add(
        "vigil_build_info",
        Gauge,
        "The running vigil's version (always 1).",
        &[("version", &st.version)],
        1.0,
    );
    e.add(
        "vigil_uptime_seconds",
        Gauge,
        "Time since the supervisor started.",
        &[],
        st.uptime_ms as f64 / 1000.0,
    );
    for state in State::ALL {
        e.add(
            "vigil_collector_state",
            Gauge,
            "Lifecycle state of the collector process (1 for the current state).",
            &[("state", state.as_str())],
            f64::from(u8::from(c.state == state)),
        );
    }
    e.add(
        "vigil_collector_incarnation",
        Gauge,
        "Number of the current (or last) collector process, 1 for the first.",
        &[],
        c.incarnation as f64,
    );
    e.add(
        "vigil_collector_restarts_total",
        Counter,
        "Collector processes started after the first.",
        &[],
        c.restarts as f64,
    );
    for crash in &c.crash_counts {
        let code = crash.code.map(|n| n.to_string()).unwrap_or_default();
        e.add(
            "vigil_collector_crashes_total",
            Counter,
            "Ends of the collector process vigil did not ask for, by reason and signal or exit code.",
            &[
                ("reason", &crash.reason),
                ("signal", crash.signal_name.as_deref().unwrap_or("")),
                ("exit_code", &code),
                ("signature", crash.signature.as_deref().unwrap_or("")),
            ],
            crash.count as f64,
        );
    }
    if let Some(rtt) = c.heartbeat.rtt_ms {
        e.add(
            "vigil_collector_heartbeat_rtt_seconds",
            Gauge,
            "Round trip of the last heartbeat answered by the collector process.",
            &[],
            rtt / 1000.0,
        );
    }
    if let Some(ago) = c.heartbeat.last_ack_ms_ago {
        e.add(
            "vigil_collector_heartbeat_age_seconds",
            Gauge,
            "Time since the collector process last answered a heartbeat.",
            &[],
            ago as f64 / 1000.0,
        );
    }
    for col in &st.collectors {
        let l = [("collector", col.name.as_str())];
        if let Some(ms) = col.last_duration_ms {
            e.add(
                "vigil_collector_last_duration_seconds",
                Gauge,
                "Duration of the collector's last collection.",
                &l,
                ms / 1000.0,
            );
        }
        e.add(
            "vigil_collector_collections_total",
            Counter,
            "Collections finished or failed.",
            &l,
            col.collections as f64,
        );
        e.add("vigil_collector_samples_total", Counter, "Samples produced.", &l, col.samples as f64);
        e.add("vigil_collector_errors_total", Counter, "Failed collections.", &l, col.errors as f64);
        e.add(
            "vigil_collector_crashes_attributed_total",
            Counter,
            "Crashes of the collector process that happened while this collector was collecting.",
            &l,
            f64::from(col.crashes),
        );
        e.add(
            "vigil_collector_quarantined",
            Gauge,
            "Whether the collector is quarantined after crashing the collector process (1) or not (0).",
            &l,
            f64::from(u8::from(col.state == "quarantined")),
        );
    }
}

fn sink_families(e: &mut Exposition, s: &SinkStatus) {
    use Kind::{Counter, Gauge};
    let l = [("sink", s.name.as_str())];
    e.add(
        "vigil_upload_connected",
        Gauge,
        "Whether the sink's connection is up (vigil) or its last request succeeded (remote_write).",
        &l,
        f64::from(u8::from(s.connected)),
    );
    e.add(
        "vigil_upload_sent_batches_total",
        Counter,
        "Batches the receiver acknowledged.",
        &l,
        s.sent_batches as f64,
    );
    e.add(
        "vigil_upload_sent_bytes_total",
        Counter,
        "Payload bytes sent: WebSocket messages or HTTP request bodies, resends included.",
        &l,
        s.sent_bytes as f64,
    );
    e.add(
        "vigil_upload_spooled_batches",
        Gauge,
        "Batches in the spool, not yet acknowledged.",
        &l,
        s.spooled_batches as f64,
    );
    e.add("vigil_upload_spool_bytes", Gauge, "Size of the sink's spool files.", &l, s.spool_bytes as f64);
    e.add("vigil_upload_last_seq", Gauge, "Seq of the newest batch spooled.", &l, s.last_seq as f64);
    e.add("vigil_upload_acked_seq", Gauge, "Highest seq the receiver acknowledged.", &l, s.acked_seq as f64);
    e.add(
        "vigil_upload_errors_total",
        Counter,
        "Failed connections and requests, refused batches and spool errors.",
        &l,
        s.errors as f64,
    );
    for (&key, &n) in &s.dropped {
        // One family per unit (the key's suffix): a sum over reasons never adds batches to
        // bytes.
        let (name, reason, help) = match dropped_family(key) {
            Some((unit, reason)) => match unit {
                "samples" => ("vigil_upload_dropped_samples_total", reason, "Samples dropped, by reason."),
                "batches" => ("vigil_upload_dropped_batches_total", reason, "Batches dropped, by reason."),
                "records" => ("vigil_upload_dropped_records_total", reason, "Damaged spool records skipped."),
                "bytes" => ("vigil_upload_dropped_bytes_total", reason, "Bytes cut from torn spool tails."),
                "files" => {
                    ("vigil_upload_dropped_files_total", reason, "Damaged spool files set aside as *.bad.")
                }
                _ => (
                    "vigil_upload_dropped_crash_reports_total",
                    reason,
                    "Crash reports that could not be read to be sent.",
                ),
            },
            None => ("vigil_upload_dropped_total", key, "Things dropped, by reason."),
        };
        e.add(name, Counter, help, &[("sink", &s.name), ("reason", reason)], n as f64);
    }
}

/// A `/status` `dropped` key as (unit, reason): `spool_full_batches` → (`batches`,
/// `spool_full`), `corrupt_records` → (`records`, `corrupt`).
fn dropped_family(key: &str) -> Option<(&'static str, &str)> {
    ["crash_reports", "samples", "batches", "records", "bytes", "files"].into_iter().find_map(|unit| {
        let reason = key.strip_suffix(unit)?.strip_suffix('_')?;
        Some((unit, reason))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vigil_actors::supervisor::{CollectorEntry, CollectorStatus, CrashCount, HeartbeatStatus};

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        let mut e = Exposition::default();
        e.add("x", Kind::Gauge, "h", &[("path", "C:\\dir \"q\"\nend")], 1.0);
        assert!(e.render().contains("x{path=\"C:\\\\dir \\\"q\\\"\\nend\"} 1\n"), "{}", e.render());
    }

    #[test]
    fn help_is_escaped_but_keeps_quotes() {
        let mut e = Exposition::default();
        e.add("x", Kind::Gauge, "a \\ \"b\"\nc", &[], 1.0);
        assert!(e.render().starts_with("# HELP x a \\\\ \"b\"\\nc\n"), "{}", e.render());
    }

    #[test]
    fn help_and_type_come_once_per_family_and_the_first_wins() {
        let mut e = Exposition::default();
        e.add("fam", Kind::Counter, "first", &[("k", "1")], 1.0);
        e.add("other", Kind::Gauge, "o", &[], 3.0);
        e.add("fam", Kind::Gauge, "second", &[("k", "2")], 2.0);
        let text = e.render();
        assert_eq!(text.matches("# HELP fam").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE fam").count(), 1, "{text}");
        assert!(
            text.contains("# HELP fam first\n# TYPE fam counter\nfam{k=\"1\"} 1\nfam{k=\"2\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn order_is_deterministic_whatever_the_insertion_order() {
        let series = [("b", "z", 1.0), ("a", "y", 2.0), ("b", "a", 3.0), ("a", "b", 4.0)];
        let build = |order: &[usize]| {
            let mut e = Exposition::default();
            for &i in order {
                let (name, v, x) = series[i];
                e.add(name, Kind::Gauge, "h", &[("z", "1"), ("l", v)], x);
            }
            e.render()
        };
        let a = build(&[0, 1, 2, 3]);
        assert_eq!(a, build(&[3, 2, 1, 0]));
        assert_eq!(a, build(&[2, 0, 3, 1]));
        let lines: Vec<&str> = a.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            ["a{l=\"b\",z=\"1\"} 4", "a{l=\"y\",z=\"1\"} 2", "b{l=\"a\",z=\"1\"} 3", "b{l=\"z\",z=\"1\"} 1"]
        );
    }

    #[test]
    fn nan_and_infinities_are_spelled_as_prometheus_reads_them() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(1e-9).parse::<f64>().unwrap(), 1e-9);
        assert_eq!(format_value(1.5e300).parse::<f64>().unwrap(), 1.5e300);
    }

    #[test]
    fn invalid_names_are_sanitized() {
        assert_eq!(metric_name("vigil_ok_1"), "vigil_ok_1");
        assert_eq!(metric_name("my.metric-name:x"), "my_metric_name_x");
        assert_eq!(metric_name("1st"), "_1st");
        assert_eq!(metric_name("naïve"), "na_ve");
        assert_eq!(label_name("k8s.io/app").as_deref(), Some("k8s_io_app"));
        assert_eq!(label_name("__name__").as_deref(), Some("_name__"), "the reserved prefix is cut");
        assert_eq!(label_name("9lives").as_deref(), Some("_9lives"));
        assert_eq!(label_name(""), None);
        let mut e = Exposition::default();
        e.add("a.b", Kind::Gauge, "h", &[("x-y", "1"), ("x.y", "2"), ("", "3"), ("empty", "")], 1.0);
        assert!(
            e.render().ends_with("\na_b{x_y=\"1\"} 1\n"),
            "first of two clashing labels kept: {}",
            e.render()
        );
    }

    pub(crate) fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            version: "1.2.3".into(),
            host: "host-1".into(),
            tags: BTreeMap::from([("env".into(), "test".into())]),
            pid: 1,
            uptime_ms: 1500,
            collector: CollectorStatus {
                state: State::Running,
                pid: Some(2),
                incarnation: 3,
                uptime_ms: Some(1200),
                restarts: 2,
                next_restart_in_ms: None,
                heartbeat: HeartbeatStatus { last_ack_ms_ago: Some(250), rtt_ms: Some(0.5) },
                last_exit: None,
                crashes_per_hour: vec![0; 24],
                pending_crash_reports: 0,
                dropped_frames: BTreeMap::from([("oversized_frames", 2), ("undecodable_frames", 0)]),
                crash_report_error: None,
                crash_counts: vec![
                    CrashCount {
                        reason: "signaled".into(),
                        signal_name: Some("SIGSEGV".into()),
                        code: None,
                        signature: None,
                        count: 2,
                    },
                    CrashCount {
                        reason: "exited".into(),
                        signal_name: None,
                        code: Some(3),
                        signature: None,
                        count: 1,
                    },
                ],
                spawn_error: None,
                module: vigil_actors::supervisor::module::ModuleStatus::builtin("1.2.3"),
            },
            collectors: vec![CollectorEntry {
                name: "dns".into(),
                state: "quarantined",
                last_duration_ms: Some(12.0),
                collections: 4,
                samples: 8,
                errors: 1,
                last_error: Some("x".into()),
                crashes: 2,
                quarantined_until: None,
            }],
            uploads: vec![],
            series: 0,
            checkin: None,
        }
    }

    pub(crate) fn sink() -> SinkStatus {
        SinkStatus {
            name: "main".into(),
            kind: "vigil",
            connected: true,
            sent_batches: 5,
            sent_bytes: 1234,
            spooled_batches: 1,
            spool_bytes: 4096,
            spool_max_bytes: 1 << 20,
            dropped_samples: 0,
            dropped: BTreeMap::from([
                ("spool_full_batches", 1),
                ("spool_full_samples", 40),
                ("buffer_full_samples", 2),
                ("rejected_samples", 0),
                ("corrupt_records", 0),
                ("torn_bytes", 7),
                ("bad_files", 1),
                ("unreadable_crash_reports", 3),
            ]),
            last_seq: 6,
            acked_seq: 5,
            errors: 4,
            last_error: None,
        }
    }

    fn key(name: &str, tags: &[(&str, &str)]) -> std::sync::Arc<SeriesKey> {
        std::sync::Arc::new((name.into(), tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    #[test]
    fn samples_are_converted_to_base_units_and_stale_ones_left_out() {
        let now = 1_000_000;
        let fresh = |value| Latest { value, ts_ms: now - 1000 };
        let latest = vec![
            (key("cpu_user", &[]), fresh(25.0)),
            (key("dns", &[("name", "a.test"), ("server", "127.0.0.1:53")]), fresh(12.5)),
            (key("load_1", &[("host", "h")]), fresh(0.75)),
            (key("collector_duration_ms", &[("collector", "cpu")]), fresh(3.0)),
            (key("brand_new", &[]), fresh(7.0)),
            (key("mem_util", &[]), Latest { value: 50.0, ts_ms: now - 60_000 }),
        ];
        let st = snapshot();
        let text = render(&Scrape {
            status: &st,
            sinks: &[],
            latest: &latest,
            now_ms: now,
            stale_after: Duration::from_secs(30),
            log_lines_dropped: 0,
        });
        assert!(text.contains("\nvigil_cpu_user_ratio 0.25\n"), "{text}");
        assert!(
            text.contains("\nvigil_dns_resolution_seconds{name=\"a.test\",server=\"127.0.0.1:53\"} 0.0125\n"),
            "{text}"
        );
        assert!(text.contains("\nvigil_load_1{host=\"h\"} 0.75\n"), "{text}");
        assert!(text.contains("\n# TYPE vigil_brand_new gauge\nvigil_brand_new 7\n"), "{text}");
        assert!(!text.contains("mem_util"), "stale: {text}");
        assert!(!text.contains("collector_duration"), "shown from the snapshot instead: {text}");
    }

    #[test]
    fn the_agents_own_figures() {
        let st = snapshot();
        let text = render(&Scrape {
            status: &st,
            sinks: &[sink()],
            latest: &[],
            now_ms: 0,
            stale_after: Duration::from_secs(30),
            log_lines_dropped: 0,
        });
        for line in [
            "vigil_build_info{version=\"1.2.3\"} 1",
            "vigil_uptime_seconds 1.5",
            "vigil_collector_state{state=\"running\"} 1",
            "vigil_collector_state{state=\"backoff\"} 0",
            "vigil_collector_restarts_total 2",
            "vigil_collector_crashes_total{reason=\"signaled\",signal=\"SIGSEGV\"} 2",
            "vigil_collector_crashes_total{exit_code=\"3\",reason=\"exited\"} 1",
            "vigil_collector_heartbeat_rtt_seconds 0.0005",
            "vigil_collector_heartbeat_age_seconds 0.25",
            "vigil_collector_last_duration_seconds{collector=\"dns\"} 0.012",
            "vigil_collector_errors_total{collector=\"dns\"} 1",
            "vigil_collector_quarantined{collector=\"dns\"} 1",
            "vigil_upload_sent_bytes_total{sink=\"main\"} 1234",
            "vigil_upload_spool_bytes{sink=\"main\"} 4096",
            "vigil_upload_errors_total{sink=\"main\"} 4",
            "vigil_upload_dropped_batches_total{reason=\"spool_full\",sink=\"main\"} 1",
            "vigil_upload_dropped_samples_total{reason=\"buffer_full\",sink=\"main\"} 2",
            "vigil_upload_dropped_bytes_total{reason=\"torn\",sink=\"main\"} 7",
            "vigil_upload_dropped_samples_total{reason=\"spool_full\",sink=\"main\"} 40",
            "vigil_upload_dropped_files_total{reason=\"bad\",sink=\"main\"} 1",
            "vigil_upload_dropped_records_total{reason=\"corrupt\",sink=\"main\"} 0",
            "vigil_upload_dropped_crash_reports_total{reason=\"unreadable\",sink=\"main\"} 3",
            "vigil_upload_acked_seq{sink=\"main\"} 5",
            "vigil_collector_dropped_frames_total{reason=\"oversized\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        // Every family has HELP and TYPE, and every counter ends in _total.
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let f: Vec<&str> = l.split(' ').collect();
            assert!(text.contains(&format!("# HELP {} ", f[2])), "{l}");
            assert_eq!(f[3] == "counter", f[2].ends_with("_total"), "{l}");
        }
    }

    #[test]
    fn an_agent_without_samples_still_exposes_its_own_figures() {
        let mut st = snapshot();
        st.collectors.clear();
        st.collector.heartbeat = HeartbeatStatus { last_ack_ms_ago: None, rtt_ms: None };
        let text = render(&Scrape {
            status: &st,
            sinks: &[],
            latest: &[],
            now_ms: 0,
            stale_after: Duration::ZERO,
            log_lines_dropped: 0,
        });
        assert!(text.starts_with("# HELP vigil_build_info "), "{text}");
        assert!(!text.contains("rtt"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn docs_list_every_exposition_name() {
        let doc = include_str!("../../docs/metrics.md");
        let all = samples();
        assert!(!all.is_empty());
        for x in &all {
            let row = format!("| `{}` | `{}` |", x.native, x.name);
            assert!(
                doc.contains(&row),
                "docs/metrics.md lacks the row of {}: add `{row} gauge | UNIT | LABELS |` to its collector samples ({})",
                x.native,
                x.help
            );
        }
        let names: std::collections::BTreeSet<&str> = all.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names.len(), all.len(), "two native names map to one exposition name");
        let st = snapshot();
        let text = render(&Scrape {
            status: &st,
            sinks: &[sink()],
            latest: &[],
            now_ms: 0,
            stale_after: Duration::ZERO,
            log_lines_dropped: 0,
        });
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = l.split(' ').nth(2).unwrap();
            assert!(doc.contains(&format!("`{name}`")), "docs/metrics.md does not describe {name}");
        }
    }
}
