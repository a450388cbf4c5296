//! Upstream HTTP connections, pooled per client pod (they leave from its netns, with its
//! address and identity) and per upstream protocol: keep-alive for HTTP/1.1, one
//! multiplexed connection per endpoint for HTTP/2. A connection to an enrolled endpoint is a
//! stream in the mesh tunnel, so requests between pods stay mutual TLS.
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
    Uri,
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

/// Each pod's two clients (HTTP/1.1 and HTTP/2 upstream).
#[derive(Default)]
pub struct Clients {
    by_pod: Mutex<HashMap<WorkloadKey, PodClients>>,
}

struct PodClients {
    pod: Weak<Pod>,
    http1: HttpClient,
    http2: HttpClient,
}

impl Clients {
    pub fn get(&self, pod: &Arc<Pod>, ctx: &Arc<ProxyContext>, http2: bool) -> HttpClient {
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
                by_pod.insert(
                    key.clone(),
                    PodClients {
                        pod: Arc::downgrade(pod),
                        http1: build(connector.clone(), false),
                        http2: build(connector, true),
                    },
                );
                &by_pod[&key]
            }
        };
        if http2 {
            clients.http2.clone()
        } else {
            clients.http1.clone()
        }
    }

    /// Drops the pools of pods that are gone (their connections close with them).
    pub fn forget_released(&self) {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        by_pod.retain(|_, c| c.pod.strong_count() > 0);
    }
}

fn build(connector: Connector, http2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .http2_only(http2)
        // The client's own Host (or :authority) goes upstream, not the endpoint's address.
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
