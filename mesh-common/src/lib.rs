//! Types shared by the eBPF programs (`mesh-ebpf`, `no_std`) and the agent that loads them.
//!
//! Every type here is `#[repr(C)]` plain data: its layout *is* the map's key or value
//! layout, so both sides must agree bit for bit. Addresses and ports are kept in the byte
//! order the kernel hands them to the programs (noted per field) so the hot path never
//! converts.
#![no_std]

/// Port of the outbound listener the agent opens inside every enrolled pod's netns.
pub const OUTBOUND_LISTENER_PORT: u16 = 15001;
/// Port of the inbound plaintext listener inside every enrolled pod's netns.
pub const INBOUND_LISTENER_PORT: u16 = 15006;
/// Port of the inbound mTLS tunnel inside every enrolled pod's netns.
pub const TUNNEL_PORT: u16 = 15008;
/// `SO_MARK` on every socket the proxy dials, so netfilter rules can tell the proxy's own
/// traffic from the app's.
pub const PROXY_MARK: u32 = 0x539;
/// `SO_MARK` on the proxy's inbound delivery sockets (transparent, with the client's address
/// as source). Inside each pod netns a policy route sends packets with this mark to `lo`, so
/// the app's replies come back to the proxy instead of leaving for the real client; the
/// kernel copies the mark onto the app's accepted socket (`tcp_fwmark_accept`).
pub const DELIVERY_MARK: u32 = 0x111;
/// The routing table of that policy route, in each pod netns.
pub const DELIVERY_ROUTE_TABLE: u32 = 15006;

/// Most excluded ports one pod may carry (the map value is fixed-size).
pub const MAX_EXCLUDED_PORTS: usize = 16;
/// Most excluded CIDRs per address family one pod may carry.
pub const MAX_EXCLUDED_CIDRS: usize = 8;
/// How deep below the attach root the connect programs look for an enrolled ancestor
/// cgroup (Kubernetes puts containers in child cgroups of the pod's cgroup).
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// `AF_INET` / `AF_INET6`, as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A CIDR; `addr` is in network byte order, 32-bit words, IPv4 in `addr[0]`. `mask` is the
/// same shape, so a match is `(ip & mask) == addr` word by word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cidr {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
}

/// Enrollment record of one pod, keyed by the pod cgroup's id in [`maps::ENROLLED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCapture {
    /// The pod's IPv4 outbound listener address, network order (`127.0.1.N`: unique per pod
    /// on the node, so two pods never produce the same loopback 4-tuple).
    pub listener_v4: u32,
    /// The pod's IPv6 outbound listener address (the pod's own IPv6 address, unique on the
    /// node), network order. Only meaningful when `has_v6` is 1.
    pub listener_v6: [u32; 4],
    pub has_v6: u8,
    pub n_excluded_ports: u8,
    pub n_excluded_v4: u8,
    pub n_excluded_v6: u8,
    /// Destination ports that are never captured, host byte order.
    pub excluded_ports: [u16; MAX_EXCLUDED_PORTS],
    pub excluded_v4: [Cidr; MAX_EXCLUDED_CIDRS],
    pub excluded_v6: [Cidr; MAX_EXCLUDED_CIDRS],
}

/// One of an enrolled pod's own IP addresses: the key of its inbound steering. `addr` is in
/// network byte order, IPv4 in `addr[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodIp {
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    pub _pad: u16,
    pub addr: [u32; 4],
}

/// Inbound steering of one pod address, keyed by [`PodIp`] in [`maps::INBOUND_PODS`]. The
/// listener it steers to is the [`maps::INBOUND_LISTENERS`] entry under the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundPod {
    pub n_excluded_ports: u8,
    pub _pad: u8,
    /// Local ports that are never captured inbound, host byte order.
    pub excluded_ports: [u16; MAX_EXCLUDED_PORTS],
}

/// A socket address: the original destination an app dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Network byte order.
    pub port: u16,
    /// Network byte order; IPv4 in `addr[0]`.
    pub addr: [u32; 4],
}

/// A TCP connection seen from the app's side: `src` is the app socket's local address,
/// `dst` the pod's outbound listener. Ports in host byte order, addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnTuple {
    pub family: u16,
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

impl ConnTuple {
    /// `app`/`app_port`: the app socket's local end; `listener`/`listener_port`: the pod
    /// listener it is connected to.
    pub const fn new(
        family: u16,
        app: [u32; 4],
        app_port: u16,
        listener: [u32; 4],
        listener_port: u16,
    ) -> Self {
        Self {
            family,
            src_port: app_port,
            dst_port: listener_port,
            _pad: 0,
            src: app,
            dst: listener,
        }
    }
}

