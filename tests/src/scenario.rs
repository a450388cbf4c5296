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
pub fn server_saw(r: &ConnResult) -> SocketAddr {
    let saw = r
        .server_saw
        .as_deref()
        .unwrap_or_else(|| panic!("server did not report a peer: {r:?}"));
    saw.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("bad peer {saw}: {e}"))
}

/// The client IP the server reported; panics if it reported none.
pub fn server_saw_ip(r: &ConnResult) -> IpAddr {
    server_saw(r).ip()
}

/// The port of the client's own socket (`getsockname` after connect).
pub fn client_port(r: &ConnResult) -> u16 {
    let local = r.local.as_deref().unwrap_or_default();
    local
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("bad local address {local:?}: {e}: {r:?}"))
        .port()
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
    let (a, b, server) = two_pods(node);
    let cfg = AgentConfig::new(node)
        .mode(mode)
        .with(Workload::enrolled(&a))
        .with(Workload::known(&b));
    (a, b, server, cfg)
}

/// The inbound shape: `client-a`, a pod outside the mesh (not even known to the agent),
/// and enrolled `server-b` serving on 8080, on a node in `mode`.
pub fn outside_client_and_enrolled_server(
    node: &Node,
    mode: Mode,
) -> (Pod, Pod, Server, AgentConfig) {
    let (a, b, server) = two_pods(node);
    let cfg = AgentConfig::new(node)
        .mode(mode)
        .with(Workload::enrolled(&b));
    (a, b, server, cfg)
}

/// Pods `client-a` and `server-b`, the latter serving on 8080.
fn two_pods(node: &Node) -> (Pod, Pod, Server) {
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let server = b.serve(8080, "server-b").unwrap();
    (a, b, server)
}
