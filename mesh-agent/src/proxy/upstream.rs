//! Dialling the original destination from inside the pod's netns, so the packet leaves with
//! the pod's IP and the pod's routes and network policy still apply. The socket belongs to
//! the agent's cgroup, so the capture programs never see it (no loop).
use std::{io, net::SocketAddr, time::Duration};

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
