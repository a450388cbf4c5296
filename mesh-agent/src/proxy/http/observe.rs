//! Each request's record, finished when its response body ends (or the client goes away):
//! only then are the response size and a gRPC status from the trailers known. It feeds
//! Istio's request metrics and the access log.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{
    HeaderMap, Response, StatusCode, Version,
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderValue},
    http::request::Parts,
};

use super::{access_log, breaker::PendingPermit, client::BoxError, headers};
use crate::metrics::{
    Metrics,
    http::{RequestLabels, RequestRecord},
};

/// What the access log and the metrics say about one request.
pub struct Exchange {
    pub start: SystemTime,
    pub started: Instant,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub authority: String,
    pub user_agent: Option<String>,
    pub forwarded_for: Option<String>,
    pub request_id: String,
    pub trace_id: String,
    pub upstream_host: Option<String>,
    pub upstream_service_time: Option<Duration>,
    pub request_bytes: Arc<AtomicU64>,
    /// The proxy's span, on the client side (the server side passes trace context on).
    pub trace: Option<headers::TraceContext>,
    pub labels: RequestLabels,
    /// Holds the request's place under the service's pending cap until it ends.
    pub permit: Option<PendingPermit>,
}

impl Exchange {
    /// The record of a request as it arrives; `labels` say who is at each end.
    pub fn begin(parts: &Parts, version: Version, mut labels: RequestLabels) -> Exchange {
        let text =
            |name: &str| (parts.headers.get(name).and_then(|v| v.to_str().ok())).map(str::to_owned);
        let authority = text("host").or_else(|| parts.uri.authority().map(|a| a.to_string()));
        let trace_id = text("traceparent").and_then(|t| t.split('-').nth(1).map(str::to_owned));
        let grpc = (parts.headers.get(header::CONTENT_TYPE))
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        labels.request_protocol = if grpc { "grpc" } else { "http" };
        Exchange {
            start: SystemTime::now(),
            started: Instant::now(),
            method: parts.method.to_string(),
            path: (parts.uri.path_and_query()).map_or_else(|| "/".into(), |p| p.to_string()),
            protocol: if version == Version::HTTP_2 {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            },
            authority: authority.unwrap_or_else(|| "-".into()),
            user_agent: text("user-agent"),
            forwarded_for: text("x-forwarded-for"),
            request_id: text("x-request-id").unwrap_or_else(|| "-".into()),
            trace_id: trace_id.unwrap_or_else(|| "-".into()),
            upstream_host: None,
            upstream_service_time: None,
            request_bytes: Arc::new(AtomicU64::new(0)),
            trace: None,
            labels,
            permit: None,
        }
    }
}

/// The upstream's response, passed on with its record.
pub fn respond(
    sink: &Arc<Sink>,
    mut exchange: Exchange,
    response: Response<Incoming>,
    version: Version,
) -> Response<Observed> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = version;
    exchange.labels.response_code = parts.status.as_u16();
    let body = Observed::new(Either::Left(body), exchange, sink.clone(), &parts.headers);
    Response::from_parts(parts, body)
}

/// An answer from the proxy itself, with Envoy's response flag saying why.
pub fn local(
    sink: &Arc<Sink>,
    mut exchange: Exchange,
    status: StatusCode,
    flags: &'static str,
) -> Response<Observed> {
    exchange.labels.response_code = status.as_u16();
    exchange.labels.response_flags = flags;
    let text = format!("{}\n", status.canonical_reason().unwrap_or("error"));
    let mut response = Response::new(());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert("x-sluice-response-flags", HeaderValue::from_static(flags));
    let (parts, ()) = response.into_parts();
    let body = Either::Right(Full::new(Bytes::from(text)));
    let body = Observed::new(body, exchange, sink.clone(), &parts.headers);
    Response::from_parts(parts, body)
}

pub type Inner = Either<Incoming, Full<Bytes>>;

/// A response body that finishes its [`Exchange`] when it ends or is dropped.
pub struct Observed {
    inner: Inner,
    exchange: Option<Box<Exchange>>,
    response_bytes: u64,
    sink: Arc<Sink>,
}

/// Where finished exchanges go.
pub struct Sink {
    pub metrics: Arc<Metrics>,
    pub access_log: std::sync::RwLock<crate::config::AccessLogFormat>,
    pub spans: super::spans::Spans,
}

impl Observed {
    pub fn new(inner: Inner, exchange: Exchange, sink: Arc<Sink>, headers: &HeaderMap) -> Self {
        let mut exchange = Box::new(exchange);
        if let Some(status) = grpc_status(headers) {
            exchange.labels.grpc_response_status = status;
        }
        Self {
            inner,
            exchange: Some(exchange),
            response_bytes: 0,
            sink,
        }
    }

    fn finish(&mut self, client_gone: bool) {
        let Some(mut exchange) = self.exchange.take() else {
            return;
        };
        if client_gone && exchange.labels.response_flags == "-" {
            exchange.labels.response_flags = "DC";
        }
        let record = RequestRecord {
            duration_ms: exchange.started.elapsed().as_secs_f64() * 1000.0,
            request_bytes: exchange.request_bytes.load(Ordering::Relaxed),
            response_bytes: self.response_bytes,
            // Moved, not cloned: the log and the span read the record's.
            labels: std::mem::take(&mut exchange.labels),
        };
        self.sink.metrics.http.request(&record);
        let format = *self
            .sink
            .access_log
            .read()
            .unwrap_or_else(|p| p.into_inner());
        access_log::write(format, &exchange, &record);
        self.sink.spans.record(&exchange, &record);
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.response_bytes += data.len() as u64;
                }
                if let (Some(trailers), Some(exchange)) = (frame.trailers_ref(), &mut this.exchange)
                    && let Some(status) = grpc_status(trailers)
                {
                    exchange.labels.grpc_response_status = status;
                }
            }
            Poll::Ready(None) => this.finish(false),
            Poll::Ready(Some(Err(_))) => this.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let ended = self.inner.is_end_stream();
        self.finish(!ended);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    (headers.get("grpc-status").and_then(|v| v.to_str().ok())).map(str::to_owned)
}

/// A request body that counts the bytes it carries.
pub struct Counted<B> {
    pub inner: B,
    pub count: Arc<AtomicU64>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
