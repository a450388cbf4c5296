//! L7: HTTP/1.1 and HTTP/2 (gRPC included) between a pod and a service, on hyper. The
//! proxy serves the app's connection itself, routes each request ([`route`]), balances it
//! over the service's endpoints ([`balance`]), and applies the service's limits
//! ([`breaker`], [`ratelimit`]) and the route's timeouts and retries ([`retry`]) in
//! [`forward`]; [`client`] holds the upstream connection pools; [`observe`] turns each
//! finished request into Istio's metrics and an [`access_log`] line.
pub mod access_log;
pub mod backends;
pub mod balance;
pub mod breaker;
pub mod client;
pub mod forward;
pub mod headers;
pub mod inbound;
pub mod observe;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod spans;

use std::sync::{Arc, RwLock};

use hyper::{Version, server::conn, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use self::{backends::Backends, client::Clients, forward::Downstream, observe::Sink};
use super::ProxyContext;
use crate::{config::Config, metrics::Metrics, state::ServiceKey};

/// The node's L7 state: live endpoint state per service and upstream pools per pod.
pub struct Http {
    pub backends: Backends,
    pub clients: Clients,
    pub sink: Arc<Sink>,
}

impl Http {
    pub fn new(metrics: Arc<Metrics>, config: &Config) -> Self {
        let sink = Arc::new(Sink {
            metrics: metrics.clone(),
            access_log: RwLock::new(config.proxy.access_log),
            spans: spans::Spans::default(),
        });
        sink.spans.configure(config.tracing.as_ref(), &config.node);
        metrics.register_collector(Box::new(spans::SpanCounters(sink.clone())));
        Self {
            backends: Backends::default(),
            clients: Clients::default(),
            sink,
        }
    }

    /// Forgets what a new config no longer has, and takes its access log format.
    pub fn updated(&self, config: &Config) {
        let configured = |key: &ServiceKey| {
            (config.services.iter()).any(|s| s.name == key.name && s.namespace == key.namespace)
        };
        self.backends.retain(configured);
        self.clients.forget_released();
        *self
            .sink
            .access_log
            .write()
            .unwrap_or_else(|p| p.into_inner()) = config.proxy.access_log;
    }
}

/// Serves HTTP on the app's connection until it closes. A client that sends what is not
/// HTTP gets 400, a header too large 431 (HTTP/1), and one that trickles its header is cut
/// at the header timeout; each is counted.
pub async fn serve(app: TcpStream, down: Downstream, ctx: Arc<ProxyContext>) {
    let settings = ctx.settings();
    let version = down.version;
    let down = Arc::new(down);
    let handler_ctx = ctx.clone();
    let service = service_fn(move |req| forward::handle(req, down.clone(), handler_ctx.clone()));
    // HTTP/2 writes a response as several frames: Nagle would hold the later ones back
    // until the client acknowledges the first.
    if let Err(error) = app.set_nodelay(true) {
        debug!(%error, "cannot set TCP_NODELAY on the app's connection");
    }
    let io = TokioIo::new(app);
    let served = if version == Version::HTTP_2 {
        conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .serve_connection(io, service)
            .await
    } else {
        conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes)
            .serve_connection(io, service)
            .await
    };
    if let Err(error) = served {
        let reason = if error.is_parse_too_large() {
            Some("header_too_large")
        } else if error.is_parse() || error.is_parse_status() {
            Some("malformed")
        } else if error.is_timeout() {
            Some("header_timeout")
        } else {
            None
        };
        if let Some(reason) = reason {
            ctx.metrics.http.bad_request(reason);
        }
        debug!(%error, ?reason, "client connection ended");
    }
}
