//! The exporter against real loopback collectors: one that decodes what it gets, one that
//! refuses connections, one that answers errors and one that never answers.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, Uri, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tokio::net::TcpListener;

use super::*;
use crate::otlp::AttributeValue;

/// A collector on 127.0.0.1 that answers every request with `status`, keeping the decoded
/// body of each valid `POST /v1/traces`.
struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl Collector {
    async fn start(status: StatusCode) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = received.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let kept = kept.clone();
                let service = service_fn(move |req| handle(req, status, kept.clone()));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service),
                );
            }
        });
        Collector { addr, received }
    }

    fn endpoint(&self) -> Uri {
        format!("http://{}", self.addr).parse().expect("uri")
    }

    fn batch_sizes(&self) -> Vec<usize> {
        let received = self.received.lock().expect("lock");
        (received.iter())
            .map(|r| r.resource_spans[0].scope_spans[0].spans.len())
            .collect()
    }

    /// Waits for `n` requests, up to `within`.
    async fn wait_for_requests(&self, n: usize, within: Duration) -> Vec<usize> {
        let deadline = Instant::now() + within;
        while self.batch_sizes().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.batch_sizes()
    }
}

async fn handle(
    req: Request<Incoming>,
    status: StatusCode,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let well_formed = req.method() == hyper::Method::POST
        && req.uri().path() == "/v1/traces"
        && req.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()) == Some(b"application/x-protobuf");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = body
        .ok()
        .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
    let status = match decoded {
        Some(request) if well_formed => {
            received.lock().expect("lock").push(request);
            status
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let mut response = Response::new(Full::new(Bytes::from(answer)));
    *response.status_mut() = status;
    Ok(response)
}

fn span(i: u64) -> Span {
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&(i + 1).to_be_bytes());
    let start = SystemTime::now();
    Span {
        trace_id,
        span_id: (i + 1).to_be_bytes(),
        parent_span_id: None,
        name: format!("GET /{i}"),
        start,
        end: start + Duration::from_millis(1),
        attributes: vec![("http.response.status_code", AttributeValue::Int(200))],
        error: false,
    }
}

fn start(endpoint: Uri) -> Arc<Exporter> {
    Exporter::start(endpoint, "sluice".into(), "node-a".into()).expect("valid endpoint")
}

#[test]
fn the_traces_path_is_appended_to_the_endpoint() {
    let uri = |s: &str| traces_uri(&s.parse().expect("uri")).map(|u| u.to_string());
    assert_eq!(
        uri("http://collector:4318").ok().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(
        uri("http://10.0.0.1:4318/otlp/").ok().as_deref(),
        Some("http://10.0.0.1:4318/otlp/v1/traces")
    );
    assert_eq!(
        uri("http://collector/v1/traces").ok().as_deref(),
        Some("http://collector/v1/traces")
    );
    assert!(matches!(
        uri("https://collector:4318"),
        Err(EndpointError::NotHttp(_))
    ));
    assert!(matches!(uri("/v1/traces"), Err(EndpointError::NotHttp(_))));
}

#[tokio::test]
async fn spans_go_in_full_batches_and_the_rest_on_shutdown() {
    let collector = Collector::start(StatusCode::OK).await;
    let exporter = start(collector.endpoint());
    for i in 0..1000 {
        exporter.export(span(i));
    }
    exporter.shutdown().await;
    assert_eq!(collector.batch_sizes(), vec![512, 488]);
    assert_eq!(
        (exporter.exported(), exporter.dropped()),
        (1000, 0),
        "exported, dropped"
    );
    let received = collector.received.lock().expect("lock");
    let resource = received[0].resource_spans[0].resource.as_ref();
    assert!(resource.is_some_and(|r| r.attributes.iter().any(|kv| kv.key == "service.name")));
    let first = &received[0].resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(
        (first.name.as_str(), first.span_id.as_slice()),
        ("GET /0", &1u64.to_be_bytes()[..])
    );
}

#[tokio::test]
async fn a_partial_batch_is_sent_after_a_second() {
    let collector = Collector::start(StatusCode::OK).await;
    let exporter = start(collector.endpoint());
    let started = Instant::now();
    for i in 0..3 {
        exporter.export(span(i));
    }
    let sizes = collector.wait_for_requests(1, FLUSH_EVERY * 3).await;
    assert_eq!(sizes, vec![3]);
    let waited = started.elapsed();
    assert!(
        waited >= FLUSH_EVERY - Duration::from_millis(50),
        "{waited:?}"
    );
    assert_eq!(exporter.exported(), 3);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let collector = Collector::start(StatusCode::OK).await;
    let exporter = start(collector.endpoint());
    // The runtime has one thread, so the exporter task cannot drain the queue meanwhile.
    for i in 0..(QUEUE as u64 + 100) {
        exporter.export(span(i));
    }
    assert_eq!(exporter.dropped(), 100);
    exporter.shutdown().await;
    assert_eq!(exporter.exported(), QUEUE as u64);
    assert_eq!(collector.batch_sizes(), vec![MAX_BATCH; QUEUE / MAX_BATCH]);
    exporter.export(span(0));
    assert_eq!(exporter.dropped(), 101, "a span after shutdown is dropped");
}

#[tokio::test]
async fn a_collector_that_is_down_fails_batches_without_retries() {
    let refused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", refused.local_addr().expect("addr"));
    drop(refused);
    let exporter = start(endpoint.parse().expect("uri"));
    for i in 0..600 {
        exporter.export(span(i));
    }
    let started = Instant::now();
    exporter.shutdown().await;
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert_eq!((exporter.exported(), exporter.failed_batches()), (0, 2));
}

#[tokio::test]
async fn an_error_status_fails_the_batch_once() {
    let collector = Collector::start(StatusCode::SERVICE_UNAVAILABLE).await;
    let exporter = start(collector.endpoint());
    for i in 0..10 {
        exporter.export(span(i));
    }
    exporter.shutdown().await;
    assert_eq!(
        collector.batch_sizes(),
        vec![10],
        "posted once, not retried"
    );
    assert_eq!((exporter.exported(), exporter.failed_batches()), (0, 1));
}

#[tokio::test]
async fn shutdown_gives_up_on_a_collector_that_never_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            conns.push(conn);
        }
    });
    let exporter = start(endpoint.parse().expect("uri"));
    exporter.export(span(0));
    let started = Instant::now();
    exporter.shutdown_within(Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(exporter.exported(), 0);
    held.abort();
}
