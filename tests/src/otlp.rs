//! An OTLP/HTTP trace receiver for the tracing scenarios: it plays the collector the agent
//! exports to, decoding each `POST /v1/traces` (protobuf) into [`ReceivedSpan`]s the test
//! can assert on.
//!
//! The agent runs inside the test node's netns and exports to `127.0.0.1:<port>` there, so
//! the listening socket is created inside that netns (a socket stays in the namespace it was
//! made in, whichever thread serves it) and served from a background thread with its own
//! single-threaded tokio runtime.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode as Code};
use prost::Message;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Export requests larger than this are refused (413); real batches are far smaller.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// One span as the receiver decoded it, ids as lowercase hex like a `traceparent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span (OTLP's empty `parent_span_id`).
    pub parent_span_id: Option<String>,
    pub name: String,
    /// OTLP's name for it, e.g. `SPAN_KIND_CLIENT`.
    pub kind: String,
    /// Every value as text (integers in decimal, bytes in hex).
    pub attributes: BTreeMap<String, String>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Status code ERROR.
    pub error: bool,
    /// The resource's `service.name` (empty when missing).
    pub service_name: String,
    /// All resource attributes (`k8s.node.name` among them).
    pub resource: BTreeMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// Export requests taken (200), to check batching.
    requests: usize,
    /// Why requests were refused, so a wait that times out can say so.
    refused: Vec<String>,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Received>,
    arrived: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The collector; stops serving (and joins its thread) when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Listens on 127.0.0.1:<free port> inside the netns at `netns`.
    pub fn start_in(netns: &Path) -> Result<OtlpReceiver> {
        let listener = crate::netns::run_in(netns, || {
            TcpListener::bind("127.0.0.1:0").context("binding the OTLP receiver")
        })?;
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> Result<OtlpReceiver> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let handle = move |req| handle(req, state.clone());
                runtime.block_on(crate::serve::until_stopped(
                    "OTLP receiver",
                    listener,
                    handle,
                    stopped,
                ))
            })?;
        Ok(OtlpReceiver {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where to point the agent's collector endpoint: `http://{addr}`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// How many export requests (batches) were taken.
    pub fn requests(&self) -> usize {
        self.shared.lock().requests
    }

    /// Waits until at least `n` spans arrived and returns all of them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        let mut received = self.shared.lock();
        while received.spans.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "OTLP receiver {}: {} of {n} spans within {timeout:?} ({} requests taken, \
                     refused: {:?}); got {:#?}",
                    self.addr,
                    received.spans.len(),
                    received.requests,
                    received.refused,
                    received.spans
                );
            }
            received = (self.shared.arrived.wait_timeout(received, left))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(received.spans.clone())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match take(req).await {
        Ok(spans) => {
            let mut received = shared.lock();
            received.requests += 1;
            received.spans.extend(spans);
            shared.arrived.notify_all();
            let body = ExportTraceServiceResponse::default().encode_to_vec();
            Ok(respond(StatusCode::OK, body))
        }
        Err((status, why)) => {
            shared.lock().refused.push(format!("{status}: {why}"));
            Ok(respond(status, why.into_bytes()))
        }
    }
}

/// The spans of one valid export request, or the status refusing it and why.
async fn take(req: Request<Incoming>) -> Result<Vec<ReceivedSpan>, (StatusCode, String)> {
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        let why = format!("{} {}", req.method(), req.uri());
        return Err((StatusCode::NOT_FOUND, why));
    }
    let content_type = req.headers().get(header::CONTENT_TYPE);
    if content_type.map(|v| v.as_bytes()) != Some(b"application/x-protobuf") {
        let why = format!("content-type {content_type:?}");
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, why));
    }
    let body = (Limited::new(req.into_body(), MAX_BODY).collect().await)
        .map_err(|e| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the body: {e}"),
            )
        })?
        .to_bytes();
    let request = ExportTraceServiceRequest::decode(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("decoding: {e}")))?;
    Ok(decoded(request))
}

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if status == StatusCode::OK {
        let protobuf = header::HeaderValue::from_static("application/x-protobuf");
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, protobuf);
    }
    response
}

fn decoded(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = (resource_spans.resource.as_ref())
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            spans.extend(scope.spans.into_iter().map(|s| received(s, &resource)));
        }
    }
    spans
}

fn received(span: Span, resource: &BTreeMap<String, String>) -> ReceivedSpan {
    let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
    ReceivedSpan {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
        name: span.name,
        kind: kind.as_str_name().to_owned(),
        attributes: attributes(&span.attributes),
        start_unix_nanos: span.start_time_unix_nano,
        end_unix_nanos: span.end_time_unix_nano,
        error: span.status.is_some_and(|s| s.code == Code::Error as i32),
        service_name: resource.get("service.name").cloned().unwrap_or_default(),
        resource: resource.clone(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    let text = |kv: &KeyValue| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    kvs.iter().map(|kv| (kv.key.clone(), text(kv))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        let resource = Resource {
            attributes: vec![kv("service.name", Value::StringValue("sluice".into()))],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Posts over a raw HTTP/1.1 connection and returns the status code.
    fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> u16 {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("write head");
        s.write_all(body).expect("write body");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok());
        status.expect("a status line")
    }

    #[test]
    fn decodes_what_is_posted_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let receiver = OtlpReceiver::serve(listener).expect("serve");
        let span = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: vec![0xcd; 8],
            name: "GET /x".into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: vec![kv("http.response.status_code", Value::IntValue(503))],
            status: Some(Status {
                code: Code::Error as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let body = request(vec![span]).encode_to_vec();
        let protobuf = "application/x-protobuf";
        assert_eq!(post(receiver.addr(), "/v1/traces", protobuf, &body), 200);
        assert_eq!(post(receiver.addr(), "/v1/logs", protobuf, &body), 404);
        assert_eq!(
            post(receiver.addr(), "/v1/traces", "application/json", b"{}"),
            415
        );
        assert_eq!(
            post(receiver.addr(), "/v1/traces", protobuf, b"\xff\xff"),
            400
        );
        let spans = receiver
            .wait_for(1, Duration::from_secs(5))
            .expect("a span");
        let [got] = spans.as_slice() else {
            panic!("one span: {spans:?}")
        };
        assert_eq!(got.trace_id, "ab".repeat(16));
        assert_eq!(got.span_id, "0102030405060708");
        assert_eq!(got.parent_span_id.as_deref(), Some("cdcdcdcdcdcdcdcd"));
        assert_eq!(
            (got.name.as_str(), got.kind.as_str()),
            ("GET /x", "SPAN_KIND_CLIENT")
        );
        assert_eq!(got.attributes["http.response.status_code"], "503");
        assert_eq!(
            (got.start_unix_nanos, got.end_unix_nanos, got.error),
            (10, 20, true)
        );
        assert_eq!(got.service_name, "sluice");
        assert_eq!(receiver.requests(), 1);
        let err = receiver
            .wait_for(2, Duration::from_millis(100))
            .unwrap_err();
        assert!(format!("{err}").contains("1 of 2 spans"), "{err}");
        let addr = receiver.addr();
        drop(receiver);
        assert!(TcpStream::connect(addr).is_err(), "stopped listening");
    }
}
