//! OTLP/HTTP with protobuf bodies (CONTRACT §7), the messages from the official definitions
//! (the `opentelemetry-proto` crate, prost): a batch's samples go to `URL/v1/metrics` as one
//! `ExportMetricsServiceRequest`, its crash reports to `URL/v1/logs` as one
//! `ExportLogsServiceRequest`, each gzip-compressed. Delivery, retries and drops are those of
//! every HTTP sink ([`super::http`]); a `partial_success` in the answer counts its rejected
//! points as `rejected`.
//!
//! # Mapping
//!
//! - **Resource** (one per request): `service.name = "vigil"`, `service.version`,
//!   `host.name` (the batch's host), `host.id` (the agent_id), and every `agent.tags` entry.
//! - **Scope**: `vigil` with the agent's version.
//! - **Metrics**: one Gauge per sample name, named as natively (CONTRACT §4), with the unit and
//!   description the collector declares ([`crate::sample::Metric`]; UCUM: `%`, `ms`, `1/s`,
//!   `By`, `1`); names no collector declares (the self metrics) get no unit. Each sample is a
//!   double data point at its time, its tags the attributes, minus the agent tags that the
//!   resource already carries (a sample tag with a value of its own stays).
//! - **Logs**: one record per crash report, at the time of the exit; severity FATAL for a
//!   death by signal, ERROR otherwise; the body a one-line summary; attributes
//!   `vigil.crash.id`, `vigil.crash.reason`, `vigil.crash.signal_name` (when signalled),
//!   `vigil.crash.collector` (the collector in flight, when one was), `vigil.crash.signature`
//!   (when a stack was captured) and `exception.stacktrace`, the `#N function (file:line)
//!   module` lines of `vigil crashes show` (CONTRACT §6).

use std::collections::BTreeMap;
use std::io::Write;

use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::part::{Carries, Part, PartialReader};
use super::protocol::Batch;
use crate::sample::Unit;
use crate::supervisor::crash_report::CrashReport;

const VERSION: &str = env!("CARGO_PKG_VERSION");

const HEADERS: &[(&str, &str)] = &[("Content-Type", "application/x-protobuf"), ("Content-Encoding", "gzip")];

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..Default::default()
    }
}

fn resource(batch: &Batch, agent_tags: &BTreeMap<String, String>) -> Resource {
    let mut attributes = vec![
        kv("service.name", "vigil"),
        kv("service.version", VERSION),
        kv("host.name", &batch.host),
        kv("host.id", &batch.agent_id),
    ];
    attributes.extend(agent_tags.iter().map(|(k, v)| kv(k, v)));
    Resource { attributes, ..Default::default() }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope { name: "vigil".into(), version: VERSION.into(), ..Default::default() }
}

/// The UCUM unit OTLP expects for a declared unit.
pub fn ucum(unit: Unit) -> &'static str {
    match unit {
        Unit::Percent => "%",
        Unit::Milliseconds => "ms",
        Unit::PerSecond => "1/s",
        Unit::Bytes => "By",
        Unit::None => "1",
    }
}

/// The declaration of a native metric name, if a collector declares it.
fn declared(name: &str) -> Option<&'static crate::sample::Metric> {
    crate::collector::collectors::METRICS.iter().flat_map(|(_, m)| m.iter()).find(|m| m.name == name)
}

