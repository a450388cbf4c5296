//! Reading a captured connection's original destination. Both redirect modes answer the
//! same `SO_ORIGINAL_DST` call: netfilter from conntrack, eBPF from its map.
use std::{io, net::SocketAddr};

use socket2::SockRef;
use tokio::net::TcpStream;

pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = if stream.local_addr()?.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP socket address",
        )
    })
}
