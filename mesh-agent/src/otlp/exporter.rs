//! The background exporter: a bounded queue in front of one task that batches spans and
//! posts them to the collector. The proxy's request path only ever does a `try_send`.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, StatusCode, Uri,
    header::{CONTENT_TYPE, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{Span, encode};

/// Spans waiting for the exporter task; past this many, new spans are dropped. At ~1 KiB a
/// span this bounds the memory tracing can take when the collector is down.
pub const QUEUE: usize = 4096;
/// Spans per request, the OpenTelemetry SDKs' default batch size.
pub const MAX_BATCH: usize = 512;
/// The longest a span waits in a partial batch, so a quiet proxy's spans still show up.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long [`Exporter::shutdown`] spends flushing before it gives up on the rest.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// One POST, connect included; a batch that takes longer is dropped, never retried, so a
/// black-holed collector costs a bounded wait per batch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A collector that is down fails every batch; one warning per this long is enough.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// Collectors answer with a small `ExportTraceServiceResponse`; it is read (so the
/// connection can be reused) up to this size.
const MAX_RESPONSE: usize = 64 * 1024;

/// Why an endpoint cannot be exported to.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("OTLP endpoint {0}: only http://host:port is supported")]
    NotHttp(Uri),
    #[error("OTLP endpoint {0} has no host")]
    NoHost(Uri),
    #[error("OTLP endpoint {endpoint}: {source}")]
    Invalid {
        endpoint: Uri,
        source: hyper::http::Error,
    },
}