/// The samples of a batch as one export request: a Gauge per name, points in batch order.
pub fn metrics_request(batch: &Batch, agent_tags: &BTreeMap<String, String>) -> ExportMetricsServiceRequest {
    let mut by_name: BTreeMap<&str, Vec<NumberDataPoint>> = BTreeMap::new();
    for s in &batch.samples {
        let attributes =
            s.tags.iter().filter(|(k, v)| agent_tags.get(*k) != Some(*v)).map(|(k, v)| kv(k, v)).collect();
        by_name.entry(&s.name).or_default().push(NumberDataPoint {
            attributes,
            time_unix_nano: u64::try_from(s.ts_ms).unwrap_or(0).saturating_mul(1_000_000),
            value: Some(number_data_point::Value::AsDouble(s.value)),
            ..Default::default()
        });
    }
    let metrics = by_name
        .into_iter()
        .map(|(name, data_points)| {
            let decl = declared(name);
            Metric {
                name: name.to_string(),
                description: decl.map_or("", |m| m.help).to_string(),
                unit: decl.map_or("", |m| ucum(m.unit)).to_string(),
                data: Some(metric::Data::Gauge(Gauge { data_points })),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(batch, agent_tags)),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// One crash report as a log record. A report that does not parse as one (written by
/// another version) still becomes a record, with what its JSON says.
pub fn log_record(report: &serde_json::Value) -> LogRecord {
    let typed: Option<CrashReport> = serde_json::from_value(report.clone()).ok();
    let field = |k: &str| report.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let id = field("id").unwrap_or_default();
    let reason = field("reason").unwrap_or_else(|| "unknown".into());
    let signal_name = field("signal_name");
    let code = report.get("code").and_then(|v| v.as_i64());
    let in_flight = field("collector_in_flight");
    let how = match (&signal_name, code) {
        (Some(sig), _) => format!("killed by {sig}"),
        (None, Some(c)) => format!("exited with code {c}"),
        (None, None) => reason.clone(),
    };
    let mut body = format!("vigil collector {how} ({reason})");
    if let Some(c) = &in_flight {
        body.push_str(&format!(" while collecting {c}"));
    }
    let innermost = typed
        .as_ref()
        .and_then(|r| r.forensics.stack.as_deref())
        .and_then(crate::supervisor::stack::innermost_own);
    if let Some(f) = &innermost {
        body.push_str(&format!(" in {f}"));
    }
    body.push_str(&format!("; crash report {id}"));
    let mut attributes = vec![kv("vigil.crash.id", &id), kv("vigil.crash.reason", &reason)];
    if let Some(sig) = &signal_name {
        attributes.push(kv("vigil.crash.signal_name", sig));
    }
    if let Some(c) = &in_flight {
        attributes.push(kv("vigil.crash.collector", c));
    }
    if let Some(sig) = field("signature") {
        attributes.push(kv("vigil.crash.signature", &sig));
    }
    if let Some(stack) = typed.as_ref().and_then(|r| r.forensics.stack.as_deref()) {
        attributes.push(kv("exception.stacktrace", &crate::supervisor::stack::frame_lines(stack)));
    }
    let time_unix_nano = field("at")
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
        .and_then(|t| t.timestamp_nanos_opt())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let severity = if signal_name.is_some() { SeverityNumber::Fatal } else { SeverityNumber::Error };
    LogRecord {
        time_unix_nano,
        observed_time_unix_nano: time_unix_nano,
        severity_number: severity as i32,
        severity_text: if signal_name.is_some() { "FATAL" } else { "ERROR" }.into(),
        body: Some(AnyValue { value: Some(any_value::Value::StringValue(body)) }),
        attributes,
        ..Default::default()
    }
}

/// The crash reports of a batch as one export request.
pub fn logs_request(batch: &Batch, agent_tags: &BTreeMap<String, String>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(batch, agent_tags)),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: batch.crash_reports.iter().map(log_record).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A message as a request body: protobuf, then gzip.
pub fn gzip_body(msg: &impl prost::Message) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&msg.encode_to_vec()).expect("writing to memory cannot fail");
    gz.finish().expect("writing to memory cannot fail")
}

fn metrics_partial(body: &[u8]) -> Option<(u64, String)> {
    let p = <ExportMetricsServiceResponse as prost::Message>::decode(body).ok()?.partial_success?;
    (p.rejected_data_points > 0).then_some((p.rejected_data_points as u64, p.error_message))
}

fn logs_partial(body: &[u8]) -> Option<(u64, String)> {
    let p = <ExportLogsServiceResponse as prost::Message>::decode(body).ok()?.partial_success?;
    (p.rejected_log_records > 0).then_some((p.rejected_log_records as u64, p.error_message))
}

/// The `code` and `message` of `google.rpc.Status`, which OTLP/HTTP receivers send as the
/// body of an error answer (field numbers of googleapis' `google/rpc/status.proto`; its
/// `details` are left unread). Not part of the OTLP definitions, so declared here.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The receiver's message in an error answer: a protobuf `Status`'s, or the body itself when
/// it is text (a proxy's error page).
fn status_message(body: &[u8]) -> Option<String> {
    if let Ok(text) = std::str::from_utf8(body) {
        if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) {
            return None;
        }
    }
    let st = <RpcStatus as prost::Message>::decode(body).ok()?;
    Some(if st.message.is_empty() { format!("status code {}", st.code) } else { st.message })
}

