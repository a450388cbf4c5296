//! A captured pod as the proxy sees it, and its listeners inside the pod's netns: outbound
//! (`15001`, where the app's connects are steered), inbound (`15006`, where connections
//! to the app are steered) and, with mTLS on, the tunnel (`15008`, where other pods'
//! proxies connect). Accepting on pod P's listener is itself the proof of which pod the
//! connection belongs to: no source IP is trusted.
use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{Instrument as _, info_span, warn};

use super::{ProxyContext, delivery::SteeringExemption, inbound, outbound, tunnel};
use crate::{
    config::Workload,
    sys::netns::{Netns, NetnsError},
};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("listening on {addr} in netns {netns}: {error}")]
    Bind {
        addr: SocketAddr,
        netns: String,
        error: io::Error,
    },
}

/// A captured pod.
pub struct Pod {
    pub workload: Workload,
    pub netns: Netns,
    /// Where the app's outbound connects are steered.
    pub outbound: Vec<SocketAddr>,
    /// Where connections to the app are steered.
    pub inbound: Vec<SocketAddr>,
    /// Where other proxies open tunnels to this pod (empty with mTLS off).
    pub tunnel: Vec<SocketAddr>,
    /// What the steering in front of this pod must be told about the proxy's deliveries.
    pub exemption: Arc<dyn SteeringExemption>,
}

impl Pod {
    /// True when `dst` is one of this pod's proxy ports: relaying there would loop.
    pub fn is_proxy_port(&self, dst: SocketAddr) -> bool {
        self.outbound.contains(&dst)
            || self.inbound.contains(&dst)
            || ([
                mesh_common::OUTBOUND_LISTENER_PORT,
                mesh_common::INBOUND_LISTENER_PORT,
                mesh_common::TUNNEL_PORT,
            ]
            .contains(&dst.port())
                && self.workload.ips.contains(&dst.ip()))
    }
}

/// Where a pod's inbound listeners bind: every address of the netns, so that both sk_lookup
/// (which hands over the socket) and a REDIRECT (to the arriving interface's address) reach
/// them.
pub fn inbound_listeners(ipv6: bool) -> Vec<SocketAddr> {
    any_address(mesh_common::INBOUND_LISTENER_PORT, ipv6)
}

/// Where a pod's tunnel listeners bind: every address of the netns, which holds only the
/// pod's own and loopback, so they follow the pod's IPs without a rebind.
pub fn tunnel_listeners(ipv6: bool) -> Vec<SocketAddr> {
    any_address(mesh_common::TUNNEL_PORT, ipv6)
}

fn any_address(port: u16, ipv6: bool) -> Vec<SocketAddr> {
    let mut addrs = vec![SocketAddr::from(([0, 0, 0, 0], port))];
    if ipv6 {
        addrs.push(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    }
    addrs
}

/// A pod's open listeners. Closing (or dropping) it stops accepting; connections already
/// accepted run on.
pub struct PodListeners {
    tasks: Vec<JoinHandle<()>>,
    /// The inbound listening sockets, for steering that hands connections to the socket
    /// itself (sk_lookup). Each also lives in its accept task.
    inbound: Vec<(SocketAddr, Arc<TcpListener>)>,
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Outbound,
    Inbound,
    Tunnel,
}

impl PodListeners {
    /// Binds every listener inside the pod's netns and starts accepting.
    pub fn open(pod: Arc<Pod>, ctx: Arc<ProxyContext>) -> Result<Self, ListenError> {
        let mut listeners = Vec::new();
        for (addrs, direction) in [
            (&pod.outbound, Direction::Outbound),
            (&pod.inbound, Direction::Inbound),
            (&pod.tunnel, Direction::Tunnel),
        ] {
            for addr in addrs {
                let bind_err = |error| ListenError::Bind {
                    addr: *addr,
                    netns: pod.netns.path().display().to_string(),
                    error,
                };
                let socket = pod.netns.run(|| bind(*addr))?.map_err(bind_err)?;
                let listener = TcpListener::from_std(socket.into()).map_err(bind_err)?;
                listeners.push((*addr, direction, Arc::new(listener)));
            }
        }
        let inbound = listeners
            .iter()
            .filter(|(_, direction, _)| matches!(direction, Direction::Inbound))
            .map(|(addr, _, listener)| (*addr, listener.clone()))
            .collect();
        let tasks = listeners
            .into_iter()
            .map(|(_, direction, listener)| {
                tokio::spawn(accept_loop(listener, direction, pod.clone(), ctx.clone()))
            })
            .collect();
        Ok(Self { tasks, inbound })
    }

    /// The inbound listening sockets with the addresses they are bound to.
    pub fn inbound(&self) -> impl Iterator<Item = (SocketAddr, &TcpListener)> {
        self.inbound.iter().map(|(addr, l)| (*addr, l.as_ref()))
    }

    /// Stops accepting and returns once the listening sockets are closed, so their addresses
    /// can be bound again straight away (a dropped listener closes a little later, when its
    /// task is torn down).
    pub async fn close(mut self) {
        self.inbound.clear();
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            // Cancelled (or, impossibly, finished): either way the socket is gone.
            let _ = task.await;
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        // The pod's IPv6 address may still be in duplicate address detection.
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    direction: Direction,
    pod: Arc<Pod>,
    ctx: Arc<ProxyContext>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (pod, ctx) = (pod.clone(), ctx.clone());
                let key = pod.workload.key();
                match direction {
                    Direction::Outbound => tokio::spawn(
                        outbound::handle(stream, pod, ctx)
                            .instrument(info_span!("outbound", pod = %key, %peer)),
                    ),
                    Direction::Inbound => tokio::spawn(
                        inbound::handle(stream, peer, pod, ctx)
                            .instrument(info_span!("inbound", pod = %key, %peer)),
                    ),
                    Direction::Tunnel => tokio::spawn(
                        tunnel::server::handle(stream, peer, pod, ctx)
                            .instrument(info_span!("tunnel", pod = %key, %peer)),
                    ),
                };
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(pod = %pod.workload.key(), %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
