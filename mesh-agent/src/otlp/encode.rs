//! [`Span`]s into OTLP's `ExportTraceServiceRequest`: one resource (this node's proxy), one
//! instrumentation scope (Sluice), the batch's spans under it.
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{self as proto, ResourceSpans, ScopeSpans, SpanFlags, span::SpanKind, status},
};

use super::{AttributeValue, Span};

/// The W3C `sampled` trace flag: every exported span was sampled.
const SAMPLED: u32 = 0x01;

/// Who emitted the spans: `service.name` is what trace UIs group by; `k8s.node.name` tells
/// which node's proxy it was, as every node runs its own.
pub fn resource(service_name: &str, node: &str) -> Resource {
    Resource {
        attributes: vec![
            key_value("service.name", AttributeValue::Str(service_name.to_owned())),
            key_value("k8s.node.name", AttributeValue::Str(node.to_owned())),
        ],
        ..Default::default()
    }
}

/// The request body for one batch.
pub fn export_request(
    resource: &Resource,
    spans: impl IntoIterator<Item = Span>,
) -> ExportTraceServiceRequest {
    let scope = InstrumentationScope {
        name: "sluice".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans: spans.into_iter().map(span).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn span(span: Span) -> proto::Span {
    let status = span.error.then(|| proto::Status {
        code: status::StatusCode::Error as i32,
        message: String::new(),
    });
    proto::Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: flags(span.parent_span_id.is_some()),
        name: span.name,
        kind: SpanKind::Client as i32,
        start_time_unix_nano: unix_nanos(span.start),
        end_time_unix_nano: unix_nanos(span.end),
        attributes: (span.attributes.into_iter())
            .map(|(key, value)| key_value(key, value))
            .collect(),
        status,
        ..Default::default()
    }
}

/// Trace flags plus whether the parent is remote: a parent always is, since it came in the
/// caller's `traceparent`.
fn flags(has_parent: bool) -> u32 {
    let remote = if has_parent {
        SpanFlags::ContextIsRemoteMask as u32
    } else {
        0
    };
    SAMPLED | SpanFlags::ContextHasIsRemoteMask as u32 | remote
}

/// A clock before 1970 (or past 2554) cannot be encoded; such a time becomes 0, which
/// collectors show as unknown rather than rejecting the batch.
fn unix_nanos(time: SystemTime) -> u64 {
    (time.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

fn key_value(key: &str, value: AttributeValue) -> KeyValue {
    let value = match value {
        AttributeValue::Str(s) => any_value::Value::StringValue(s),
        AttributeValue::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message as _;

    use super::*;

    fn sample_span(parent: Option<[u8; 8]>, error: bool) -> Span {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        Span {
            trace_id: [0x4b; 16],
            span_id: [0x01, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: parent,
            name: "GET /things".to_owned(),
            start,
            end: start + Duration::from_millis(12),
            attributes: vec![
                ("http.request.method", "GET".into()),
                ("http.response.status_code", 503i64.into()),
            ],
            error,
        }
    }

    fn round_trip(spans: Vec<Span>) -> ExportTraceServiceRequest {
        let body = export_request(&resource("sluice", "node-a"), spans).encode_to_vec();
        ExportTraceServiceRequest::decode(body.as_slice()).expect("decodes")
    }

    fn attribute(kvs: &[KeyValue], key: &str) -> Option<any_value::Value> {
        let kv = kvs.iter().find(|kv| kv.key == key)?;
        kv.value.as_ref()?.value.clone()
    }

    #[test]
    fn a_span_round_trips_through_protobuf() {
        let request = round_trip(vec![sample_span(Some([9; 8]), true)]);
        let [rs] = request.resource_spans.as_slice() else {
            panic!("one resource: {request:?}");
        };
        let kvs = &rs.resource.as_ref().expect("resource").attributes;
        let str_value = |s: &str| Some(any_value::Value::StringValue(s.to_owned()));
        assert_eq!(attribute(kvs, "service.name"), str_value("sluice"));
        assert_eq!(attribute(kvs, "k8s.node.name"), str_value("node-a"));
        let [scope] = rs.scope_spans.as_slice() else {
            panic!("one scope");
        };
        let [span] = scope.spans.as_slice() else {
            panic!("one span");
        };
        assert_eq!(span.trace_id, vec![0x4b; 16]);
        assert_eq!(span.span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(span.parent_span_id, vec![9; 8]);
        assert_eq!(span.name, "GET /things");
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(span.end_time_unix_nano, 1_700_000_000_135_456_789);
        assert_eq!(span.flags, 0x301);
        assert_eq!(
            attribute(&span.attributes, "http.request.method"),
            str_value("GET")
        );
        assert_eq!(
            attribute(&span.attributes, "http.response.status_code"),
            Some(any_value::Value::IntValue(503))
        );
        let status = span.status.as_ref().expect("error status");
        assert_eq!(status.code, status::StatusCode::Error as i32);
    }

    #[test]
    fn a_root_span_has_no_parent_and_a_success_no_status() {
        let request = round_trip(vec![sample_span(None, false), sample_span(None, false)]);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert!(spans[0].parent_span_id.is_empty());
        assert_eq!(spans[0].flags, 0x101);
        assert_eq!(spans[0].status, None);
    }

    #[test]
    fn times_before_the_epoch_become_zero() {
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
