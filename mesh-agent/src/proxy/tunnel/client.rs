//! The tunnel's client side: a pool of tunnels, and a stream per outbound connection.
//!
//! A tunnel is dialled from inside the source pod's netns, so it leaves with the pod's IP
//! and the pod's routes and network policy apply, as for plain TCP. Tunnels are therefore
//! pooled per source pod, and within it per (source identity, destination identity,
//! destination address). The first connections to a key share one handshake: the key's
//! lock is held while its tunnel is set up, and only that key's.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{
    Method, Request, StatusCode, client::conn::http2, header::FORWARDED, upgrade::Upgraded,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::{
    CONNECTION_WINDOW, IDLE_TUNNEL, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_FRAME,
    MAX_STREAMS_PER_TUNNEL, STREAM_WINDOW, forwarded_for,
};
use crate::{
    identity::{HandshakeFailure, SpiffeId},
    metrics::Metrics,
    proxy::upstream,
    sys::netns::Netns,
};

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("connecting to the tunnel port {addr}: {error}")]
    Connect { addr: SocketAddr, error: io::Error },
    #[error("TLS handshake with {addr} ({reason}): {error}")]
    Handshake {
        addr: SocketAddr,
        reason: &'static str,
        error: io::Error,
    },
    #[error("HTTP/2 with {addr}: {error}")]
    Http {
        addr: SocketAddr,
        error: hyper::Error,
    },
    #[error("{addr} did not negotiate ALPN h2")]
    NoH2 { addr: SocketAddr },
    #[error("the tunnel to {addr} closed before the stream opened")]
    Closed { addr: SocketAddr },
    #[error("building the CONNECT request for {target}: {error}")]
    Request {
        target: SocketAddr,
        error: hyper::http::Error,
    },
    #[error("{addr} refused the stream to {target}: {status}")]
    Refused {
        addr: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
}

/// What identifies a tunnel that may be shared.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    source_netns: PathBuf,
    source: String,
    destination: String,
    address: SocketAddr,
}

/// One outbound connection's way through the mesh.
pub struct Dial<'a> {
    pub netns: &'a Netns,
    pub source: &'a SpiffeId,
    pub destination: &'a SpiffeId,
    /// `<destination pod IP>:15008`.
    pub tunnel_addr: SocketAddr,
    /// The original destination, sent as `:authority`.
    pub target: SocketAddr,
    /// The app's address, sent in `forwarded`.
    pub client_ip: IpAddr,
    pub tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
}

struct Tunnel {
    sender: http2::SendRequest<Empty<Bytes>>,
    streams: AtomicUsize,
    /// When the last stream ended; `None` while streams run.
    idle_since: Mutex<Option<Instant>>,
}

impl Tunnel {
    /// Takes a stream slot if the tunnel is open and has one free.
    fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        if self.sender.is_closed() {
            return None;
        }
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS_PER_TUNNEL).then_some(n + 1)
            })
            .ok()?;
        *lock(&self.idle_since) = None;
        Some(Lease(self.clone()))
    }

    fn idle_for(&self, now: Instant) -> Option<Duration> {
        lock(&self.idle_since).map(|since| now.duration_since(since))
    }
}

/// A stream slot in a tunnel, given back when dropped.
struct Lease(Arc<Tunnel>);

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.0.idle_since) = Some(Instant::now());
        }
    }
}

/// A connection carried through a tunnel: read and write it like a socket.
pub struct Stream {
    pub io: TokioIo<Upgraded>,
    _lease: Lease,
}

type Slot = Arc<tokio::sync::Mutex<Vec<Arc<Tunnel>>>>;

