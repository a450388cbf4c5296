//! What the scenario suites share: the common node shape and the "as if direct" assertion.

use crate::agent::{AgentConfig, Workload};
use crate::mode::Mode;
use crate::node::Node;
use crate::pod::Pod;
use crate::proc::Server;
use crate::wire::ConnResult;
use std::net::{IpAddr, SocketAddr};

pub const MIB: u64 = 1024 * 1024;

pub fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// The client address the server reported; panics if it reported none.
pub fn server_saw_ip(r: &ConnResult) -> IpAddr {
    let saw = r
        .server_saw
        .as_deref()
        .unwrap_or_else(|| panic!("server did not report a peer: {r:?}"));
    saw.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("bad peer {saw}: {e}"))
        .ip()
}

/// Asserts one connection worked as if direct: payload intact both ways, `getpeername` is
/// what was dialled, and the server saw the client pod's address.
pub fn assert_transparent(r: &ConnResult, from: IpAddr, to: SocketAddr) {
    assert!(r.is_ok(), "connection {to} failed: {r:?}");
    assert_eq!(
        r.peer.as_deref(),
        Some(to.to_string().as_str()),
        "getpeername: {r:?}"
    );
    assert_eq!(
        server_saw_ip(r),
        from,
        "the server saw another client address: {r:?}"
    );
}

/// The shape most scenarios share: enrolled `client-a`, and `server-b` (known to the agent,
/// not enrolled) serving on 8080, on a node in `mode`.
pub fn client_and_server(node: &Node, mode: Mode) -> (Pod, Pod, Server, AgentConfig) {
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let server = b.serve(8080, "server-b").unwrap();
    let cfg = AgentConfig::new(node)
        .mode(mode)
        .with(Workload::enrolled(&a))
        .with(Workload::known(&b));
    (a, b, server, cfg)
}