/// Why one batch was not taken.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("building the request: {0}")]
    Build(#[from] hyper::http::Error),
    #[error("{0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("the collector answered {0}")]
    Status(StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where spans go to be exported; shared by every request handler.
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    counters: Arc<Counters>,
    worker: Mutex<Option<Worker>>,
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed_batches: AtomicU64,
}

struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// `{endpoint}/v1/traces`, the OTLP/HTTP path for traces appended to the endpoint's own
/// path (as `OTEL_EXPORTER_OTLP_ENDPOINT` does); an endpoint already ending in it is kept.
pub fn traces_uri(endpoint: &Uri) -> Result<Uri, EndpointError> {
    if endpoint.scheme_str() != Some("http") {
        return Err(EndpointError::NotHttp(endpoint.clone()));
    }
    let Some(authority) = endpoint.authority().filter(|a| !a.host().is_empty()) else {
        return Err(EndpointError::NoHost(endpoint.clone()));
    };
    let base = endpoint.path().trim_end_matches('/');
    let path = match base.ends_with("/v1/traces") {
        true => base.to_owned(),
        false => format!("{base}/v1/traces"),
    };
    (Uri::builder().scheme("http").authority(authority.clone()))
        .path_and_query(path)
        .build()
        .map_err(|source| EndpointError::Invalid {
            endpoint: endpoint.clone(),
            source,
        })
}

impl Exporter {
    /// Starts the exporter task on the current tokio runtime (so call it from within one).
    pub fn start(
        endpoint: Uri,
        service_name: String,
        node: String,
    ) -> Result<Arc<Exporter>, EndpointError> {
        let uri = traces_uri(&endpoint)?;
        let (queue, spans) = mpsc::channel(QUEUE);
        let (stop, stopped) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let batcher = Batcher {
            client: client(),
            uri,
            resource: encode::resource(&service_name, &node),
            counters: counters.clone(),
            last_warning: None,
        };
        let task = tokio::spawn(batcher.run(spans, stopped));
        Ok(Arc::new(Exporter {
            queue,
            counters,
            worker: Mutex::new(Some(Worker { stop, task })),
        }))
    }

    /// Queues a span for export without ever waiting: when the queue is full (the collector
    /// is slower than the traffic) or the exporter is shut down, the span is dropped.
    pub fn export(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans the collector took.
    pub fn exported(&self) -> u64 {
        self.counters.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped before a POST because the queue was full or the exporter shut down.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Batches the collector did not take (no connection, an error status, a timeout):
    /// their spans are lost, as a retry would only pile up behind an unhealthy collector.
    pub fn failed_batches(&self) -> u64 {
        self.counters.failed_batches.load(Ordering::Relaxed)
    }

    /// Exports what is queued, then stops: spans exported afterwards are dropped.
    pub async fn shutdown(&self) {
        self.shutdown_within(SHUTDOWN_TIMEOUT).await;
    }

    /// [`shutdown`](Self::shutdown) that gives up on the remaining spans after `limit`.
    pub async fn shutdown_within(&self, limit: Duration) {
        let worker = (self.worker.lock().unwrap_or_else(|p| p.into_inner())).take();
        let Some(Worker { stop, task }) = worker else {
            return;
        };
        let _ = stop.send(());
        let abort = task.abort_handle();
        if tokio::time::timeout(limit, task).await.is_err() {
            tracing::warn!(?limit, "gave up flushing spans to the OTLP collector");
            abort.abort();
        }
    }
}

/// HTTP/1.1 keeps one pooled connection to the collector; nothing tracing does needs h2.
fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The exporter task's state.
struct Batcher {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    resource: Resource,
    counters: Arc<Counters>,
    last_warning: Option<Instant>,
}

impl Batcher {
    /// Collects spans into batches, posting one when it is full or its first span has
    /// waited [`FLUSH_EVERY`]; flushes the rest when stopped or when the exporter is gone.
    async fn run(mut self, mut spans: mpsc::Receiver<Span>, mut stop: oneshot::Receiver<()>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let deadline = due.unwrap_or_else(tokio::time::Instant::now);
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                biased;
                _ = &mut stop => break,
                received = spans.recv_many(&mut batch, room) => {
                    if received == 0 {
                        break;
                    }
                    due.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_EVERY);
                }
                () = tokio::time::sleep_until(deadline), if due.is_some() => {}
            }
            let late = due.is_some_and(|d| d <= tokio::time::Instant::now());
            if batch.len() >= MAX_BATCH || late {
                self.post_batch(&mut batch).await;
                due = None;
            }
        }
        self.flush(spans, batch).await;
    }

    /// Closes the queue (later spans count as dropped) and posts what is in it.
    async fn flush(&mut self, mut spans: mpsc::Receiver<Span>, mut batch: Vec<Span>) {
        spans.close();
        loop {
            while batch.len() < MAX_BATCH {
                let Ok(span) = spans.try_recv() else { break };
                batch.push(span);
            }
            if batch.is_empty() {
                return;
            }
            self.post_batch(&mut batch).await;
        }
    }

    /// Posts and empties `batch`, counting the outcome.
    async fn post_batch(&mut self, batch: &mut Vec<Span>) {
        let count = batch.len();
        let body = encode::export_request(&self.resource, batch.drain(..)).encode_to_vec();
        let posted = tokio::time::timeout(REQUEST_TIMEOUT, self.post(body)).await;
        match posted.unwrap_or(Err(PostError::Timeout(REQUEST_TIMEOUT))) {
            Ok(()) => {
                self.counters
                    .exported
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.warn(count, &error);
            }
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), PostError> {
        let request = Request::post(self.uri.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            )
            .body(Full::new(Bytes::from(body)))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        // Read to the end so the pooled connection can carry the next batch; what the
        // collector says beyond its status does not change what happens next.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await;
        match status.is_success() {
            true => Ok(()),
            false => Err(PostError::Status(status)),
        }
    }

    fn warn(&mut self, spans: usize, error: &PostError) {
        if self.last_warning.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        self.last_warning = Some(Instant::now());
        let failed_batches = self.counters.failed_batches.load(Ordering::Relaxed);
        tracing::warn!(
            collector = %self.uri, spans, failed_batches, %error,
            "the OTLP collector did not take a batch of spans; dropped it"
        );
    }
}

#[cfg(test)]
mod tests;