/// Indexes into the per-CPU counter array every program updates.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect4/6 rewrote a connect to the pod's listener.
    Captured = 0,
    /// The calling task's cgroup is not under an enrolled pod cgroup.
    SkipNotEnrolled,
    /// Destination is loopback.
    SkipLoopback,
    /// Destination port is excluded for this pod.
    SkipExcludedPort,
    /// Destination is in an excluded CIDR for this pod.
    SkipExcludedCidr,
    /// Not a TCP socket.
    SkipNotTcp,
    /// IPv6 connect from a pod that has no IPv6 listener.
    SkipNoV6Listener,
    /// The original-destination map was full: the connect was refused rather than let
    /// through uncaptured.
    RejectMapFull,
    /// sock_ops keyed an established captured connection by its 4-tuple.
    TupleRecorded,
    /// sock_ops saw a captured socket established but its cookie entry was gone.
    TupleMissingCookie,
    /// getsockopt(SO_ORIGINAL_DST) answered from the map.
    OrigDstAnswered,
    /// getsockopt(SO_ORIGINAL_DST) found no entry for the socket.
    OrigDstMissed,
    /// getpeername restored the dialled address.
    PeerRestored,
    /// An entry was deleted because the socket it served closed.
    EntryDeleted,
    /// sk_lookup steered a new inbound connection to its pod's inbound listener.
    InboundCaptured,
    /// sk_lookup left a connection to an excluded inbound port alone.
    InboundSkipExcludedPort,
    /// sk_lookup left a connection to one of the proxy's own in-pod ports alone: the tunnel
    /// port, or the outbound listener (IPv6 captures dial it at the pod's own address).
    InboundSkipProxyPort,
    /// sk_lookup let the proxy's own delivery to the app through.
    InboundSkipDelivery,
    /// sk_lookup saw a local address that is not an enrolled pod's IP (loopback, the
    /// outbound listener).
    InboundSkipOtherAddress,
    /// sk_lookup saw a protocol other than TCP.
    InboundSkipNotTcp,
    /// The pod is enrolled but its inbound listener is gone (the agent is down): dropped,
    /// so the client retries instead of reaching the app past the mesh.
    InboundNoListener,
}

impl Counter {
    pub const COUNT: u32 = Counter::InboundNoListener as u32 + 1;
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Captured,
        Counter::SkipNotEnrolled,
        Counter::SkipLoopback,
        Counter::SkipExcludedPort,
        Counter::SkipExcludedCidr,
        Counter::SkipNotTcp,
        Counter::SkipNoV6Listener,
        Counter::RejectMapFull,
        Counter::TupleRecorded,
        Counter::TupleMissingCookie,
        Counter::OrigDstAnswered,
        Counter::OrigDstMissed,
        Counter::PeerRestored,
        Counter::EntryDeleted,
        Counter::InboundCaptured,
        Counter::InboundSkipExcludedPort,
        Counter::InboundSkipProxyPort,
        Counter::InboundSkipDelivery,
        Counter::InboundSkipOtherAddress,
        Counter::InboundSkipNotTcp,
        Counter::InboundNoListener,
    ];

    /// Metric-friendly name (`sluice_ebpf_<name>_total`).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Captured => "captured",
            Counter::SkipNotEnrolled => "skip_not_enrolled",
            Counter::SkipLoopback => "skip_loopback",
            Counter::SkipExcludedPort => "skip_excluded_port",
            Counter::SkipExcludedCidr => "skip_excluded_cidr",
            Counter::SkipNotTcp => "skip_not_tcp",
            Counter::SkipNoV6Listener => "skip_no_v6_listener",
            Counter::RejectMapFull => "reject_map_full",
            Counter::TupleRecorded => "tuple_recorded",
            Counter::TupleMissingCookie => "tuple_missing_cookie",
            Counter::OrigDstAnswered => "orig_dst_answered",
            Counter::OrigDstMissed => "orig_dst_missed",
            Counter::PeerRestored => "peer_restored",
            Counter::EntryDeleted => "entry_deleted",
            Counter::InboundCaptured => "inbound_captured",
            Counter::InboundSkipExcludedPort => "inbound_skip_excluded_port",
            Counter::InboundSkipProxyPort => "inbound_skip_proxy_port",
            Counter::InboundSkipDelivery => "inbound_skip_delivery",
            Counter::InboundSkipOtherAddress => "inbound_skip_other_address",
            Counter::InboundSkipNotTcp => "inbound_skip_not_tcp",
            Counter::InboundNoListener => "inbound_no_listener",
        }
    }
}

/// Names of the maps, as declared in `mesh-ebpf` and pinned by the agent.
pub mod maps {
    /// `HashMap<u64 cgroup id, PodCapture>`.
    pub const ENROLLED: &str = "ENROLLED";
    /// `HashMap<u64 socket cookie, OrigDst>`: the app socket's dialled address.
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    /// `HashMap<ConnTuple, OrigDst>`: the same, found from the agent's accepted socket.
    pub const ORIG_BY_TUPLE: &str = "ORIG_BY_TUPLE";
    /// `HashMap<PodIp, InboundPod>`: each enrolled pod address and its inbound exclusions.
    pub const INBOUND_PODS: &str = "INBOUND_PODS";
    /// `SockHash<PodIp>`: the proxy's inbound listener in the netns of each pod address.
    pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
    /// `HashMap<ConnTuple, u8>`: the proxy's deliveries to apps while they connect (`src` the
    /// client's address the proxy sends from, `dst` the app's), which sk_lookup lets through.
    pub const DELIVERIES: &str = "DELIVERIES";
    /// `PerCpuArray<u64>` indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all of these are repr(C), Copy, and valid for any bit pattern.
    unsafe impl aya::Pod for super::PodCapture {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::ConnTuple {}
    unsafe impl aya::Pod for super::PodIp {}
    unsafe impl aya::Pod for super::InboundPod {}
}
