//! Upstream HTTP connections, pooled per client pod (they leave from its netns, with its
//! address and identity) and per upstream protocol: keep-alive for HTTP/1.1 (hyper-util's
//! pool), one multiplexed connection per endpoint for HTTP/2 ([`Http2Pool`]: hyper-util's
//! pool would send the endpoint's address as `:authority`, where the client's belongs). A
//! connection to an enrolled endpoint is a stream in the mesh tunnel, so requests between
//! pods stay mutual TLS.
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{
    Request, Response, Uri,
    body::Incoming,
    client::conn::http2,
    rt::{Read, ReadBufCursor, Write},
    upgrade::Upgraded,
};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::TcpStream;

use super::super::{ProxyContext, pod::Pod, upstream};
use crate::config::WorkloadKey;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpstreamBody = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<Connector, UpstreamBody>;

/// Idle upstream connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Each pod's two ways upstream.
#[derive(Default)]
pub struct Clients {
    by_pod: Mutex<HashMap<WorkloadKey, PodClients>>,
}

struct PodClients {
    pod: Weak<Pod>,
    http1: Arc<HttpClient>,
    http2: Arc<Http2Pool>,
}

impl Clients {
    pub fn get(&self, pod: &Arc<Pod>, ctx: &Arc<ProxyContext>, http2: bool) -> Upstream {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        let key = pod.workload.key();
        let current =
            (by_pod.get(&key)).filter(|c| c.pod.upgrade().is_some_and(|p| Arc::ptr_eq(&p, pod)));
        let clients = match current {
            Some(c) => c,
            None => {
                let connector = Connector {
                    pod: Arc::downgrade(pod),
                    ctx: Arc::downgrade(ctx),
                };
                let clients = PodClients {
                    pod: Arc::downgrade(pod),
                    http1: Arc::new(build(connector.clone())),
                    http2: Arc::new(Http2Pool {
                        connector,
                        connections: Mutex::default(),
                    }),
                };
                by_pod.insert(key.clone(), clients);
                &by_pod[&key]
            }
        };
        if http2 {
            Upstream::Http2(clients.http2.clone())
        } else {
            Upstream::Http1(clients.http1.clone())
        }
    }

    /// Drops the pools of pods that are gone (their connections close with them).
    pub fn forget_released(&self) {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        by_pod.retain(|_, c| c.pod.strong_count() > 0);
    }
}

/// A pod's pool for one upstream protocol.
pub enum Upstream {
    Http1(Arc<HttpClient>),
    Http2(Arc<Http2Pool>),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the endpoint: {0}")]
    Connect(String),
    #[error("the request failed: {0}")]
    Request(String),
}

impl UpstreamError {
    /// Nothing was sent: the request can go to another endpoint.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

impl Upstream {
    /// Sends `req` to `endpoint`. HTTP/1.1 takes the client's authority from `Host`;
    /// HTTP/2 from the URI (made absolute by the caller), which becomes `:authority`.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match self {
            Upstream::Http1(client) => {
                let path = (req.uri().path_and_query()).map_or("/", |p| p.as_str());
                let uri = format!("http://{endpoint}{path}")
                    .parse()
                    .unwrap_or_default();
                *req.uri_mut() = uri;
                client.request(req).await.map_err(|e| {
                    let message = e.to_string();
                    if e.is_connect() {
                        UpstreamError::Connect(message)
                    } else {
                        UpstreamError::Request(message)
                    }
                })
            }
            Upstream::Http2(pool) => pool.send(endpoint, req).await,
        }
    }
}

/// One HTTP/2 connection per endpoint, shared by every request of the pod to it.
pub struct Http2Pool {
    connector: Connector,
    connections: Mutex<HashMap<SocketAddr, http2::SendRequest<UpstreamBody>>>,
}

impl Http2Pool {
    async fn send(
        &self,
        endpoint: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pooled = {
            let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            connections
                .get(&endpoint)
                .filter(|s| !s.is_closed())
                .cloned()
        };
        let mut sender = match pooled {
            Some(sender) => sender,
            None => self.connect(endpoint).await?,
        };
        let request = |e: hyper::Error| UpstreamError::Request(e.to_string());
        sender.ready().await.map_err(request)?;
        sender.send_request(req).await.map_err(request)
    }

    async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let connect = |e: String| UpstreamError::Connect(e);
        let gone = || connect("the pod or the proxy is gone".into());
        let pod = self.connector.pod.upgrade().ok_or_else(gone)?;
        let ctx = self.connector.ctx.upgrade().ok_or_else(gone)?;
        let io = dial(&pod, &ctx, endpoint)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| connect(e.to_string()))?;
        tokio::spawn(connection);
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.insert(endpoint, sender.clone());
        Ok(sender)
    }
}

fn build(connector: Connector) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        // The client's own Host goes upstream, not the endpoint's address.
        .set_host(false)
        .build(connector)
}

/// Dials the endpoint a request's URI names (`http://<ip>:<port>/...`) for one pod.
#[derive(Clone)]
pub struct Connector {
    pod: Weak<Pod>,
    ctx: Weak<ProxyContext>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (pod, ctx) = (self.pod.clone(), self.ctx.clone());
        Box::pin(async move {
            let addr: SocketAddr = (uri.authority().map(|a| a.as_str()).unwrap_or(""))
                .parse()
                .map_err(|_| io::Error::other(format!("no endpoint address in {uri}")))?;
            let gone = || io::Error::other("the pod or the proxy is gone");
            let (pod, ctx) = (
                pod.upgrade().ok_or_else(gone)?,
                ctx.upgrade().ok_or_else(gone)?,
            );
            dial(&pod, &ctx, addr).await
        })
    }
}

async fn dial(pod: &Pod, ctx: &ProxyContext, addr: SocketAddr) -> io::Result<UpstreamIo> {
    Ok(match upstream::open(pod, ctx, addr).await? {
        upstream::Connection::Tcp(tcp) => UpstreamIo::Tcp(TokioIo::new(tcp)),
        upstream::Connection::Tunnel(stream) => UpstreamIo::Tunnel(stream.io.into_inner()),
    })
}

/// A plain TCP connection or a tunnel stream.
pub enum UpstreamIo {
    Tcp(TokioIo<TcpStream>),
    Tunnel(Upgraded),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Tunnel(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Tunnel(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_flush(cx),
            UpstreamIo::Tunnel(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Tunnel(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