pub struct Pool {
    slots: Mutex<HashMap<Key, Slot>>,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// A pool, and its task that closes tunnels idle for [`IDLE_TUNNEL`].
    pub fn start(metrics: Arc<Metrics>) -> Arc<Self> {
        let pool = Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            metrics,
        });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TUNNEL / 10);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.release_idle(IDLE_TUNNEL);
            }
        });
        pool
    }

    /// Opens a stream to `dial.target` through a pooled tunnel, or a new one.
    pub async fn open(&self, dial: &Dial<'_>) -> Result<Stream, TunnelError> {
        let key = Key {
            source_netns: dial.netns.path().to_path_buf(),
            source: dial.source.to_string(),
            destination: dial.destination.to_string(),
            address: dial.tunnel_addr,
        };
        let slot = lock(&self.slots).entry(key).or_default().clone();
        let (lease, pooled) = {
            let mut tunnels = slot.lock().await;
            tunnels.retain(|t| !t.sender.is_closed());
            match tunnels.iter().find_map(Tunnel::try_lease) {
                Some(lease) => (lease, true),
                None => {
                    let tunnel = Arc::new(self.dial(dial).await?);
                    tunnels.push(tunnel.clone());
                    let lease = tunnel.try_lease().ok_or(TunnelError::Closed {
                        addr: dial.tunnel_addr,
                    })?;
                    (lease, false)
                }
            }
        };
        self.metrics.tunnel_stream(pooled);
        let upgraded = self.connect_stream(&lease.0, dial).await?;
        Ok(Stream {
            io: TokioIo::new(upgraded),
            _lease: lease,
        })
    }

    async fn connect_stream(
        &self,
        tunnel: &Tunnel,
        dial: &Dial<'_>,
    ) -> Result<Upgraded, TunnelError> {
        let http = |error| TunnelError::Http {
            addr: dial.tunnel_addr,
            error,
        };
        let mut sender = tunnel.sender.clone();
        sender.ready().await.map_err(http)?;
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(dial.target.to_string())
            .header(FORWARDED, forwarded_for(dial.client_ip))
            .body(Empty::new())
            .map_err(|error| TunnelError::Request {
                target: dial.target,
                error,
            })?;
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                addr: dial.tunnel_addr,
                target: dial.target,
                status: response.status(),
            });
        }
        hyper::upgrade::on(response).await.map_err(http)
    }

    /// TCP from the source pod's netns, TLS with both identities, then HTTP/2. Failures are
    /// counted by reason.
    async fn dial(&self, dial: &Dial<'_>) -> Result<Tunnel, TunnelError> {
        let addr = dial.tunnel_addr;
        let result = async {
            let tcp = upstream::connect(dial.netns, addr, dial.connect_timeout)
                .await
                .map_err(|error| TunnelError::Connect { addr, error })?;
            let connector = TlsConnector::from(dial.tls.clone());
            let handshake = connector.connect(ServerName::IpAddress(addr.ip().into()), tcp);
            let tls = match tokio::time::timeout(dial.connect_timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    let reason = HandshakeFailure::from_io_error(&error).as_str();
                    return Err(TunnelError::Handshake {
                        addr,
                        reason,
                        error,
                    });
                }
                Err(_) => {
                    let error = io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
                    return Err(TunnelError::Handshake {
                        addr,
                        reason: "other",
                        error,
                    });
                }
            };
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(TunnelError::NoH2 { addr });
            }
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|error| TunnelError::Http { addr, error })?;
            Ok((sender, connection))
        }
        .await;
        let (sender, connection) = match result {
            Ok(parts) => parts,
            Err(error) => {
                self.metrics
                    .handshake_failed("client", failure_reason(&error));
                return Err(error);
            }
        };
        self.metrics.tunnels_opened.inc();
        self.metrics.tunnels_active.inc();
        let active = self.metrics.tunnels_active.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%addr, %error, "tunnel ended");
            }
            active.dec();
        });
        Ok(Tunnel {
            sender,
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Some(Instant::now())),
        })
    }

    /// Drops tunnels without streams for `idle` (their connection then closes) and keys
    /// left without tunnels. A key whose setup is under way is skipped.
    fn release_idle(&self, idle: Duration) {
        let now = Instant::now();
        lock(&self.slots).retain(|_, slot| {
            let Ok(mut tunnels) = slot.try_lock() else {
                return true;
            };
            tunnels.retain(|t| !t.sender.is_closed() && t.idle_for(now).is_none_or(|d| d < idle));
            !tunnels.is_empty()
        });
    }
}

fn failure_reason(error: &TunnelError) -> &'static str {
    match error {
        TunnelError::Connect { .. } => "connect",
        TunnelError::Handshake { reason, .. } => reason,
        _ => "other",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