/// `base` (the sink's `url`) joined with an OTLP signal path.
pub fn endpoint(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// The requests of one batch: its samples, then its crash reports (either left out when
/// the batch has none).
pub fn parts(base: &str, batch: &Batch, agent_tags: &BTreeMap<String, String>) -> Vec<Part> {
    let part = |path, body, carries, partial| Part {
        url: endpoint(base, path),
        body,
        headers: HEADERS,
        carries,
        partial: Some(partial),
        error_text: Some(status_message),
    };
    let mut out = Vec::new();
    if !batch.samples.is_empty() {
        let body = gzip_body(&metrics_request(batch, agent_tags));
        out.push(part("/v1/metrics", body, Carries::Samples(batch.samples.len() as u64), metrics_partial));
    }
    if !batch.crash_reports.is_empty() {
        let body = gzip_body(&logs_request(batch, agent_tags));
        let n = batch.crash_reports.len() as u64;
        out.push(part("/v1/logs", body, Carries::CrashReports(n), logs_partial as PartialReader));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::protocol::WireSample;

    fn batch() -> Batch {
        let s = |name: &str, tags: &[(&str, &str)], ts, value| WireSample {
            name: name.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ts_ms: ts,
            value,
        };
        Batch {
            agent_id: "a1".into(),
            sink: "otel".into(),
            seq: 3,
            host: "web-1".into(),
            samples: vec![
                s("load_1", &[("dc", "eu")], 2000, 0.5),
                s("fs_disk_util", &[("dc", "eu"), ("mount", "/")], 1000, 40.0),
                s("load_1", &[("dc", "us")], 3000, 0.25),
            ],
            crash_reports: vec![],
        }
    }

    fn attr(kvs: &[KeyValue], key: &str) -> Option<String> {
        kvs.iter().find(|k| k.key == key).and_then(|k| match &k.value.as_ref()?.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
    }

    #[test]
    fn samples_become_gauges_with_units_and_the_agent_on_the_resource() {
        let tags = BTreeMap::from([("dc".to_string(), "eu".to_string())]);
        let req = metrics_request(&batch(), &tags);
        let rm = &req.resource_metrics[0];
        let res = &rm.resource.as_ref().unwrap().attributes;
        assert_eq!(attr(res, "service.name").as_deref(), Some("vigil"));
        assert_eq!(attr(res, "host.name").as_deref(), Some("web-1"));
        assert_eq!(attr(res, "host.id").as_deref(), Some("a1"));
        assert_eq!(attr(res, "dc").as_deref(), Some("eu"));
        let metrics = &rm.scope_metrics[0].metrics;
        let names: Vec<_> = metrics.iter().map(|m| (m.name.as_str(), m.unit.as_str())).collect();
        assert_eq!(names, [("fs_disk_util", "%"), ("load_1", "1")]);
        let Some(metric::Data::Gauge(g)) = &metrics[1].data else { panic!("a gauge") };
        assert_eq!(g.data_points.len(), 2);
        assert_eq!(g.data_points[0].time_unix_nano, 2_000_000_000);
        assert!(g.data_points[0].attributes.is_empty(), "the agent tag is on the resource");
        assert_eq!(
            attr(&g.data_points[1].attributes, "dc").as_deref(),
            Some("us"),
            "a value of its own stays"
        );
        let body = gzip_body(&req);
        let mut pb = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body.as_slice()), &mut pb).unwrap();
        assert_eq!(<ExportMetricsServiceRequest as prost::Message>::decode(pb.as_slice()).unwrap(), req);
    }

    #[test]
    fn crash_reports_become_log_records_with_their_stack() {
        let report = serde_json::json!({
            "id": "1700000000000-1", "version": "0.1.0", "pid": 7, "incarnation": 2,
            "at": "2026-12-01T10:00:00Z", "reason": "signaled", "code": null, "signal": 11,
            "signal_name": "SIGSEGV", "core_dumped": false, "uptime_ms": 10,
            "collector_in_flight": "load", "crash_report": "1700000000000-1",
            "stderr_total_bytes": 0, "stderr_kept_bytes": 0, "signature": "abcd",
            "stack": [{"function": "vigil_actors::collector::fault::segv", "file": "actors/src/collector/fault.rs",
                       "line": 117, "module": "vigil", "address": "0x1"},
                      {"function": null, "file": null, "line": null, "module": "libc.so.6", "address": "0x2"}],
            "thread": "collector", "capture": "ptrace"
        });
        let r = log_record(&report);
        assert_eq!(r.severity_number, SeverityNumber::Fatal as i32);
        assert_eq!(attr(&r.attributes, "vigil.crash.signal_name").as_deref(), Some("SIGSEGV"));
        assert_eq!(attr(&r.attributes, "vigil.crash.reason").as_deref(), Some("signaled"));
        assert_eq!(
            attr(&r.attributes, "exception.stacktrace").as_deref(),
            Some("#0 vigil_actors::collector::fault::segv (actors/src/collector/fault.rs:117) vigil\n#1 ?? (??:??) libc.so.6\n")
        );
        let Some(any_value::Value::StringValue(body)) = r.body.unwrap().value else { panic!() };
        assert!(body.contains("SIGSEGV") && body.contains("load") && body.contains("fault::segv"), "{body}");
        assert_eq!(r.time_unix_nano, 1_796_119_200_000_000_000);
        let exited = log_record(&serde_json::json!({"id": "x", "reason": "exited", "code": 3}));
        assert_eq!(exited.severity_number, SeverityNumber::Error as i32);
        assert!(attr(&exited.attributes, "exception.stacktrace").is_none());
    }

    #[test]
    fn a_batch_is_two_requests_at_most_and_partial_success_is_read() {
        let mut b = batch();
        assert_eq!(parts("http://h:4318/", &b, &BTreeMap::new()).len(), 1);
        b.crash_reports.push(serde_json::json!({"id": "x", "reason": "exited", "code": 1}));
        let p = parts("http://h:4318/", &b, &BTreeMap::new());
        assert_eq!(
            p.iter().map(|p| p.url.as_str()).collect::<Vec<_>>(),
            ["http://h:4318/v1/metrics", "http://h:4318/v1/logs"]
        );
        assert_eq!(p[1].carries, Carries::CrashReports(1));
        b.samples.clear();
        assert_eq!(parts("http://h:4318", &b, &BTreeMap::new()).len(), 1);
        let answer = ExportMetricsServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess {
                    rejected_data_points: 4,
                    error_message: "too old".into(),
                },
            ),
        };
        assert_eq!(metrics_partial(&prost::Message::encode_to_vec(&answer)), Some((4, "too old".into())));
        assert_eq!(metrics_partial(b""), None, "an empty answer is full success");
        assert_eq!(metrics_partial(b"{\"json\": 1}"), None);
        let st = prost::Message::encode_to_vec(&RpcStatus { code: 14, message: "busy".into() });
        assert_eq!(status_message(&st).as_deref(), Some("busy"));
        assert_eq!(status_message(b"Service Unavailable"), None, "text stays text");
    }
}
