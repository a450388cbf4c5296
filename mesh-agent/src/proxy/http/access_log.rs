//! The access log: a line per request on stdout (logs go to stderr), with the fields of
//! Envoy's default format, as text or as JSON under Envoy's field names.
use std::io::Write as _;

use super::observe::Exchange;
use crate::{config::AccessLogFormat, metrics::http::RequestRecord};

pub fn write(format: AccessLogFormat, e: &Exchange, r: &RequestRecord) {
    let line = match format {
        AccessLogFormat::Off => return,
        AccessLogFormat::Text => text(e, r),
        AccessLogFormat::Json => json(e, r),
    };
    // A closed stdout must not fail requests; the line is lost, as with a full disk.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

/// `[START] "METHOD PATH PROTOCOL" CODE FLAGS RECEIVED SENT DURATION UPSTREAM_TIME
/// "FORWARDED_FOR" "USER_AGENT" "REQUEST_ID" "AUTHORITY" "UPSTREAM_HOST"`.
fn text(e: &Exchange, r: &RequestRecord) -> String {
    let upstream_ms = e.upstream_service_time.map(|t| t.as_millis().to_string());
    format!(
        "[{}] \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {}",
        humantime::format_rfc3339_millis(e.start),
        e.method,
        e.path,
        e.protocol,
        r.labels.response_code,
        r.labels.response_flags,
        r.request_bytes,
        r.response_bytes,
        duration_ms(r),
        or_dash(upstream_ms.as_deref()),
        or_dash(e.forwarded_for.as_deref()),
        or_dash(e.user_agent.as_deref()),
        e.request_id,
        e.authority,
        or_dash(e.upstream_host.as_deref()),
        r.labels.destination_service,
    )
}

fn json(e: &Exchange, r: &RequestRecord) -> String {
    serde_json::json!({
        "start_time": humantime::format_rfc3339_millis(e.start).to_string(),
        "method": e.method,
        "path": e.path,
        "protocol": e.protocol,
        "response_code": r.labels.response_code,
        "response_flags": r.labels.response_flags,
        "grpc_status": r.labels.grpc_response_status,
        "bytes_received": r.request_bytes,
        "bytes_sent": r.response_bytes,
        "duration": duration_ms(r),
        "upstream_service_time": e.upstream_service_time.map(|t| t.as_millis() as u64),
        "x_forwarded_for": e.forwarded_for,
        "user_agent": e.user_agent,
        "request_id": e.request_id,
        "trace_id": e.trace_id,
        "authority": e.authority,
        "upstream_host": e.upstream_host,
        "upstream_cluster": r.labels.destination_service,
        "source_workload": r.labels.source_workload,
        "destination_workload": r.labels.destination_workload,
    })
    .to_string()
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole, positive ms
fn duration_ms(r: &RequestRecord) -> u64 {
    r.duration_ms as u64
}
