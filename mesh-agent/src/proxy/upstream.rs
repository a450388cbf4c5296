//! Dialling the destination from inside the pod's netns, so the packet leaves with the pod's
//! IP and the pod's routes and network policy still apply. The socket belongs to the agent's
//! cgroup, so the capture programs never see it (no loop). An enrolled destination is
//! reached through the mesh tunnel instead ([`open`]).
use std::{io, net::SocketAddr, time::Duration};

use super::{
    Mesh, ProxyContext,
    pod::Pod,
    tunnel::client::{Dial, Stream},
};
use crate::config::Workload;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::sys::netns::Netns;
use mesh_common::PROXY_MARK;

pub async fn connect(netns: &Netns, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = netns
        .run(|| -> io::Result<Socket> {
            let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_nonblocking(true)?;
            socket.set_mark(PROXY_MARK)?;
            socket.set_tcp_nodelay(true)?;
            Ok(socket)
        })
        .map_err(io::Error::other)??;
    let socket = TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out after {timeout:?}"),
        )),
    }
}

/// A connection to a destination: plain TCP, or a stream in a mesh tunnel.
pub enum Connection {
    Tcp(TcpStream),
    Tunnel(Stream),
}

/// Dials `dst` for `pod`: through the tunnel when it is an enrolled workload and the mesh
/// has identities, else directly.
pub async fn open(pod: &Pod, ctx: &ProxyContext, dst: SocketAddr) -> io::Result<Connection> {
    let timeout = ctx.settings().connect_timeout;
    let workloads = ctx.workloads();
    match (&ctx.mesh, workloads.by_ip(dst.ip()).filter(|w| w.enrolled)) {
        (Some(mesh), Some(peer)) => (open_tunnel(pod, mesh, peer, dst, timeout).await)
            .map(Connection::Tunnel)
            .map_err(io::Error::other),
        _ => connect(&pod.netns, dst, timeout).await.map(Connection::Tcp),
    }
}

/// A stream to `dst` through a tunnel from `pod` to `peer`'s proxy, pooled or new.
pub(super) async fn open_tunnel(
    pod: &Pod,
    mesh: &Mesh,
    peer: &Workload,
    dst: SocketAddr,
    connect_timeout: Duration,
) -> Result<Stream, String> {
    let w = &pod.workload;
    let source = mesh.identities.id_for(&w.namespace, &w.service_account);
    let destination = (mesh.identities).id_for(&peer.namespace, &peer.service_account);
    let tls = (mesh.identities.client_config(&source, &destination)).map_err(|e| e.to_string())?;
    let dial = Dial {
        netns: &pod.netns,
        source: &source,
        destination: &destination,
        tunnel_addr: SocketAddr::new(dst.ip(), mesh_common::TUNNEL_PORT),
        target: dst,
        client_ip: (w.ips.iter())
            .find(|ip| ip.is_ipv4() == dst.is_ipv4())
            .copied()
            .unwrap_or(dst.ip()),
        tls,
        connect_timeout,
    };
    mesh.pool.open(&dial).await.map_err(|e| e.to_string())
}
